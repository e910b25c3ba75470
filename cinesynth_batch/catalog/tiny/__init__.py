"""Tiny random-weight models in the production formats: ``build.py`` writes the tiny profile's
folders; ``animate.py``, ``demucs.py``, ``s2v.py``, ``rrdbnet.py`` build one model family each;
``parts.py`` holds the pieces they share."""
