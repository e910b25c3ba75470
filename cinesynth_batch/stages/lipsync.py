"""Lip-sync: Wan2.2-S2V-14B turns an avatar image and speech into a talking video.

params: ``prompt``, ``negative_prompt``, ``steps``, ``infer_frames`` (frames per segment,
a multiple of 4), ``guidance``, ``shift``, ``boundary``, ``scheduler``, ``width``,
``height``, ``fps``, ``seed``, ``loras: [{name, high, low}]``, ``cache`` (TeaCache settings or
None), ``quantize`` (``fp8`` / ``fp8_e4m3fn``, keyed). runtime (not keyed): ``attention``,
``compile``, ``block_swap`` (see ``runtime/accel.py``). inputs: ``avatar`` (image), ``audio``
(speech, any format), optional ``pose_video``.

The number of segments follows the speech length (see ``models/s2v/audio_features.py``);
segment 1 starts from the avatar, each next one from the previous segment's last frames.
The clip is cut to the speech duration (``round(seconds * fps)`` frames, so within half a
frame) and the speech is muxed in as AAC. The prompts are encoded before sampling; on CUDA the
text encoder then waits in pinned host RAM until the next run encodes (``runtime/placement.py``;
the facts' ``placement`` lists the moves).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..spec.params import LipsyncParams, check
from .base import StageContext, StageError

KIND = "lipsync"
OUTPUT_EXT = ".mp4"
MODEL_ROLE = "lipsync"


def may_fall_back(params: dict[str, Any]) -> bool:
    from .effective import lossy_speed

    return lossy_speed(params)


def effective_params(params: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """The keyed params with ``quantize`` / a lossy ``attention`` as this machine runs them."""
    from ..runtime.accel import keyed_speed

    return keyed_speed(params, device, dtype)


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``); the run reads them as given."""
    check(LipsyncParams, params, KIND)
    return dict(params)


def _open_avatar(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise StageError(f"lipsync.avatar: {path.name} is not an image ({exc})",
                         hint="give a PNG or JPEG file") from exc


def placement_plan(pipe: Any, ctx: StageContext):
    """The text encoder's moves for this run (``runtime/placement.py``): on CUDA it is on the device
    only while the prompts are encoded; the transformer, VAE and audio encoder stay."""
    from ..runtime.memory import offloaded
    from ..runtime.placement import TEXT_ENCODER, component_places, component_sizes, plan_placement

    if not str(ctx.device).startswith("cuda"):
        return plan_placement(cuda=False, sizes={}, where={}, available=None)
    return plan_placement(cuda=True, sizes=component_sizes(pipe), where=component_places(pipe), available=None,
                          experts=(), encoder_offloaded=offloaded(getattr(pipe, TEXT_ENCODER)) is not None)


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    from ..media.ffmpeg import ffmpeg_path_arg, run_ffmpeg
    from ..media.video_io import write_video
    from ..models.s2v.audio_features import read_speech, speech_frames
    from ..models.s2v.lora import PhaseLora

    p = check_params(params)
    avatar = _open_avatar(Path(inputs["avatar"]))
    speech_path = Path(inputs["audio"])
    try:
        wave, seconds = read_speech(speech_path)
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise StageError(f"lipsync.audio: {message}",
                         hint="give a readable speech file (wav, mp3, m4a, flac) with sound in it") from exc
    loras = [PhaseLora(lo["name"], ctx.resolve_lora(lo["name"], "mov"), lo["high"], lo["low"])
             for lo in p["loras"]]
    import torch

    from ..runtime.accel import prepared_pipeline
    from ..runtime.memory import offloaded, restore_offload
    from ..runtime.placement import MoveLog, carry_out
    from .effective import checked_speed

    pipe, speed = prepared_pipeline(ctx, MODEL_ROLE, p)
    fell = checked_speed(KIND, p, speed, ctx.device, ctx.dtype)
    if offloaded(pipe.transformer) is not None:
        pipe.loras.use(loras)                 # the adapters join the offloaded blocks' pinned copies
        restore_offload(pipe.transformer)
    plan = placement_plan(pipe, ctx)
    moves = MoveLog()
    with torch.no_grad():
        carry_out(pipe, plan.at("encode"), ctx.device, moves)
        texts = pipe.encode_text(p["prompt"], p["negative_prompt"])
        carry_out(pipe, plan.at("encoded"), ctx.device, moves)
    result = pipe.generate(
        image=avatar, speech=wave, audio_seconds=seconds, prompt=p["prompt"],
        negative_prompt=p["negative_prompt"], width=p["width"], height=p["height"], fps=p["fps"],
        infer_frames=p["infer_frames"], steps=p["steps"], guidance=p["guidance"], shift=p["shift"],
        scheduler=p["scheduler"], seed=p["seed"], boundary=p["boundary"], loras=loras,
        cache=p.get("cache"), pose_video=Path(inputs["pose_video"]) if inputs.get("pose_video") else None,
        progress=ctx.progress, texts=texts)
    frames = result.frames
    wanted = speech_frames(seconds, p["fps"])
    if frames.shape[0] < wanted:
        raise StageError(f"lipsync: the model made {frames.shape[0]} frames, the speech needs {wanted}")
    frames = frames[:wanted]
    work = ctx.work_dir or out.parent
    silent = work / "lipsync_video.mp4"
    write_video(frames, silent, fps=p["fps"])
    run_ffmpeg(["-y", "-i", ffmpeg_path_arg(silent), "-i", ffmpeg_path_arg(speech_path),
                "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k",
                "-ar", "48000", "-t", f"{wanted / p['fps']:.6f}", "-fflags", "+bitexact",
                "-flags:a", "+bitexact", "-map_metadata", "-1", "-movflags", "+faststart",
                "-threads", "1", ffmpeg_path_arg(out)], what=f"muxing speech into {out.name}")
    return {"frames": int(frames.shape[0]), "width": int(frames.shape[2]),
            "height": int(frames.shape[1]), "fps": p["fps"], "segments": result.segments,
            "duration": wanted / p["fps"], "speech_seconds": round(seconds, 4),
            "cache": result.cache_stats, "generated_frames": int(result.frames.shape[0]),
            "frame_check": math.isclose(wanted / p["fps"], seconds, abs_tol=0.5 / p["fps"]), "speed": speed,
            "placement": moves.facts(plan),
            **({"fell_back": fell} if fell else {})}
