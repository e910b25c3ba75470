"""AMT frame interpolation (``network.py``), its parts (``blocks.py``, ``corr.py``), its weights
(``weights.py``: safetensors, the converter of the official checkpoints) and how it runs on frames
(``runner.py``)."""
