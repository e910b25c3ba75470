"""What a stage will actually run with on this machine, for its key.

A stage whose output-changing settings can fall back (``quantize``, a lossy ``attention``) exposes
``may_fall_back(params) -> bool`` (cheap, imports nothing heavy) and
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
    if resolve is None or not module.may_fall_back(params):
        return params          # nothing to decide: no torch import (plan and status stay light)
    return resolve(params, concrete_device(device), dtype)


def lossy_speed(params: dict[str, Any]) -> bool:
    """Whether a Wan stage asks for an output-changing speed setting (one that can fall back)."""
    from ..runtime.attention import LOSSY

    return bool(params.get("quantize")) or params.get("attention") in LOSSY


def concrete_device(device: str) -> str:
    """``auto`` as the executor will pick it; any other name unchanged."""
    if device != "auto":
        return device
    from ..runtime.devices import auto_device

    return auto_device()


def checked_speed(stage: str, params: dict[str, Any], speed: dict[str, Any], device: str,
                  dtype: Any) -> dict[str, Any]:
    """Refuse a Wan run whose output-changing settings differ from what its key names (``speed``:
    ``runtime/accel.prepared_pipeline``'s report); returns the settings that fell back, as
    ``{name: {"asked": ..., "ran": ...}}`` (empty when none did), for the manifest."""
    from ..runtime.accel import check_keyed, keyed_speed, lossy_used

    keyed = keyed_speed(params, concrete_device(device), dtype)
    check_keyed(stage, keyed, speed)
    asked, kept = lossy_used(params), lossy_used(keyed)
    ran = speed.get("transformer") or {}
    return {name: {"asked": value, "ran": ran.get(name)} for name, value in asked.items()
            if kept.get(name) != value}
