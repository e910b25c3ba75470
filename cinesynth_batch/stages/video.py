"""Image to video with Wan2.2-I2V-A14B (``WanImageToVideoPipeline``, two experts).

params: ``prompt``, ``negative_prompt``, ``frames`` (4k+1), ``steps``, ``guidance`` (high-noise
expert), ``guidance_2`` (low-noise expert), ``shift``, ``boundary``, ``scheduler`` (``"unipc"`` or
``"euler"``), ``width``, ``height``, ``fps``, ``seed``, ``loras`` (``[{name, high, low}]``).

``two_pass`` (``{base_width, base_height, high_steps}``, keyed when set): the high-noise expert's
first ``high_steps`` at the base size, the latent upscaled through the VAE, the low-noise expert's
steps at ``width`` x ``height`` (``runtime/two_pass.py``; Euler only).

``quantize`` (``fp8`` / ``fp8_e4m3fn``, keyed). runtime (not keyed): ``attention``, ``compile``,
``block_swap`` (see ``runtime/accel.py``), and ``segment``, ``segments`` for a clip chained from
several segments (this one's place, for progress events).

inputs: ``"image"`` (a still) or ``"prev"`` (the previous segment's mp4: this segment starts from its
last frame), plus optional ``"last_image"`` (first-last-frame clips). Writes one mp4.

Every run sets the expert boundary and a fresh scheduler built from the pipeline's original
scheduler config, so nothing one run chooses leaks into the next.

The stage encodes the prompts itself (``encode_prompts``, the pipeline's own ``encode_prompt``) and
hands the embeddings to the pipeline, so on CUDA the text encoder leaves for pinned host RAM before
denoising starts; when the two experts do not fit the device budget together, the idle one waits
there too (``runtime/placement.py``). The facts' ``placement`` lists the moves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec.params import VideoParams, check
from .base import StageContext, StageError, pipeline_room
from .params import one_path

KIND = "video"
OUTPUT_EXT = ".mp4"
MODEL_ROLE = "video"

_BASE_SCHEDULER_ATTR = "_cinesynth_base_scheduler_config"


def may_fall_back(params: dict[str, Any]) -> bool:
    from .effective import lossy_speed

    return lossy_speed(params)


def effective_params(params: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """The keyed params with ``quantize`` / a lossy ``attention`` as this machine runs them."""
    from ..runtime.accel import keyed_speed

    return keyed_speed(params, device, dtype)


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``); returns the values the run uses."""
    p = check(VideoParams, params, KIND)
    return {
        "prompt": p.prompt,
        "negative_prompt": p.negative_prompt or None,
        "frames": p.frames,
        "steps": p.steps,
        "guidance": p.guidance,
        "guidance_2": p.guidance if p.guidance_2 is None else p.guidance_2,
        "shift": p.shift,
        "boundary": p.boundary,
        "scheduler": p.scheduler,
        "cache": p.cache.model_dump() if p.cache is not None else None,
        "width": p.width,
        "height": p.height,
        "fps": p.fps,
        "seed": p.seed,
        "loras": params.get("loras") or [],
        "two_pass": p.two_pass.model_dump() if p.two_pass is not None else None,
        "lora_fuse": p.lora_fuse or "auto",
        **p.speed(),
    }


def segment_of(params: dict[str, Any]) -> tuple[int, int] | None:
    """(segment, segments) of a chained clip (runtime ``segment``/``segments``), else None."""
    segment, segments = params.get("segment"), params.get("segments")
    if not isinstance(segment, int) or not isinstance(segments, int) or not 1 <= segment <= segments:
        return None
    return segment, segments


def step_in_segment(where: tuple[int, int] | None, step: int, steps: int) -> dict[str, int]:
    """The progress keywords for ``step`` of ``steps`` in segment ``where`` (none when unchained)."""
    if where is None:
        return {}
    return {"segment": where[0], "segments": where[1], "segment_step": step, "segment_steps": steps}


def fit_image(image, width: int, height: int):
    """Scale ``image`` to cover ``width``x``height`` and center-crop it to exactly that size (RGB)."""
    from PIL import Image, ImageOps

    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def _open_still(path: Path, key: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise StageError(f"video: input {key!r} is not a readable image: {path} ({exc})") from exc


def start_images(inputs: dict[str, Any], width: int, height: int):
    """The (first, last-or-None) conditioning images, fitted to ``width``x``height``."""
    from PIL import Image

    from ..media.video_io import last_frame

    image_path = one_path("video", inputs, "image")
    prev_path = one_path("video", inputs, "prev")
    if image_path is not None and prev_path is not None:
        raise StageError("video: give either input 'image' or input 'prev', not both")
    if image_path is None and prev_path is None:
        raise StageError(
            "video: no start image",
            hint="give input 'image' (a still) or 'prev' (the previous segment, continued from its last frame)",
        )
    if image_path is not None:
        first = _open_still(image_path, "image")
    else:
        try:
            first = Image.fromarray(last_frame(prev_path))
        except Exception as exc:
            raise StageError(f"video: cannot read the last frame of input 'prev': {prev_path} ({exc})") from exc
    last_path = one_path("video", inputs, "last_image")
    last = _open_still(last_path, "last_image") if last_path is not None else None
    return fit_image(first, width, height), (fit_image(last, width, height) if last is not None else None)


def make_scheduler(pipe: Any, kind: str, shift: float):
    """A fresh scheduler of ``kind`` from the pipeline's original scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    base = getattr(pipe, _BASE_SCHEDULER_ATTR, None)
    if base is None:
        base = dict(pipe.scheduler.config)
        setattr(pipe, _BASE_SCHEDULER_ATTR, base)
    if kind == "unipc":
        return UniPCMultistepScheduler.from_config(
            base, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
        )
    return FlowMatchEulerDiscreteScheduler.from_config(base, shift=shift, use_dynamic_shifting=False)


def encode_prompts(pipe: Any, prompt: str, negative_prompt: str | None, guidance: float):
    """(prompt_embeds, negative_prompt_embeds) exactly as ``WanImageToVideoPipeline.__call__``
    computes them for these arguments (its defaults: one video per prompt, 512 tokens; the negative
    embeddings only with classifier-free guidance)."""
    return pipe.encode_prompt(prompt=prompt, negative_prompt=negative_prompt,
                              do_classifier_free_guidance=guidance > 1, num_videos_per_prompt=1,
                              max_sequence_length=512, device=pipe._execution_device)


def plan_for(pipe: Any, ctx: StageContext, steps: int, boundary: float, scheduler: Any):
    """Where the text encoder and the experts sit during this run (``runtime/placement.py``)."""
    from ..runtime.memory import offloaded
    from ..runtime.placement import (TEXT_ENCODER, component_places, component_sizes, plan_placement,
                                     step_experts)

    if not str(ctx.device).startswith("cuda"):
        return plan_placement(cuda=False, sizes={}, where={}, available=None)
    scheduler.set_timesteps(steps)
    boundary_t = boundary * pipe.scheduler.config.num_train_timesteps
    sizes = component_sizes(pipe)
    available = pipeline_room(pipe, ctx)
    encoder = getattr(pipe, TEXT_ENCODER, None)
    return plan_placement(cuda=True, sizes=sizes, where=component_places(pipe), available=available,
                          steps=step_experts(scheduler.timesteps, boundary_t),
                          encoder_offloaded=encoder is not None and offloaded(encoder) is not None,
                          experts_streamed=any(offloaded(getattr(pipe, name)) is not None
                                               for name in ("transformer", "transformer_2")))


def lora_pipeline(ctx: StageContext, p: dict[str, Any], requests: list) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The prepared pipeline with the run's LoRAs active, fused into the experts' weights when the
    run can take them so (``runtime/lora_fuse.py``); a pipeline holding other fused LoRAs is
    swapped for a fresh copy first. Returns (pipeline, speed report, LoRA facts)."""
    from ..runtime.accel import prepared_pipeline
    from ..runtime.lora import HIGH, LOW, apply_loras, wanted_adapters
    from ..runtime.lora_fuse import can_fuse, fuse, fused_loras, needs_fresh
    from ..runtime.placement import component_sizes, least_device_bytes

    def prepared():
        return prepared_pipeline(ctx, MODEL_ROLE, p, need=lambda pipe: least_device_bytes(component_sizes(pipe)))

    pipe, speed = prepared()
    if getattr(pipe, "transformer", None) is None or getattr(pipe, "transformer_2", None) is None:
        raise StageError("video: the video model must be a Wan2.2 A14B pipeline with transformer and transformer_2")
    wanted = wanted_adapters(requests)
    fusing, why = can_fuse(p["lora_fuse"], ctx.device, speed)
    fusing = fusing and bool(wanted)
    fresh = needs_fresh(pipe, wanted, fusing)
    if fresh:
        ctx.models.reload(MODEL_ROLE)
        pipe, speed = prepared()
    if not (fusing and fused_loras(pipe) == wanted):
        active = apply_loras(pipe, requests)
        if fusing:
            fuse(pipe, active, tuple(c for c in (HIGH, LOW) if any(r.weights.get(c) for r in requests)))
    return pipe, speed, {"fused": fusing, "why": why if wanted else "no LoRA", "fresh_model": fresh}


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..media.video_io import write_video
    from ..runtime.pixels import video_frames
    from ..runtime.lora import video_lora_requests

    p = check_params(params)
    first, last = start_images(inputs, p["width"], p["height"])
    requests = video_lora_requests(p["loras"], ctx.resolve_lora)

    from .effective import checked_speed

    from ..runtime.placement import MoveLog, carry_out

    pipe, speed, loras = lora_pipeline(ctx, p, requests)
    fell = checked_speed(KIND, p, speed, ctx.device, ctx.dtype)
    pipe.register_to_config(boundary_ratio=p["boundary"])
    pipe.scheduler = make_scheduler(pipe, p["scheduler"], p["shift"])

    total = p["steps"]
    where = segment_of(params)
    two_pass = p["two_pass"]
    boundary = p["boundary"]
    if two_pass is not None:
        from ..runtime.two_pass import schedule, split_boundary

        boundary = split_boundary(schedule(pipe.scheduler, total)[0], two_pass["high_steps"],
                                  pipe.scheduler.config.num_train_timesteps)
    plan = plan_for(pipe, ctx, p["steps"], boundary, make_scheduler(pipe, p["scheduler"], p["shift"]))
    moves = MoveLog()

    def after_step(i: int) -> None:
        carry_out(pipe, plan.at(i), ctx.device, moves)
        ctx.progress(i, total, **step_in_segment(where, i, total))

    def on_step_end(_pipe, i, _t, _kwargs):
        after_step(i + 1)
        return {}

    handle = None
    if p["cache"] and p["cache"].get("kind") == "teacache":
        from ..runtime.teacache import TeaCacheConfig, apply_teacache_to_pipeline

        config = TeaCacheConfig(rel_l1_thresh=p["cache"]["threshold"], start_step=p["cache"]["start_step"],
                                model="wan2.2-i2v-a14b")
        handle = apply_teacache_to_pipeline(pipe, config, num_inference_steps=p["steps"])
    ctx.progress(0, total, **step_in_segment(where, 0, total))
    try:
        with torch.no_grad():
            carry_out(pipe, plan.at("encode"), ctx.device, moves)
            prompt_embeds, negative_embeds = encode_prompts(pipe, p["prompt"], p["negative_prompt"], p["guidance"])
            carry_out(pipe, plan.at("encoded"), ctx.device, moves)
            carry_out(pipe, plan.at(0), ctx.device, moves)
            if two_pass is not None:
                frames = _two_pass(pipe, p, first, last, prompt_embeds, negative_embeds, after_step)
            else:
                frames = pipe(
                    image=first,
                    last_image=last,
                    prompt_embeds=prompt_embeds,
                    negative_prompt_embeds=negative_embeds,
                    height=p["height"],
                    width=p["width"],
                    num_frames=p["frames"],
                    num_inference_steps=p["steps"],
                    guidance_scale=p["guidance"],
                    guidance_scale_2=p["guidance_2"],
                    generator=torch.Generator("cpu").manual_seed(p["seed"]),
                    output_type="pt",
                    callback_on_step_end=on_step_end,
                ).frames
        stats = handle.stats() if handle is not None else None
    finally:
        if handle is not None:
            handle.remove()
    frames = video_frames(frames)
    if frames.shape[0] != p["frames"]:
        raise StageError(f"video: the pipeline returned {frames.shape[0]} frames, expected {p['frames']}")
    write_video(frames, out, fps=p["fps"])
    meta = {"frames": int(frames.shape[0]), "width": int(frames.shape[2]), "height": int(frames.shape[1]),
            "fps": p["fps"], "speed": speed, "placement": moves.facts(plan)}
    if requests:
        meta["loras"] = loras
    if two_pass is not None:
        meta["two_pass"] = {"base": [two_pass["base_width"], two_pass["base_height"]],
                            "high_steps": two_pass["high_steps"]}
    if fell:
        meta["fell_back"] = fell
    if stats is not None:
        meta["cache"] = stats
    return meta


def _two_pass(pipe: Any, p: dict[str, Any], first, last, prompt_embeds, negative_embeds, after_step):
    """The clip through ``runtime/two_pass.py``: high-noise steps at the base size, low-noise
    steps at the full size."""
    import torch

    from ..runtime.two_pass import TwoPassPlan, run_two_pass

    tp = p["two_pass"]
    plan = TwoPassPlan(steps=p["steps"], high_steps=tp["high_steps"], base=(tp["base_width"], tp["base_height"]),
                       full=(p["width"], p["height"]))

    def images(width: int, height: int):
        return fit_image(first, width, height), (fit_image(last, width, height) if last is not None else None)

    call = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds,
            "guidance_scale": p["guidance"], "guidance_scale_2": p["guidance_2"]}
    with torch.no_grad():
        return run_two_pass(pipe, plan, images, frames=p["frames"], seed=p["seed"], call=call, on_step=after_step)
