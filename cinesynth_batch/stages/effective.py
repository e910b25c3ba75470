"""What a stage will actually run with on this machine, for its key.

A stage whose output-changing settings can fall back (``quantize``, a lossy ``attention``) exposes
``effective_params(params, device, dtype) -> params``: its keyed params with those settings as the
very code that takes the fallback decides them here. The executor keys a run on the result, so a
CPU render of a ``quantize: fp8`` stage is stored under the key of what it computed, never under
the fp8 key a GPU render looks up. Stages without such settings key on their params unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any


def effective_params(kind: str, params: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """``params`` as this machine will run them (the same dict when nothing can fall back)."""
    module = importlib.import_module(f"cinesynth_batch.stages.{kind}")
    resolve = getattr(module, "effective_params", None)
    if resolve is None:
        return params
    return resolve(params, concrete_device(device), dtype)


def concrete_device(device: str) -> str:
    """``auto`` as the executor will pick it; any other name unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

