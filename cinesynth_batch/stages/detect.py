"""Boxes for a phrase: the first half of ``image.mask: {segment: ...}`` (``preprocess/segment.py``).

params: ``text``, ``threshold``. inputs: ``{"image": Path}``. Writes JSON:
``{"width", "height", "caption", "threshold", "boxes": [[x0, y0, x1, y1], ...], "scores": [...]}``,
boxes in pixels of the picture, best score first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..spec.params import DetectParams, check
from .base import StageContext, StageError

KIND = "detect"
OUTPUT_EXT = ".json"
MODEL_ROLE = "detect"


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    return check(DetectParams, params, KIND).model_dump()


def read_picture(path: Any, label: str):
    """An input picture as RGB, or a ``StageError`` naming the stage."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(Path(path)) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise StageError(f"{label}: cannot read image {Path(path).name}: {exc}") from exc


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    from ..preprocess.segment import caption

    p = check_params(params)
    if inputs.get("image") is None:
        raise StageError("detect: no 'image' input")
    picture = read_picture(inputs["image"], KIND)
    ctx.progress(0, 1)
    boxes, scores = ctx.models.get(MODEL_ROLE).detect(picture, p["text"], p["threshold"])
    ctx.progress(1, 1)
    found = {"width": picture.width, "height": picture.height, "caption": caption(p["text"]),
             "threshold": p["threshold"], "boxes": [[round(v, 3) for v in b] for b in boxes],
             "scores": [round(s, 5) for s in scores]}
    out.write_text(json.dumps(found, sort_keys=True) + "\n", encoding="utf-8")
    return {"boxes": len(boxes), "best": found["scores"][0] if scores else None}
