"""Frame-rate conversion by interpolation: the timing rule, ffmpeg's ``minterpolate``, and
streaming frames to the encoder with the source's audio kept.

**Timing.** A clip of ``n`` frames at ``src`` fps becomes ``round(n * dst / src)`` frames at
``dst`` fps: the same duration, to the frame. Output frame ``j`` shows the source at position
``p = j * src / dst`` (in source frames): frame ``floor(p)`` when ``p`` is whole, else the
interpolation at ``t = p - floor(p)`` between ``floor(p)`` and the next. Positions past the
last source frame hold it (the last source frame lasts ``1 / src`` seconds, like every other).

**Sound.** Audio is never re-encoded: the first audio stream of the source, if any, is copied
into the output packet for packet, so its samples are the source's.
"""

from __future__ import annotations

import math
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .ffmpeg import ffmpeg_exe, ffmpeg_path_arg, run_ffmpeg
from .video_io import X264_THREAD_ARGS

#: The seed's ffmpeg fallback (``rife_interpolate.py``): motion-compensated, overlapped blocks,
#: bidirectional estimation, variable-size blocks.
MINTERPOLATE = "mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1"
X264 = ["-c:v", "libx264", "-preset", "medium", "-pix_fmt", "yuv420p", *X264_THREAD_ARGS,
        "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-map_metadata", "-1", "-movflags", "+faststart"]


def rate(value: float | int | Fraction) -> Fraction:
    return Fraction(value).limit_denominator(1001)


def output_frames(n: int, src: Fraction, dst: Fraction) -> int:
    """Frames of an ``n``-frame clip at ``src`` fps once at ``dst`` fps (the same duration)."""
    return max(1, round(Fraction(n) * dst / src))


def positions(n: int, src: Fraction, dst: Fraction) -> Iterator[tuple[int, Fraction]]:
    """``(i, t)`` for every output frame: source frame ``i``, then ``t`` in [0, 1) towards ``i + 1``."""
    for j in range(output_frames(n, src, dst)):
        p = Fraction(j) * src / dst
        i = math.floor(p)
        if i >= n - 1:
            yield n - 1, Fraction(0)
        else:
            yield i, p - i


def _audio_map(has_audio: bool, index: int) -> list[str]:
    return ["-map", f"{index}:a:0", "-c:a", "copy"] if has_audio else []


def minterpolate(src: Path, out: Path, *, n: int, src_fps: Fraction, dst_fps: Fraction, crf: int,
                 has_audio: bool, progress: Callable[[int], None] | None = None) -> int:
    """ffmpeg's ``minterpolate`` from ``src`` to ``out`` at ``dst_fps``; the frame count follows
    the timing rule (minterpolate stops at the last source frame: the tail holds it). Returns the
    number of frames written."""
    frames = output_frames(n, src_fps, dst_fps)
    hold = math.ceil(dst_fps / src_fps) + 1
    vf = (f"minterpolate=fps={dst_fps.numerator}/{dst_fps.denominator}:{MINTERPOLATE},"
          f"tpad=stop_mode=clone:stop={hold}")
    args = ["-y", "-i", ffmpeg_path_arg(src), "-map", "0:v:0", *_audio_map(has_audio, 0),
            "-vf", vf, "-fps_mode", "cfr", "-r", f"{dst_fps.numerator}/{dst_fps.denominator}",
            "-frames:v", str(frames), *X264, "-crf", str(crf), "-f", "mp4", ffmpeg_path_arg(out)]
    run_ffmpeg(args, f"interpolating {src.name} to {float(dst_fps):g} fps", progress=progress)
    return frames


class FrameSink:
    """Frames piped to ``ffmpeg`` (libx264, bit-exact flags, one thread) as they come; the
    first audio stream of ``audio_from`` copied alongside."""

    def __init__(self, out: Path, width: int, height: int, fps: Fraction, crf: int,
                 audio_from: Path | None = None):
        self.out, self.written = out, 0
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-r", f"{fps.numerator}/{fps.denominator}", "-i", "pipe:0"]
        if audio_from is not None:
            cmd += ["-i", ffmpeg_path_arg(audio_from)]
        cmd += ["-map", "0:v:0", *_audio_map(audio_from is not None, 1), *X264, "-crf", str(crf),
                "-f", "mp4", ffmpeg_path_arg(out)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frames: np.ndarray) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
        except BrokenPipeError:
            self.close()
        self.written += len(frames)

    def close(self) -> None:
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
        if self._proc.wait() != 0:
            tail = " | ".join(err.strip().splitlines()[-5:])
            raise RuntimeError(f"encoding {self.out.name} failed: {tail}")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
