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


def open_still(stage: str, path: Path, label: str):
    """The image at ``path`` as PIL RGB, turned upright by its EXIF orientation (as the seed's
    OpenCV and ComfyUI readers do); a ``StageError`` naming ``label`` when it is not a readable
    image or is bigger than PIL's decompression-bomb bound."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise StageError(f"{stage}: {label} is not a readable image: {path.name} ({exc})",
                         hint="give a PNG, JPEG or WebP image") from exc
