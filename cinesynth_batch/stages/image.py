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

from ..spec.params import ImageParams, check
from .base import StageContext, StageError

KIND = "image"
OUTPUT_EXT = ".png"
MODEL_ROLE = "image"


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``); returns the values the run uses."""
    p = check(ImageParams, params, KIND)
    return {
        "prompt": p.prompt,
        "negative_prompt": p.negative_prompt or None,
        "steps": p.steps,
        "guidance": p.guidance,
        "width": p.width,
        "height": p.height,
        "seed": p.seed,
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
