"""The inputs a stage is given: files only the running stage can check. (Its params are checked
by its kind's model in ``spec/params.py``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import StageError


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
