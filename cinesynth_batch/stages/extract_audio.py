"""The sound of a video or audio file, optionally a time range of it, as a WAV (PyAV).

params: ``start`` (seconds, default 0), ``end`` (seconds or None: to the end). inputs:
``media``. The file's sample rate and channels are kept (16-bit PCM).
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np

from ..spec.params import ExtractAudioParams, check
from .base import StageContext, StageError
from .params import one_path

KIND = "extract_audio"
OUTPUT_EXT = ".wav"
MODEL_ROLE = None


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``); returns ``start`` and ``end`` (None: the end)."""
    return check(ExtractAudioParams, params, KIND).model_dump()


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    import av

    from ..media.audio import probe_audio, read_audio

    p = check_params(params)
    start, end = p["start"], p["end"]
    media = one_path("extract_audio", inputs, "media", required=True)
    try:
        info = probe_audio(media)
        data = read_audio(media)
    except (ValueError, av.error.FFmpegError, OSError) as exc:
        raise StageError(f"extract_audio: {media.name} has no readable sound ({exc})",
                         hint="give a video or audio file with an audio track") from exc
    a = int(round(start * info.rate))
    b = data.shape[1] if end is None else min(data.shape[1], int(round(end * info.rate)))
    if a >= b:
        raise StageError(f"extract_audio: the range {start}..{end if end is not None else 'end'} s is "
                         f"outside the sound of {media.name} ({info.duration:.3f} s)",
                         hint="choose start and end inside the file")
    part = np.clip(data[:, a:b], -1.0, 1.0)
    pcm = np.round(part.T * 32767.0).astype("<i2")
    with wave.open(str(out), "wb") as w:
        w.setnchannels(part.shape[0])
        w.setsampwidth(2)
        w.setframerate(info.rate)
        w.writeframes(np.ascontiguousarray(pcm).tobytes())
    return {"rate": info.rate, "channels": int(part.shape[0]), "samples": int(part.shape[1]),
            "duration": round(part.shape[1] / info.rate, 6)}
