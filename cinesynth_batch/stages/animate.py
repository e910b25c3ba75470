"""Change Character: Wan2.2-Animate (``WanAnimatePipeline``) puts a character into a motion video.

params: ``mode``, ``prompt``, ``negative_prompt``, ``width``, ``height``, ``fps``, ``steps``,
``guidance`` (CFG; 1.0 = no CFG, the official advice), ``shift``, ``scheduler``, ``seed``,
``frame_window`` (frames per window), ``prev_frames`` (frames of the previous window that condition
the next), ``loras`` (``[{name, weight}]``), ``precision``, ``quantize``, ``attention``,
``rms_norm``, ``block_swap``, ``cache`` (null or TeaCache settings). Their rules and defaults are
``AnimateParams`` in ``spec/params.py``.

inputs: ``character`` (an image), ``pose`` and ``face`` (videos from the preprocessing stages, with
the same frame count, which is the output's frame count); for ``mode: replace`` also
``background`` and ``mask`` (videos, same frame count; white in the mask = where the character
goes); optional ``reference`` (the original reference video, used only for its audio).

The stage encodes the prompts itself (the pipeline's own ``encode_prompt``, as ``stages/video.py``
does) and hands the embeddings to the pipeline, so on CUDA the text encoder (UMT5-XXL, 11 GB in
bf16) waits in pinned host RAM while the transformer denoises and the VAE decodes; the moves are in
the result's ``placement``.

The pipeline runs in windows of ``frame_window`` frames; each window after the first is
conditioned on the last ``prev_frames`` generated frames of the previous one (the pipeline's
``segment_frame_length`` / ``prev_segment_conditioning_frames``), and the output is cut to exactly
the pose video's frame count. The reference's first audio stream is muxed in (copied when it is
AAC, else encoded to AAC), cut to the video's length; a reference without audio gives a video-only
file and the result says so. Runtime settings that this machine cannot honour fall back with one
warning each (see ``runtime/animate.py``); the result's ``runtime`` records what was used.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..spec.params import AnimateParams, check
from .base import StageContext, StageError
from .params import one_path

KIND = "animate"
OUTPUT_EXT = ".mp4"
MODEL_ROLE = "animate"


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``; a missing or null value takes its default, but a
    null ``negative_prompt``, ``quantize`` or ``cache`` means none); returns the values the run
    uses."""
    given = {k: v for k, v in params.items() if v is not None or k in ("negative_prompt", "quantize", "cache")}
    p = check(AnimateParams, given, KIND)
    cache = p.cache.model_dump() if p.cache is not None and p.cache.kind == "teacache" else None
    return {
        "mode": p.mode,
        "prompt": p.prompt,
        "negative_prompt": p.negative_prompt or None,
        "width": p.width,
        "height": p.height,
        "fps": p.fps,
        "steps": p.steps,
        "guidance": p.guidance,
        "shift": p.shift,
        "scheduler": p.scheduler,
        "seed": p.seed,
        "frame_window": p.frame_window,
        "prev_frames": p.prev_frames,
        "loras": params.get("loras") or [],
        "precision": p.precision,
        "quantize": p.quantize,
        "attention": p.attention,
        "rms_norm": p.rms_norm,
        "block_swap": p.block_swap,
        "lora_fuse": p.lora_fuse or "auto",
        "cache": cache,
    }


def window_count(frames: int, window: int, prev: int) -> int:
    """How many windows ``WanAnimatePipeline`` runs for ``frames`` frames (its own arithmetic)."""
    step = window - prev
    rest = (frames - prev) % step
    target = frames + (step - rest if rest else 0)
    return target // step


# --------------------------------------------------------------------------- inputs



def _open_character(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise StageError(f"animate: input 'character' is not a readable image: {path} ({exc})",
                         hint="give one frontal photo as PNG or JPEG") from exc


def _read_video(path: Path, key: str):
    from ..media.video_io import read_frames

    try:
        return read_frames(path)
    except Exception as exc:
        raise StageError(f"animate: input {key!r} is not a readable video: {path} ({exc})") from exc


def read_inputs(inputs: dict[str, Any], mode: str) -> dict[str, Any]:
    """The character image and the conditioning videos (lists of PIL images, equal lengths)."""
    from PIL import Image

    character = _open_character(one_path("animate", inputs, "character", required=True))
    keys = ("pose", "face") + (("background", "mask") if mode == "replace" else ())
    if mode == "replace":
        missing = [k for k in ("background", "mask") if inputs.get(k) is None]
        if missing:
            raise StageError(f"animate: mode 'replace' needs input(s) {', '.join(map(repr, missing))}",
                             hint="the replace preprocessing makes the background and mask videos; "
                             "or use mode 'animate'")
    videos = {k: _read_video(one_path("animate", inputs, k, required=True), k) for k in keys}
    counts = {k: int(v.shape[0]) for k, v in videos.items()}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{k} {n}" for k, n in counts.items())
        raise StageError(f"animate: the conditioning videos must have the same frame count, got {detail}",
                         hint="make them with the same preprocessing run (same fps and max_frames)")
    return {
        "character": character,
        "frames": counts["pose"],
        **{k: [Image.fromarray(f) for f in v] for k, v in videos.items()},
    }


# --------------------------------------------------------------------------- audio


def _audio_codec(path: Path) -> str | None:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            return container.streams.audio[0].codec_context.name
    except Exception as exc:
        raise StageError(f"animate: input 'reference' cannot be read: {path} ({exc})") from exc


def mux_reference_audio(video: Path, reference: Path | None, out: Path, duration: float) -> dict[str, Any]:
    """``out`` = ``video`` + the reference's first audio stream, cut to ``duration`` seconds."""
    from ..media.ffmpeg import FFmpegError, ffmpeg_path_arg, run_ffmpeg

    codec = _audio_codec(reference) if reference is not None else None
    if codec is None:
        shutil.copyfile(video, out)
        why = "no reference video was given" if reference is None else "the reference video has no audio stream"
        return {"audio": None, "audio_note": f"{why}: the output is video only"}
    copy = codec == "aac"
    audio_args = ["-c:a", "copy"] if copy else ["-c:a", "aac", "-b:a", "192k", "-ar", "48000"]
    try:
        run_ffmpeg(["-y", "-i", ffmpeg_path_arg(video), "-i", ffmpeg_path_arg(reference),
                    "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", *audio_args,
                    "-t", f"{duration:.6f}", "-fflags", "+bitexact", "-flags:a", "+bitexact",
                    "-map_metadata", "-1", "-movflags", "+faststart", "-threads", "1", ffmpeg_path_arg(out)],
                   what=f"muxing the reference audio into {out.name}")
    except FFmpegError as exc:
        raise StageError(f"animate: cannot mux the audio of {reference.name} ({codec}): {exc}",
                         hint="re-encode the reference video's audio (e.g. to AAC) and run again") from exc
    return {"audio": {"source": "reference", "codec": "aac", "reference_codec": codec,
                      "mode": "copied" if copy else "encoded"}}


# --------------------------------------------------------------------------- run


def may_fall_back(params: dict[str, Any]) -> bool:
    """Whether ``quantize`` or ``attention`` asks for more than the plain bf16 SDPA run."""
    return params.get("quantize") is not None or params.get("attention", "sdpa") != "sdpa"


def effective_params(params: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """The keyed params with ``quantize`` and ``attention`` as ``resolve_runtime`` decides them on
    this machine (the key names what runs)."""
    from ..runtime.animate_settings import RuntimeSettings, resolve_runtime

    try:
        requested = RuntimeSettings(precision=params.get("precision", "bf16"), quantize=params.get("quantize"),
                                    attention=params.get("attention", "sdpa"))
    except StageError:
        return params          # run() refuses these params with its own message
    resolved, _ = resolve_runtime(requested, device, warn=False)
    return {**params, "quantize": resolved.quantize, "attention": resolved.attention}


def checked_runtime(p: dict[str, Any], runtime: dict[str, Any], device: str) -> dict[str, Any]:
    """Refuse a run whose quantization or attention differs from what its key names; returns the
    settings that fell back (``{name: {asked, ran}}``)."""
    keyed = effective_params(p, device, None)
    ran = {"quantize": runtime.get("quantization"), "attention": runtime.get("attention")}
    for name, value in ran.items():
        if keyed.get(name) != value:
            raise StageError(f"animate: the transformer ran with {name}={value!r} but the key names "
                             f"{keyed.get(name)!r}; the output is not stored",
                             hint="the model runs in another dtype or on another device than the render was keyed for: "
                             "pass --dtype/--device matching the model, or drop the setting from the spec")
    return {name: {"asked": p.get(name), "ran": value} for name, value in ran.items() if p.get(name) != value}


def encoder_plan(pipe: Any, ctx: StageContext, device: str):
    """Where the text encoder sits during this run on ``device`` (``runtime/placement.py``): on
    CUDA it is there only while the prompts are encoded, then waits in pinned host RAM; the
    transformer (its rest copy in host RAM, its working copy placed by ``runtime/animate.py``)
    does not move."""
    from ..runtime.placement import TEXT_ENCODER, component_places, plan_placement
    from ..runtime.swap import model_nbytes
    from .base import pipeline_room

    if not str(device).startswith("cuda"):
        return plan_placement(cuda=False, sizes={}, where={}, available=None)
    return plan_placement(cuda=True, sizes={TEXT_ENCODER: model_nbytes(pipe.text_encoder)},
                          where=component_places(pipe), available=pipeline_room(pipe, ctx), experts=())


def fit_block_swap(pipe: Any, settings: Any, ctx: StageContext, device: str, p: dict[str, Any]):
    """``settings`` with as many blocks streamed as one window needs to fit the device room the
    residency leaves this pipeline (``runtime/animate_room.py``; at least the spec's
    ``block_swap``), and the choice; unchanged (and None) on the CPU or without a budget."""
    from dataclasses import replace

    from ..runtime.animate_settings import resolve_runtime
    from ..runtime.animate_room import block_swap_for_room
    from .base import pipeline_room

    room = pipeline_room(pipe, ctx)
    if room is None or not str(device).startswith("cuda"):
        return settings, None
    resolved, _ = resolve_runtime(settings, device, num_blocks=len(pipe.transformer.blocks), warn=False)
    choice = block_swap_for_room(pipe, resolved, room, p["height"], p["width"], p["frame_window"])
    return replace(settings, block_swap=choice.chosen), choice


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..media.video_io import write_video
    from ..runtime.animate import (
        RuntimeSettings,
        animate_lora_requests,
        apply_animate_teacache,
        pipeline_device,
        prepare_animate_run,
        TEACACHE_COEFFICIENTS_NOTE,
    )
    from ..runtime.pixels import video_frames
    from ..runtime.placement import MoveLog, carry_out
    from .video import encode_prompts, make_scheduler

    p = check_params(params)
    settings = RuntimeSettings(precision=p["precision"], quantize=p["quantize"], attention=p["attention"],
                               block_swap=p["block_swap"], rms_norm=p["rms_norm"])
    data = read_inputs(inputs, p["mode"])
    frames_wanted = data["frames"]
    if frames_wanted <= p["prev_frames"]:
        raise StageError(f"animate: the pose video has {frames_wanted} frame(s); it needs more than "
                         f"prev_frames ({p['prev_frames']})")
    reference = one_path("animate", inputs, "reference", required=False)
    requests = animate_lora_requests(p["loras"], ctx.resolve_lora)

    pipe = ctx.models.get(MODEL_ROLE)
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or not hasattr(transformer, "face_adapter"):
        raise StageError("animate: the animate model must be a WanAnimatePipeline (Wan2.2-Animate)")
    device = pipeline_device(pipe, ctx.device)
    plan = encoder_plan(pipe, ctx, device)
    moves = MoveLog()
    with torch.no_grad():        # before the working copy is built: the encoder leaves the device first
        carry_out(pipe, plan.at("encode"), device, moves)
        prompt_embeds, negative_embeds = encode_prompts(pipe, p["prompt"], p["negative_prompt"], p["guidance"])
        carry_out(pipe, plan.at("encoded"), device, moves)
    settings, room = fit_block_swap(pipe, settings, ctx, device, p)
    runtime = prepare_animate_run(pipe, settings, requests, device=device, lora_fuse=p["lora_fuse"])
    fell = checked_runtime(p, runtime, ctx.device)
    pipe.scheduler = make_scheduler(pipe, p["scheduler"], p["shift"])

    windows = window_count(frames_wanted, p["frame_window"], p["prev_frames"])
    total = p["steps"] * windows
    done = [0]

    def on_step_end(_pipe, i, _t, _kwargs):
        done[0] += 1
        ctx.progress(min(done[0], total), total)
        return {}

    handle = None
    if p["cache"] is not None:
        try:
            handle = apply_animate_teacache(pipe, p["cache"], p["steps"])
        except ValueError as exc:
            raise StageError(f"animate: TeaCache cannot be used on this model: {exc}") from exc
    ctx.progress(0, total)
    stats = None
    try:
        with torch.no_grad():
            result = pipe(
                image=data["character"],
                pose_video=data["pose"],
                face_video=data["face"],
                background_video=data.get("background"),
                mask_video=data.get("mask"),
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                height=p["height"],
                width=p["width"],
                segment_frame_length=p["frame_window"],
                prev_segment_conditioning_frames=p["prev_frames"],
                num_inference_steps=p["steps"],
                mode=p["mode"],
                guidance_scale=p["guidance"],
                generator=torch.Generator("cpu").manual_seed(p["seed"]),
                output_type="pt",
                callback_on_step_end=on_step_end,
            )
        if handle is not None:
            stats = handle.stats()["transformer"]
    finally:
        if handle is not None:
            handle.remove()
    frames = video_frames(result.frames)
    if frames.shape[0] != frames_wanted:
        raise StageError(f"animate: the pipeline returned {frames.shape[0]} frames, expected {frames_wanted}")

    work = ctx.work_dir or out.parent
    silent = Path(work) / f".{out.stem}.video.mp4"
    write_video(frames, silent, fps=p["fps"])
    try:
        audio = mux_reference_audio(silent, reference, out, frames_wanted / p["fps"])
    finally:
        silent.unlink(missing_ok=True)

    if stats is not None:
        branches = {name: {"computed": b["computed"], "skipped": b["skipped"], "last_window": b["pattern"]}
                    for name, b in stats.get("branches", {}).items()}
        stats = {**{k: v for k, v in stats.items() if k != "branches"}, "branches": branches,
                 "threshold": p["cache"]["threshold"],
                 "start_step": p["cache"]["start_step"],
                 "coefficients": TEACACHE_COEFFICIENTS_NOTE if p["cache"]["coefficients"] else None}
    runtime = {**runtime, "cache": stats}
    runtime.pop("requested", None)
    return {
        "frames": int(frames.shape[0]),
        "width": int(frames.shape[2]),
        "height": int(frames.shape[1]),
        "fps": p["fps"],
        "duration": frames_wanted / p["fps"],
        "mode": p["mode"],
        "windows": windows,
        "frame_window": p["frame_window"],
        "prev_frames": p["prev_frames"],
        "steps": p["steps"],
        "runtime": runtime,
        "placement": moves.facts(plan),
        **({"block_swap_for_room": room.facts()} if room is not None else {}),
        **({"fell_back": fell} if fell else {}),
        **audio,
    }
