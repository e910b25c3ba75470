"""Checks a stage makes of its own params and inputs, with messages that name the stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import StageError


def int_param(stage: str, params: dict, key: str, minimum: int) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StageError(f"{stage}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def float_param(stage: str, params: dict, key: str, lo: float | None = None, hi: float | None = None,
                default: Any = ...) -> float:
    value = params.get(key, default)
    if value is ...:
        raise StageError(f"{stage}: {key} is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise StageError(f"{stage}: {key} must be a number, got {value!r}")
    value = float(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None and lo is not None else (
            f">= {lo}" if lo is not None else f"<= {hi}")
        raise StageError(f"{stage}: {key} must be {bound}, got {value!r}")
    return value


def one_path(stage: str, inputs: dict[str, Any], key: str, required: bool = False) -> Path | None:
    """The single file given as input ``key`` (a one-item list is accepted)."""
    value = inputs.get(key)
    if value is None:
        if required:
            raise StageError(f"{stage}: input {key!r} is missing")
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise StageError(f"{stage}: input {key!r} must be one file, got {len(value)}")
        value = value[0]
    path = Path(value)
    if not path.is_file():
        raise StageError(f"{stage}: input {key!r} not found: {path}")
    return path


def speed_params(params: dict[str, Any]) -> dict[str, Any]:
    """The speed options a stage passes on to ``runtime/accel.py`` (absent ones at their defaults)."""
    return {"attention": params.get("attention") or "auto", "compile": params.get("compile") or "auto",
            "quantize": params.get("quantize"), "block_swap": params.get("block_swap") or 0}
