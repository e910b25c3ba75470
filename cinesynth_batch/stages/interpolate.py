"""Raise a clip's frame rate by interpolation, keeping its sound.

params (``InterpolateParams``): ``fps`` (the new rate), ``backend`` (``minterpolate``: ffmpeg,
no weights; ``rife``: the profile's ``interpolate`` model; ``amt``: its ``interpolate_amt`` model),
``scale`` (the learned interpolators' flow scale), ``crf``. inputs: ``{"clip": [mp4, ...]}``: the segments of one clip in order; each after the
first starts on the previous one's last frame, so its first frame is dropped (as ``assemble``
joins them).

The output lasts as long as the clip, to the frame: ``round(n * fps / source_fps)`` frames
(``media/interpolate.py`` gives the timing rule). A one-segment clip's audio stream (an
Animate clip carries its reference video's) is copied as is; segments' own audio is not used.
Both learned backends are asked for each output frame at its own time ``t`` between two source
frames (``t`` = 1/4, 1/2, 3/4 for x4), through the same ``between(frames, samples, scale)``.
"""

from __future__ import annotations

import tempfile
from fractions import Fraction
from itertools import groupby
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cinesynth_batch.media.ffmpeg import FFmpegError
from cinesynth_batch.media.interpolate import FrameSink, minterpolate, output_frames, positions, rate
from cinesynth_batch.media.video_io import probe
from cinesynth_batch.spec.params import InterpolateParams, check
from cinesynth_batch.spec.rules import INTERPOLATE_ROLES
from cinesynth_batch.stages.base import StageContext, StageError

KIND = "interpolate"
OUTPUT_EXT = ".mp4"
MODEL_ROLE = "interpolate"        # rife's; amt's is "interpolate_amt" (spec/rules.py: INTERPOLATE_ROLES)


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    return check(InterpolateParams, params, KIND).model_dump()


def _segments(inputs: dict[str, Any]) -> list[Path]:
    clip = inputs.get("clip")
    if clip is None:
        raise StageError("interpolate: no 'clip' input", hint="give the node the clip to interpolate")
    return [Path(p) for p in (clip if isinstance(clip, (list, tuple)) else [clip])]


def _frames(paths: list[Path]) -> Iterator[np.ndarray]:
    """The clip's frames: the segments joined, every first frame after the first segment dropped."""
    import av

    for k, path in enumerate(paths):
        with av.open(str(path)) as container:
            for j, frame in enumerate(container.decode(video=0)):
                if k and not j:
                    continue
                yield frame.to_ndarray(format="rgb24")


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict:
    p = check_params(params)
    paths = _segments(inputs)
    try:
        infos = [probe(path) for path in paths]
    except Exception as exc:  # PyAV raises its own error kinds for unreadable files
        raise StageError(f"interpolate: cannot read clip: {exc}") from exc
    first = infos[0]
    if not first.fps or not first.frames or not first.width or not first.height:
        raise StageError(f"interpolate: {paths[0].name} has no video stream to interpolate")
    src_fps, dst_fps = rate(first.fps), rate(p["fps"])
    n = sum(int(i.frames or 0) for i in infos) - (len(infos) - 1)
    audio = paths[0] if len(paths) == 1 and first.audio_codec else None
    total = output_frames(n, src_fps, dst_fps)

    def progress(done: int, _total: int | None = None) -> None:
        ctx.progress(min(done, total), total)

    with tempfile.TemporaryDirectory(prefix=".interp-", dir=ctx.work_dir or out.parent) as tmp:
        if p["backend"] == "minterpolate":
            src = paths[0]
            if len(paths) > 1:
                src = Path(tmp) / "joined.mp4"
                _write(src, _frames(paths), first.width, first.height, src_fps, crf=0)
            try:
                written = minterpolate(src, out, n=n, src_fps=src_fps, dst_fps=dst_fps, crf=p["crf"],
                                       has_audio=audio is not None, progress=progress)
            except FFmpegError as exc:
                raise StageError(f"interpolate: {exc}") from exc
        else:
            model = ctx.models.get(INTERPOLATE_ROLES[p["backend"]])
            sink = FrameSink(out, first.width, first.height, dst_fps, p["crf"], audio_from=audio)
            try:
                _learned(model, _frames(paths), n, src_fps, dst_fps, p["scale"], sink, progress)
            except BaseException:
                sink.abort()
                raise
            sink.close()
            written = sink.written
    facts = probe(out)
    return {"frames": facts.frames, "fps": float(dst_fps), "source_frames": n, "source_fps": float(src_fps),
            "duration": float(Fraction(facts.frames or written) / dst_fps), "backend": p["backend"],
            "audio": facts.audio_codec is not None}


def _write(path: Path, frames: Iterator[np.ndarray], width: int, height: int, fps: Fraction, crf: int) -> None:
    sink = FrameSink(path, width, height, fps, crf)
    try:
        for frame in frames:
            sink.write(frame[None])
    except BaseException:
        sink.abort()
        raise
    sink.close()


def _learned(model: Any, frames: Iterator[np.ndarray], n: int, src_fps: Fraction, dst_fps: Fraction,
             scale: float, sink: FrameSink, progress) -> None:
    """Walk the source once, two frames at a time, writing each output frame in order."""
    current = next(frames, None)
    if current is None:
        raise StageError("interpolate: the clip has no frames")
    following = next(frames, None)
    index = 0
    for i, group in groupby(positions(n, src_fps, dst_fps), key=lambda it: it[0]):
        while index < i and following is not None:
            current, following, index = following, next(frames, None), index + 1
        times = [t for _, t in group]
        between = [float(t) for t in times if t]
        made = iter(model.between(np.stack([current, following]), [(0, t) for t in between], scale=scale)
                    if between and following is not None else [])
        for t in times:
            sink.write((next(made) if t and following is not None else current)[None])
        progress(sink.written)
