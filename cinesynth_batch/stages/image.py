"""Text to image with FLUX.2-klein (``Flux2KleinPipeline``).

params: ``prompt``, ``negative_prompt`` (str or None), ``steps``, ``guidance``, ``width``, ``height``,
``seed`` (>= 0), ``loras`` (``[{name, weight}]``). inputs: none. Writes one PNG.

Flux2-klein's ``__call__`` takes no ``negative_prompt``: with classifier-free guidance on
(``guidance > 1`` on a non-distilled model) the negative prompt is encoded into
``negative_prompt_embeds``; without guidance it has no effect and is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import StageContext, StageError
from .params import float_param, int_param

KIND = "image"
OUTPUT_EXT = ".png"
MODEL_ROLE = "image"




def check_params(params: dict[str, Any], multiple: int = 16) -> dict[str, Any]:
    """Validate ``params``; returns the values the run uses."""
    prompt = params.get("prompt")
    if not isinstance(prompt, str):
        raise StageError(f"image: prompt must be a string, got {prompt!r}")
    negative = params.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise StageError(f"image: negative_prompt must be a string or null, got {negative!r}")
    width = int_param("image", params, "width", multiple)
    height = int_param("image", params, "height", multiple)
    if width % multiple or height % multiple:
        raise StageError(
            f"image: width and height must be multiples of {multiple}, got {width}x{height}",
            hint=f"try {width // multiple * multiple or multiple}x{height // multiple * multiple or multiple}",
        )
    return {
        "prompt": prompt,
        "negative_prompt": negative or None,
        "steps": int_param("image", params, "steps", 1),
        "guidance": float_param("image", params, "guidance"),
        "width": width,
        "height": height,
        "seed": int_param("image", params, "seed", 0),
        "loras": params.get("loras") or [],
    }


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..runtime.lora import apply_loras, image_lora_requests

    p = check_params(params)
    requests = image_lora_requests(p["loras"], ctx.resolve_lora)

    pipe = ctx.models.get(MODEL_ROLE)
    multiple = int(getattr(pipe, "vae_scale_factor", 8)) * 2
    if p["width"] % multiple or p["height"] % multiple:
        raise StageError(f"image: width and height must be multiples of {multiple} for this model, got {p['width']}x{p['height']}")
    apply_loras(pipe, requests)

    cfg = p["guidance"] > 1.0 and not getattr(pipe.config, "is_distilled", False)
    negative_embeds = None
    with torch.no_grad():
        if cfg and p["negative_prompt"]:
            negative_embeds, _ = pipe.encode_prompt(prompt=p["negative_prompt"], device=pipe._execution_device)

        total = p["steps"]

        def on_step_end(_pipe, i, _t, _kwargs):
            ctx.progress(i + 1, total)
            return {}

        ctx.progress(0, total)
        result = pipe(
            prompt=p["prompt"],
            width=p["width"],
            height=p["height"],
            num_inference_steps=p["steps"],
            guidance_scale=p["guidance"],
            negative_prompt_embeds=negative_embeds,
            generator=torch.Generator("cpu").manual_seed(p["seed"]),
            output_type="pil",
            callback_on_step_end=on_step_end,
        )
    image = result.images[0].convert("RGB")
    image.save(out, format="PNG")
    return {"width": image.width, "height": image.height}
