"""Change Character: Wan2.2-Animate (``WanAnimatePipeline``) puts a character into a motion video.

params (plain JSON, defaults in ``DEFAULTS``)::

    {"mode": "animate" | "replace", "prompt": str, "negative_prompt": str | null,
     "width": int, "height": int (multiples of 16), "fps": 16,
     "steps": int, "guidance": float (CFG; 1.0 = no CFG, the official advice), "shift": float,
     "scheduler": "euler" | "unipc", "seed": int,
     "frame_window": 77 (frames per window, 4k+1), "prev_frames": 1 | 5 (frames of the previous
     window that condition the next),
     "loras": [{"name": str, "weight": float}],
     "precision": "bf16" | "fp16" | "fp32", "quantize": null | "fp8_e4m3fn",
     "attention": "sdpa" | "cudnn" | "fa3" | "fa4" | "sageattn" | "flash", "rms_norm": "pytorch", "block_swap": 0..40,
     "cache": null | {"kind": "teacache", "threshold": float, "start_step": int, "coefficients": bool}}

inputs: ``character`` (an image), ``pose`` and ``face`` (videos from the preprocessing stages, with
the same frame count, which is the output's frame count); for ``mode: replace`` also
``background`` and ``mask`` (videos, same frame count; white in the mask = where the character
goes); optional ``reference`` (the original reference video, used only for its audio).

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

from .base import StageContext, StageError
from .params import float_param, int_param, one_path

KIND = "animate"
OUTPUT_EXT = ".mp4"
MODEL_ROLE = "animate"

MODES = ("animate", "replace")
SCHEDULERS = ("euler", "unipc")
SIZE_MULTIPLE = 16
PREV_FRAMES = (1, 5)
VAE_TEMPORAL = 4

DEFAULTS: dict[str, Any] = {
    "mode": "animate",
    "prompt": "",
    "negative_prompt": None,
    "fps": 16,
    "steps": 20,
    "guidance": 1.0,
    "shift": 5.0,
    "scheduler": "unipc",
    "frame_window": 77,
    "prev_frames": 1,
    "loras": [],
    "precision": "bf16",
    "quantize": None,
    "attention": "sdpa",
    "rms_norm": "pytorch",
    "block_swap": 0,
    "cache": None,
}




def _check_cache(cache: Any) -> dict | None:
    if cache is None:
        return None
    if not isinstance(cache, dict):
        raise StageError(f"animate: cache must be a mapping or null, got {cache!r}")
    kind = cache.get("kind", "teacache")
    if kind in ("none", None):
        return None
    if kind != "teacache":
        raise StageError(f"animate: cache.kind must be 'teacache', got {kind!r}")
    out = {"kind": "teacache", "threshold": cache.get("threshold", 0.15), "start_step": cache.get("start_step", 1),
           "coefficients": cache.get("coefficients", True)}
    float_param("animate", out, "threshold", 0.0)
    int_param("animate", out, "start_step", 0)
    if not isinstance(out["coefficients"], bool):
        raise StageError(f"animate: cache.coefficients must be true or false, got {out['coefficients']!r}")
    return out


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (defaults applied); returns the values the run uses."""
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None or k in ("negative_prompt", "quantize",
                                                                                  "cache")}}
    if p["mode"] not in MODES:
        raise StageError(f"animate: mode must be 'animate' or 'replace', got {p['mode']!r}")
    if not isinstance(p["prompt"], str):
        raise StageError(f"animate: prompt must be a string, got {p['prompt']!r}")
    if p["negative_prompt"] is not None and not isinstance(p["negative_prompt"], str):
        raise StageError(f"animate: negative_prompt must be a string or null, got {p['negative_prompt']!r}")
    width, height = int_param("animate", p, "width", SIZE_MULTIPLE), int_param("animate", p, "height", SIZE_MULTIPLE)
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise StageError(f"animate: width and height must be multiples of {SIZE_MULTIPLE}, got {width}x{height}",
                         hint=f"try {max(16, round(width / 16) * 16)}x{max(16, round(height / 16) * 16)}")
    window = int_param("animate", p, "frame_window", 5)
    if (window - 1) % VAE_TEMPORAL:
        raise StageError(f"animate: frame_window must be 4k+1 (5, 9, ..., 77), got {window}",
                         hint=f"try frame_window: {4 * max(1, round((window - 1) / 4)) + 1}")
    prev = p["prev_frames"]
    if prev not in PREV_FRAMES or isinstance(prev, bool):
        raise StageError(f"animate: prev_frames must be 1 or 5 (what the pipeline supports), got {prev!r}")
    if prev >= window:
        raise StageError(f"animate: prev_frames ({prev}) must be smaller than frame_window ({window})")
    if p["scheduler"] not in SCHEDULERS:
        raise StageError(f"animate: scheduler must be 'euler' or 'unipc', got {p['scheduler']!r}")
    shift = float_param("animate", p, "shift")
    if shift <= 0:
        raise StageError(f"animate: shift must be > 0, got {shift!r}")
    loras = p["loras"] or []
    if not isinstance(loras, list):
        raise StageError(f"animate: loras must be a list of {{name, weight}}, got {loras!r}")
    return {
        "mode": p["mode"],
        "prompt": p["prompt"],
        "negative_prompt": p["negative_prompt"] or None,
        "width": width,
        "height": height,
        "fps": int_param("animate", p, "fps", 1),
        "steps": int_param("animate", p, "steps", 1),
        "guidance": float_param("animate", p, "guidance", 0.0),
        "shift": shift,
        "scheduler": p["scheduler"],
        "seed": int_param("animate", p, "seed", 0),
        "frame_window": window,
        "prev_frames": prev,
        "loras": loras,
        "precision": p["precision"],
        "quantize": p["quantize"],
        "attention": p["attention"],
        "rms_norm": p["rms_norm"],
        "block_swap": p["block_swap"],
        "cache": _check_cache(p["cache"]),
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
    from ..runtime.animate import RuntimeSettings, resolve_runtime

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
    from .video import make_scheduler, to_uint8

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
    runtime = prepare_animate_run(pipe, settings, requests, device=pipeline_device(pipe, ctx.device))
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
                prompt=p["prompt"],
                negative_prompt=p["negative_prompt"],
                height=p["height"],
                width=p["width"],
                segment_frame_length=p["frame_window"],
                prev_segment_conditioning_frames=p["prev_frames"],
                num_inference_steps=p["steps"],
                mode=p["mode"],
                guidance_scale=p["guidance"],
                generator=torch.Generator("cpu").manual_seed(p["seed"]),
                output_type="np",
                callback_on_step_end=on_step_end,
            )
        if handle is not None:
            stats = handle.stats()["transformer"]
    finally:
        if handle is not None:
            handle.remove()
    frames = to_uint8(result.frames)
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
        **({"fell_back": fell} if fell else {}),
        **audio,
    }
