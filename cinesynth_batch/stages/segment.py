"""The mask of ``image.mask: {segment: ...}``: SAM draws one mask per box of the ``detect`` stage
and their union is written as a grayscale PNG (255 inside), the size of the picture
(``preprocess/segment.py``). No box gives an all-black mask.

params: none. inputs: ``{"image": Path, "boxes": Path}`` (the detector's JSON).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..spec.params import SegmentParams, check
from .base import StageContext, StageError
from .detect import read_picture

KIND = "segment"
OUTPUT_EXT = ".png"
MODEL_ROLE = "segment"
MAX_BOXES_BYTES = 4 << 20


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    return check(SegmentParams, params, KIND).model_dump()


def read_boxes(path: Path, width: int, height: int) -> list[list[float]]:
    """The detector's boxes, checked: each four finite numbers, for a picture of this size."""
    try:
        if path.stat().st_size > MAX_BOXES_BYTES:
            raise StageError(f"segment: the boxes file is over {MAX_BOXES_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError(f"segment: cannot read the boxes: {exc}") from exc
    boxes = data.get("boxes") if isinstance(data, dict) else None
    if not isinstance(boxes, list) or (data.get("width"), data.get("height")) != (width, height):
        raise StageError(f"segment: the boxes are not the detector's boxes for a {width}x{height} picture")
    for box in boxes:
        if not (isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise StageError(f"segment: {box!r} is not a box [x0, y0, x1, y1]")
    return boxes


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    check_params(params)
    if inputs.get("image") is None or inputs.get("boxes") is None:
        raise StageError("segment: needs the 'image' and 'boxes' inputs")
    picture = read_picture(inputs["image"], KIND)
    boxes = read_boxes(Path(inputs["boxes"]), picture.width, picture.height)
    ctx.progress(0, 1)
    mask = ctx.models.get(MODEL_ROLE).mask(picture, boxes) if boxes else \
        np.zeros((picture.height, picture.width), dtype=bool)
    ctx.progress(1, 1)
    Image.fromarray((mask.astype(np.uint8) * 255)).save(out, format="PNG")
    return {"boxes": len(boxes), "coverage": round(float(mask.mean()), 4), "width": picture.width,
            "height": picture.height}
