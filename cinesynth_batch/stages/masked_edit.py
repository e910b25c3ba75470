"""The masked edit of the ``image`` stage (``image.mask``): the context around the mask is cropped
to ``inpaint.size`` (``media/inpaint_crop.py``), repainted inside the mask by diffusers'
``Flux2KleinInpaintPipeline`` built from the loaded FLUX.2-klein pipeline (``from_pipe``: the same
modules, LoRAs included), and pasted back through the blurred mask, so the picture keeps its size
and every pixel outside the blend region keeps its value.

The inpaint pipeline does what the seed's graph does with ``VAEEncode`` + ``SetLatentNoiseMask``:
the crop is encoded and, at every step, the latents outside the (binarised, latent-size) mask are
reset to the crop's, noised to that step; ``strength`` 1.0 starts from pure noise inside it. The
crop is also the first reference image (the seed's "image 1"); the stage's one reference, when it
has one (Fashion Change's clothing picture), is the next (``image_reference``): scaled first to
``inpaint.reference_megapixels`` as the seed's ``ImageScaleToTotalPixels`` does (nearest-exact,
aspect kept, sides rounded), then cropped to multiples of 16 by the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .base import StageError


def read_source_and_mask(inputs: dict[str, Any]):
    """The picture (uint8 RGB) and its mask (float, 1 repaints) of a masked edit, checked."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    pictures = []
    for name, mode in (("source", "RGB"), ("mask", "L")):
        if inputs.get(name) is None:
            raise StageError(f"image: a masked edit needs the '{name}' input")
        try:
            with Image.open(Path(inputs[name])) as im:
                pictures.append(np.asarray(im.convert(mode)))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise StageError(f"image: cannot read the {name} {Path(inputs[name]).name}: {exc}") from exc
    source, mask = pictures
    if mask.shape != source.shape[:2]:
        raise StageError(f"image: the mask is {mask.shape[1]}x{mask.shape[0]}, its picture "
                         f"{source.shape[1]}x{source.shape[0]}", hint="give a mask the size of the source")
    if not mask.any():
        raise StageError("image: the mask is empty, there is nothing to repaint",
                         hint="for mask.segment: lower threshold or change text (scenes/<scene>.boxes.json "
                              "lists what the detector found)")
    return source, mask.astype(np.float32) / 255.0


def scale_to_megapixels(image: Any, megapixels: float) -> Any:
    """``image`` (PIL) resized to about ``megapixels`` x 1024 x 1024 pixels, aspect kept, by
    nearest-exact sampling: ComfyUI's ``ImageScaleToTotalPixels`` (``resolution_steps`` 1)."""
    import math

    import numpy as np
    import torch
    from PIL import Image

    w, h = image.size
    scale = math.sqrt(megapixels * 1024 * 1024 / (w * h))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float()
    scaled = torch.nn.functional.interpolate(pixels, size=size, mode="nearest-exact")
    return Image.fromarray(scaled[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())


def run(pipe: Any, p: dict[str, Any], inputs: dict[str, Any], references: list[Any], prompt_embeds: Any,
        negative_embeds: Any, generator: Any, on_step_end: Callable) -> tuple[Any, dict[str, Any]]:
    """The edited picture (PIL, the source's size) and the facts of the edit. ``references``: the
    stage's reference pictures (PIL, at most one)."""
    import numpy as np
    from diffusers import Flux2KleinInpaintPipeline
    from PIL import Image

    from ..media.inpaint_crop import CropSettings, blend_region, crop, stitch

    source, mask = read_source_and_mask(inputs)
    settings = {k: v for k, v in p["inpaint"].items() if k not in ("strength", "reference_megapixels")}
    cut = crop(source, mask, CropSettings(**settings))
    editor = Flux2KleinInpaintPipeline.from_pipe(pipe)
    editor.set_progress_bar_config(disable=True)
    if len(references) > 1:
        raise StageError(f"image: a masked edit takes one reference picture besides its source, not "
                         f"{len(references)}")
    reference = scale_to_megapixels(references[0], p["inpaint"]["reference_megapixels"]) if references else None
    result = editor(
        image=Image.fromarray(cut.image),
        mask_image=Image.fromarray(np.rint(cut.mask * 255.0).astype(np.uint8)),
        image_reference=reference,
        strength=p["inpaint"]["strength"],
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        num_inference_steps=p["steps"],
        guidance_scale=p["guidance"],
        generator=generator,
        output_type="np",
        callback_on_step_end=on_step_end,
    )
    painted = np.clip(np.rint(result.images[0] * 255.0), 0, 255).astype(np.uint8)
    edited = stitch(cut, painted)
    ctx_box = cut.context
    left, top = cut.origin
    facts = {"crop": [ctx_box.x - left, ctx_box.y - top, ctx_box.w, ctx_box.h], "crop_size": cut.image.shape[0],
             "blended": round(float((blend_region(cut) > 0).mean()), 4)}
    if reference is not None:
        facts["reference_scaled_to"] = [reference.width, reference.height]
    return Image.fromarray(edited), facts
