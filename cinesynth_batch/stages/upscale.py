"""Upscale one image with the profile's RRDBNet (Real-ESRGAN) model and write a PNG.

params: ``scale`` (must equal the model's), ``tile`` (input tile size, 0 = whole image),
``tile_pad`` (context pixels around each tile). inputs: ``{"image": Path}``.
An alpha channel, if any, is resized with bicubic filtering and kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cinesynth_batch.spec.params import UpscaleParams, check
from cinesynth_batch.stages.base import StageContext, StageError

KIND = "upscale"
OUTPUT_EXT = ".png"
MODEL_ROLE = "upscale"


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``; unset ones at their defaults); returns the values
    the run uses."""
    return check(UpscaleParams, params, KIND).model_dump()


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    p = check_params(params)
    scale, tile, tile_pad = p["scale"], p["tile"], p["tile_pad"]

    src = inputs.get("image")
    if src is None:
        raise StageError("upscale: no 'image' input", hint="give the node an image input")
    src = Path(src)

    upscaler = ctx.models.get(MODEL_ROLE)
    model_scale = int(getattr(upscaler, "scale"))
    if scale != model_scale:
        raise StageError(
            f"upscale: scale {scale} was asked for but the upscale model is x{model_scale}",
            hint=f"set scale: {model_scale} or give the profile an x{scale} model",
        )

    try:
        with Image.open(src) as im:
            im.load()
            alpha = None
            if "A" in im.getbands() or "transparency" in im.info:
                alpha = im.convert("RGBA").getchannel("A")
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise StageError(f"upscale: cannot read image {src}: {exc}") from exc

    h, w = rgb.shape[:2]
    result = upscaler.upscale(rgb, tile=tile, tile_pad=tile_pad, progress=ctx.progress)
    expected = (h * scale, w * scale, 3)
    if result.shape != expected:
        raise StageError(f"upscale: model returned {result.shape}, expected {expected}")

    img = Image.fromarray(result)
    if alpha is not None:
        img.putalpha(alpha.resize((w * scale, h * scale), Image.Resampling.BICUBIC))
    img.save(out, format="PNG")
    return {"width": w * scale, "height": h * scale}
