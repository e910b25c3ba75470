"""A still cropped to an aspect and resized to an exact size (``preprocess/stills.py``): the
seed's avatar rule, 9:16 at 1080x1920 for ``avatar_prepare``.

params (``FitParams``): ``width``, ``height``, ``tolerance`` (0.02). inputs: ``image``. Writes a
PNG of exactly ``width`` x ``height``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec.params import FitParams, check
from .base import StageContext
from .params import one_path, open_still

KIND = "fit"
OUTPUT_EXT = ".png"
MODEL_ROLE = None


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    return check(FitParams, params, KIND).model_dump()


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    from ..preprocess.stills import fit_box, fit_still

    p = check_params(params)
    image = open_still(KIND, one_path(KIND, inputs, "image", required=True), "input 'image'")
    box = fit_box(image.width, image.height, p["width"], p["height"], p["tolerance"])
    fitted = fit_still(image, p["width"], p["height"], p["tolerance"])
    fitted.save(out, format="PNG")
    return {"width": fitted.width, "height": fitted.height, "source": [image.width, image.height],
            "kept": list(box)}
