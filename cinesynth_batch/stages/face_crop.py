"""The head of a photo (the seed's ``crop_face_head``, ``preprocess/face_crop.py``), for a
head-swap edit's face reference.

params (``FaceCropParams``): ``detector`` (the detector's identity), ``confidence`` (0.4),
``max_face_area`` (0.15), ``padding`` (2.5), ``above`` (1.0), ``below`` (1.5). inputs: ``image``.
Writes a PNG: the crop, or the whole image (upright, RGB) when no face is found or the face
already fills more than ``max_face_area`` of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec.params import FaceCropParams, check
from .base import StageContext
from .params import one_path, open_still

KIND = "face_crop"
OUTPUT_EXT = ".png"
MODEL_ROLE = None


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    return check(FaceCropParams, params, KIND).model_dump()


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    import numpy as np

    from ..preprocess.face_crop import FaceFinder, Rule, crop_box

    p = check_params(params)
    rule = Rule(p["confidence"], p["max_face_area"], p["padding"], p["above"], p["below"])
    image = open_still(KIND, one_path(KIND, inputs, "image", required=True), "input 'image'")
    ctx.progress(0, 1)
    with FaceFinder(rule.confidence) as finder:
        face = finder.find(np.asarray(image))
    box = crop_box(image.width, image.height, face, rule)
    result = image.crop(box) if box is not None else image
    result.save(out, format="PNG")
    ctx.progress(1, 1)
    facts: dict[str, Any] = {"width": result.width, "height": result.height, "cropped": box is not None,
                             "face": None}
    if face is not None:
        facts["face"] = {"box": [face.x, face.y, face.width, face.height], "score": round(face.score, 4),
                         "found_by": face.strategy,
                         "area": round(face.width * face.height / (image.width * image.height), 6)}
    if box is not None:
        facts["box"] = list(box)
    return facts
