"""Run the ffmpeg binary shipped by ``imageio-ffmpeg`` and read what it reports.

There is no ffprobe next to that binary: probe files with PyAV (``media.video_io.probe``,
``media.audio.probe_audio``). Everything here goes through :func:`run_ffmpeg`, which adds
``-hide_banner -nostdin``, captures stderr, and turns a failure into :class:`FFmpegError`
carrying the tail of ffmpeg's log.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
from pathlib import Path
from typing import Callable, Sequence

__all__ = [
    "FFmpegError",
    "ffmpeg_exe",
    "ffmpeg_path_arg",
    "run_ffmpeg",
    "measure_loudness",
    "parse_loudnorm_json",
    "parse_ebur128_summary",
]


class FFmpegError(RuntimeError):
    """ffmpeg could not be started or exited with a non-zero status."""

    def __init__(self, what: str, returncode: int | None, stderr_tail: str, cmd: Sequence[str]):
        self.what = what
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.cmd = list(cmd)
        status = "could not start" if returncode is None else f"exited with status {returncode}"
        msg = f"ffmpeg failed while {what} ({status})"
        if stderr_tail:
            msg += ":\n" + stderr_tail
        super().__init__(msg)


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary from ``imageio-ffmpeg`` (honours ``IMAGEIO_FFMPEG_EXE``)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_path_arg(path: str | Path) -> str:
    """A file path as an ffmpeg input/output URL.

    The ``file:`` prefix keeps names with a colon or a leading dash from being read as a
    protocol or an option.
    """
    return "file:" + str(Path(path).absolute())


def _tail(text: str, max_lines: int = 25, max_chars: int = 3000) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    out = "\n".join(lines[-max_lines:])
    if len(out) > max_chars:
        out = "..." + out[-max_chars:]
    return out


def run_ffmpeg(
    args: list[str],
    what: str,
    *,
    progress: Callable[[int], None] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run ``ffmpeg -hide_banner -nostdin <args>``.

    ``what`` says what the call was doing ("assembling intro") and goes into the error.
    With ``progress``, ffmpeg reports through ``-progress pipe:1`` and ``progress(frame)`` is
    called with the number of video frames written so far.

    Returns the ``CompletedProcess`` (``stdout``/``stderr`` as text). Raises
    :class:`FFmpegError` on a non-zero exit, a missing binary, or a timeout.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin"]
    if progress is not None:
        cmd += ["-progress", "pipe:1", "-nostats"]
    cmd += [str(a) for a in args]

    if progress is None:
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                timeout=timeout,
            )
        except FileNotFoundError as exc:
            raise FFmpegError(what, None, str(exc), cmd) from exc
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise FFmpegError(what, None, f"timed out after {timeout} s\n" + _tail(err), cmd) from exc
    else:
        proc = _run_with_progress(cmd, what, progress, timeout)

    if proc.returncode != 0:
        raise FFmpegError(what, proc.returncode, _tail(proc.stderr or ""), cmd)
    return proc


def _run_with_progress(
    cmd: list[str], what: str, progress: Callable[[int], None], timeout: float | None
) -> subprocess.CompletedProcess:
    try:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except FileNotFoundError as exc:
        raise FFmpegError(what, None, str(exc), cmd) from exc

    err_chunks: list[str] = []

    def drain() -> None:
        assert popen.stderr is not None
        for chunk in popen.stderr:
            err_chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out_lines: list[str] = []
    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, popen.kill)
        timer.start()
    try:
        assert popen.stdout is not None
        for line in popen.stdout:
            out_lines.append(line)
            if line.startswith("frame="):
                try:
                    progress(int(line.split("=", 1)[1]))
                except ValueError:
                    pass
        popen.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    reader.join()
    return subprocess.CompletedProcess(cmd, popen.returncode, "".join(out_lines), "".join(err_chunks))


def _float(value: object) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        return -math.inf if str(value).strip().startswith("-") else math.nan


def parse_loudnorm_json(stderr: str) -> dict:
    """The last JSON block printed by ``loudnorm=print_format=json``, values as floats.

    Keys: ``input_i``, ``input_tp``, ``input_lra``, ``input_thresh``, ``output_i``,
    ``output_tp``, ``output_lra``, ``output_thresh``, ``target_offset`` (floats, ``-inf`` for
    silence) and ``normalization_type`` (str). Raises ``ValueError`` if none is found.
    """
    blocks = re.findall(r"\{[^{}]*\"input_i\"[^{}]*\}", stderr)
    if not blocks:
        raise ValueError("no loudnorm JSON block in ffmpeg output")
    raw = json.loads(blocks[-1])
    out: dict = {}
    for key, value in raw.items():
        out[key] = value if key == "normalization_type" else _float(value)
    return out


_EBU_PATTERNS = {
    "integrated": r"Integrated loudness:\s*I:\s*(\S+)\s*LUFS\s*Threshold:\s*(\S+)\s*LUFS",
    "lra": r"Loudness range:\s*LRA:\s*(\S+)\s*LU",
    "true_peak": r"True peak:\s*Peak:\s*(\S+)\s*dBFS",
    "sample_peak": r"Sample peak:\s*Peak:\s*(\S+)\s*dBFS",
}


def parse_ebur128_summary(stderr: str) -> dict:
    """Parse the ``Summary:`` that the ``ebur128`` filter logs at the end of a run.

    Returns ``{"integrated", "threshold", "lra", "true_peak"}`` (LUFS / LU / dBTP floats;
    ``true_peak`` only when the filter ran with ``peak=true``).
    """
    idx = stderr.rfind("Summary:")
    if idx < 0:
        raise ValueError("no ebur128 summary in ffmpeg output")
    summary = stderr[idx:]
    m = re.search(_EBU_PATTERNS["integrated"], summary)
    if not m:
        raise ValueError("ebur128 summary without integrated loudness")
    out = {"integrated": _float(m.group(1)), "threshold": _float(m.group(2))}
    m = re.search(_EBU_PATTERNS["lra"], summary)
    if m:
        out["lra"] = _float(m.group(1))
    m = re.search(_EBU_PATTERNS["true_peak"], summary)
    if m:
        out["true_peak"] = _float(m.group(1))
    return out


def measure_loudness(path: str | Path, stream: int = 0) -> dict:
    """EBU R128 loudness of the ``stream``-th audio stream of ``path`` with ffmpeg ``ebur128``.

    Returns ``{"integrated": LUFS, "threshold": LUFS, "lra": LU, "true_peak": dBTP}``.
    A silent file measures ``integrated == -70.0`` (the absolute gate).
    """
    proc = run_ffmpeg(
        [
            "-nostats",
            "-i", ffmpeg_path_arg(path),
            "-map", f"0:a:{stream}",
            "-af", "ebur128=peak=true:framelog=quiet",
            "-f", "null", "-",
        ],
        f"measuring the loudness of {path}",
    )
    return parse_ebur128_summary(proc.stderr)
