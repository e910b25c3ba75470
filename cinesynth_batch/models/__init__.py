"""Architectures the project owns: the Wan2.2-S2V transformer and pipeline (``s2v/``), Real-ESRGAN's
RRDBNet (``rrdbnet.py``) and HTDemucs loading (``separation.py``). Which model serves a role lives in
``catalog/``; how a loaded model runs (kernels, fp8, offload, caching, LoRA) in ``runtime/``."""
