"""Architectures the project owns: the Wan2.2-S2V transformer and pipeline (``s2v/``), Real-ESRGAN's
RRDBNet (``rrdbnet.py``), HTDemucs loading (``separation.py``) and the frame interpolators RIFE
(``rife.py``) and AMT (``amt/``). Which model serves a role lives in
``catalog/``; how a loaded model runs (kernels, fp8, offload, caching, LoRA) in ``runtime/``."""
