"""Text to image, or a multi-reference edit, with FLUX.2-klein (``Flux2KleinPipeline``).

params: ``prompt``, ``negative_prompt`` (str or None), ``steps``, ``guidance``, ``width``, ``height``
(None for an edit that takes the first reference's size), ``seed`` (>= 0), ``loras``
(``[{name, weight}]``), ``model`` (``distilled``: role ``image``; ``base``: role ``image_base``),
``inpaint`` (None, or a masked edit's crop settings). inputs: ``references`` (optional, a list of
images in order: ``image=[...]`` of the pipeline, image 1 first); a masked edit also has ``source``
and ``mask`` (``stages/masked_edit.py``). Writes one PNG.

An edit's references are given to the pipeline as they are (one under its 64 pixels a side is
enlarged to that first); it scales each to at most 1024x1024 pixels (aspect kept) and crops it
to multiples of 16, and without ``width``/``height`` the output takes the first reference's
scaled size (the seed's graphs size the latent by the scaled body
image the same way). A masked edit's crop is its image 1 and its one reference, scaled to
``inpaint.reference_megapixels``, image 2. The facts list each reference's digest and size in the
order the pipeline received them.

Flux2-klein's ``__call__`` takes no ``negative_prompt``: with classifier-free guidance on
(``guidance > 1`` on a non-distilled model) the negative prompt is encoded into
``negative_prompt_embeds`` (the empty prompt when there is none, as the pipeline does); without
guidance it has no effect and is ignored.

The stage encodes the prompts itself (the pipeline's own ``encode_prompt``) and hands the
embeddings to the pipeline, so on CUDA the text encoder is on the device only while it encodes and
then waits in pinned host RAM; when the transformer and the text encoder do not fit the device
budget together, the transformer waits there while the prompts are encoded
(``runtime/placement.py``). The facts' ``placement`` lists the moves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec.params import IMAGE_ROLES, ImageParams, check
from .base import StageContext, StageError, pipeline_room
from .params import open_still

KIND = "image"
OUTPUT_EXT = ".png"
MODEL_ROLE = "image"
#: What ``Flux2KleinPipeline`` accepts as a reference (``Flux2ImageProcessor.check_image_input``):
#: at least 64 pixels a side, at most 8:1.
REFERENCE_MIN_SIDE = 64
REFERENCE_MAX_ASPECT = 8


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
        "model": p.model,
        "inpaint": p.inpaint.model_dump() if p.inpaint is not None else None,
    }


def reference_images(inputs: dict[str, Any], enlarge: bool = True) -> tuple[list[Any], list[dict[str, Any]]]:
    """The ``references`` input as PIL images in order, and their facts (digest, size). A
    reference under the pipeline's 64 pixels a side is enlarged to it (Lanczos, aspect kept: the
    seed's graphs scale every reference up to about 1 MP) unless ``enlarge`` is off (a masked edit
    scales its reference itself); one longer than 8:1 is refused."""
    import hashlib

    from PIL import Image

    value = inputs.get("references") or []
    paths = [Path(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    images, facts = [], []
    for n, path in enumerate(paths, start=1):
        image = open_still(KIND, path, f"reference {n}")
        w, h = image.size
        if max(w, h) > REFERENCE_MAX_ASPECT * min(w, h):
            raise StageError(f"image: reference {n} is {w}x{h}, longer than {REFERENCE_MAX_ASPECT}:1",
                             hint="crop it closer to the subject")
        fact = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": [w, h]}
        if enlarge and min(w, h) < REFERENCE_MIN_SIDE:
            scale = REFERENCE_MIN_SIDE / min(w, h)
            size = (max(REFERENCE_MIN_SIDE, round(w * scale)), max(REFERENCE_MIN_SIDE, round(h * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
            fact["enlarged_to"] = [image.width, image.height]
        images.append(image)
        facts.append(fact)
    return images, facts


def encode_prompts(pipe: Any, prompt: str, negative_prompt: str | None, cfg: bool):
    """(prompt_embeds, negative_prompt_embeds or None) as ``Flux2KleinPipeline.__call__`` computes
    them: the negative one only with classifier-free guidance, from the empty prompt by default."""
    device = pipe._execution_device
    embeds, _ = pipe.encode_prompt(prompt=prompt, device=device)
    negative = pipe.encode_prompt(prompt=negative_prompt or "", device=device)[0] if cfg else None
    return embeds, negative


def plan_for(pipe: Any, ctx: StageContext):
    """Where the text encoder and the transformer sit during this run (``runtime/placement.py``)."""
    from ..runtime.placement import ONE_TRANSFORMER, component_places, component_sizes, plan_placement

    if not str(ctx.device).startswith("cuda"):
        return plan_placement(cuda=False, sizes={}, where={}, available=None)
    return plan_placement(cuda=True, sizes=component_sizes(pipe), where=component_places(pipe),
                          available=pipeline_room(pipe, ctx), experts=ONE_TRANSFORMER)


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..runtime.lora import apply_loras, image_lora_requests
    from ..runtime.placement import MoveLog, carry_out

    p = check_params(params)
    requests = image_lora_requests(p["loras"], ctx.resolve_lora)

    pipe = ctx.models.get(IMAGE_ROLES[p["model"]])
    multiple = int(getattr(pipe, "vae_scale_factor", 8)) * 2
    masked = p["inpaint"] is not None
    references, reference_facts = reference_images(inputs, enlarge=not masked)
    if p["width"] is None and not references:
        raise StageError("image: width and height are needed without references", hint="set width and height")
    if p["width"] is not None and (p["width"] % multiple or p["height"] % multiple):
        raise StageError(f"image: width and height must be multiples of {multiple} for this model, got {p['width']}x{p['height']}")
    apply_loras(pipe, requests)

    cfg = p["guidance"] > 1.0 and not getattr(pipe.config, "is_distilled", False)
    plan = plan_for(pipe, ctx)
    moves = MoveLog()
    total = p["steps"]

    def on_step_end(_pipe, i, _t, _kwargs):
        ctx.progress(i + 1, total)
        return {}

    ctx.progress(0, total)
    with torch.no_grad():
        carry_out(pipe, plan.at("encode"), ctx.device, moves)
        prompt_embeds, negative_embeds = encode_prompts(pipe, p["prompt"], p["negative_prompt"], cfg)
        carry_out(pipe, plan.at("encoded"), ctx.device, moves)
        carry_out(pipe, plan.at(0), ctx.device, moves)
        generator = torch.Generator("cpu").manual_seed(p["seed"])
        if masked:
            from . import masked_edit

            image, edit = masked_edit.run(pipe, p, inputs, references, prompt_embeds, negative_embeds, generator,
                                          on_step_end)
        else:
            result = pipe(
                prompt_embeds=prompt_embeds,
                width=p["width"],
                height=p["height"],
                num_inference_steps=p["steps"],
                guidance_scale=p["guidance"],
                negative_prompt_embeds=negative_embeds,
                generator=generator,
                output_type="pil",
                callback_on_step_end=on_step_end,
                **({"image": references} if references else {}),
            )
            image, edit = result.images[0], {}
    image = image.convert("RGB")
    image.save(out, format="PNG")
    facts = {"width": image.width, "height": image.height, "placement": moves.facts(plan), **edit}
    if references:
        facts["references"] = reference_facts
    return facts
