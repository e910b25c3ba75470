"""One frame of a video as a PNG image (PyAV).

params: ``at``: ``"first"``, ``"last"`` or seconds (the frame on screen at that time: the
last frame whose timestamp is not after it). inputs: ``video``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec.params import ExtractFrameParams, check
from .base import StageContext, StageError
from .params import one_path

KIND = "extract_frame"
OUTPUT_EXT = ".png"
MODEL_ROLE = None


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``); returns ``at`` (first, last or seconds)."""
    return check(ExtractFrameParams, params, KIND).model_dump()


def pick_frame(path: Path, at: Any):
    """The frame at ``at`` as an ``av.VideoFrame``; StageError naming the file otherwise."""
    import av

    chosen = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise StageError(f"extract_frame: {path.name} has no video stream",
                                 hint="give a video file (or a URL of one)")
            stream = container.streams.video[0]
            period = 1.0 / float(stream.average_rate or 1)    # read while the container is open
            for frame in container.decode(stream):
                if at == "first":
                    return frame
                if at != "last" and chosen is not None and frame.time is not None and frame.time > at:
                    break
                chosen = frame
    except av.error.FFmpegError as exc:
        raise StageError(f"extract_frame: cannot decode {path.name}: {exc}",
                         hint="give a video file (or a URL of one)") from exc
    if chosen is None:
        raise StageError(f"extract_frame: {path.name} has no decodable frame")
    if at not in ("first", "last") and chosen.time is not None and at > chosen.time + period:
        raise StageError(f"extract_frame: at {at} s is after the end of {path.name} "
                         f"(it lasts {chosen.time:.3f} s)", hint="use a time inside the video, or 'last'")
    return chosen


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    at = check_params(params)["at"]
    video = one_path("extract_frame", inputs, "video", required=True)
    frame = pick_frame(video, at)
    image = frame.to_image()
    image.save(out, format="PNG", optimize=False)
    return {"width": image.width, "height": image.height, "time": round(float(frame.time or 0.0), 6)}
