"""A floor shadow under the person of a clip (``preprocess/shadow.py`` draws it), sound kept.

params (``ShadowParams``): ``opacity`` (0.45, the seed's), ``crf``. inputs: ``{"clip": mp4}``
(a list of one is accepted). The output has the clip's frames, rate and size; its audio stream,
if any, is copied as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cinesynth_batch.media.interpolate import FrameSink, rate
from cinesynth_batch.media.video_io import probe
from cinesynth_batch.spec.params import ShadowParams, check
from cinesynth_batch.stages.base import StageContext, StageError

KIND = "shadow"
OUTPUT_EXT = ".mp4"
MODEL_ROLE = None


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    return check(ShadowParams, params, KIND).model_dump()


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict:
    import av

    from cinesynth_batch.preprocess.shadow import FloorShadow

    p = check_params(params)
    clip = inputs.get("clip")
    if isinstance(clip, (list, tuple)):
        if len(clip) != 1:
            raise StageError(f"shadow: one clip expected, got {len(clip)} segments")
        clip = clip[0]
    if clip is None:
        raise StageError("shadow: no 'clip' input", hint="give the node the clip to shadow")
    src = Path(clip)
    info = probe(src)
    if not info.fps or not info.width or not info.height:
        raise StageError(f"shadow: {src.name} has no video stream")
    total = int(info.frames or 0)
    shadow = FloorShadow(p["opacity"])
    sink = FrameSink(out, info.width, info.height, rate(info.fps), p["crf"],
                     audio_from=src if info.audio_codec else None)
    try:
        with av.open(str(src)) as container:
            for frame in container.decode(video=0):
                sink.write(shadow(frame.to_ndarray(format="rgb24"))[None])
                ctx.progress(sink.written, max(total, sink.written))
    except BaseException:
        sink.abort()
        raise
    finally:
        shadow.close()
    sink.close()
    light = shadow.light
    return {"frames": sink.written, "shaded_frames": shadow.shaded, "opacity": p["opacity"],
            "lean": None if light is None else light.lean, "tint": None if light is None else list(light.tint),
            "audio": info.audio_codec is not None}
