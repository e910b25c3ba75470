"""Read and write video frames with PyAV (libx264), and probe media files.

Frames are ``numpy.uint8`` arrays shaped ``(T, H, W, 3)`` in RGB order.
"""

from __future__ import annotations

from dataclasses import dataclass
import subprocess
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds, as probed by PyAV."""

    width: int | None
    height: int | None
    frames: int | None
    fps: float | None
    duration: float | None
    video_codec: str | None
    audio_codec: str | None
    audio_rate: int | None
    audio_channels: int | None


#: libx264 frame and lookahead threads: fixed counts, so the bytes do not depend on the machine
#: (x264 is deterministic for given thread counts). On two cores 16 : 4 costs what 4 : 1 does; on a
#: GPU host's 16 cores it writes a 720x1280 clip 2.5x sooner (``bench/encode.py``, docs/performance.md).
X264_THREADS = 16
X264_LOOKAHEAD_THREADS = 4


def x264_thread_args(threads: int, lookahead: int) -> tuple[str, ...]:
    """ffmpeg arguments that run libx264 with ``threads`` frame and ``lookahead`` lookahead threads."""
    return ("-threads", str(threads), "-x264-params", f"threads={threads}:lookahead-threads={lookahead}")


X264_THREAD_ARGS = x264_thread_args(X264_THREADS, X264_LOOKAHEAD_THREADS)


def write_video(frames: np.ndarray, path: str | Path, fps: int = 16, crf: int = 12,
                thread_args: tuple[str, ...] = X264_THREAD_ARGS) -> None:
    """Encode ``frames`` as H.264 (yuv420p) into ``path``. ``thread_args`` (``x264_thread_args``)
    is for ``bench/encode.py``, which times other thread counts with this same command.

    Width and height must be even (a yuv420p constraint); callers choose even sizes. Frames are
    piped into a fresh ffmpeg process with ``X264_THREADS`` encoder threads and bit-exact flags, so the same
    frames give the same bytes (the cache relies on it to see that a re-made clip is
    unchanged); libx264 inside a long-lived process does not guarantee that.
    """
    from .ffmpeg import ffmpeg_exe

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frame size {w}x{h} must be even for H.264 yuv420p")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
           "-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p",
           *thread_args,
           "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
           "-movflags", "+faststart", "-f", "mp4", str(path)]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"encoding {path} failed: " + " | ".join(tail))


def read_frames(path: str | Path) -> np.ndarray:
    """Decode every video frame of ``path`` into a ``(T, H, W, 3)`` uint8 array."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"             # frame threads: the same pixels, decoded sooner
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames)


def last_frame(path: str | Path) -> np.ndarray:
    """The last decoded frame of ``path`` as ``(H, W, 3)`` uint8."""
    last = None
    with av.open(str(path)) as container:
        for f in container.decode(video=0):
            last = f
    if last is None:
        raise ValueError(f"{path}: no video frames")
    return last.to_ndarray(format="rgb24")


def probe(path: str | Path) -> MediaInfo:
    """Probe a media file (there is no ffprobe in imageio-ffmpeg; PyAV reads the container)."""
    with av.open(str(path)) as container:
        v = container.streams.video[0] if container.streams.video else None
        a = container.streams.audio[0] if container.streams.audio else None
        frames = None
        if v is not None:
            frames = v.frames or sum(1 for _ in container.decode(video=0))
        duration = float(container.duration / av.time_base) if container.duration else None
        return MediaInfo(
            width=v.codec_context.width if v else None,
            height=v.codec_context.height if v else None,
            frames=frames,
            fps=float(v.average_rate) if v is not None and v.average_rate else None,
            duration=duration,
            video_codec=v.codec_context.name if v else None,
            audio_codec=a.codec_context.name if a else None,
            audio_rate=a.codec_context.sample_rate if a else None,
            audio_channels=a.codec_context.channels if a else None,
        )
