"""Vocals or accompaniment of a song with demucs (HTDemucs).

params: ``stem`` (``vocals`` | ``accompaniment``: the sum of every other source),
``overlap`` (between the model's segments). inputs: ``audio`` (any audio or video file
with sound). The mix is resampled to the model's rate and channels, normalised as
demucs' own ``separate`` does, split into the model's segments without random shifts (so
the same input gives the same bytes), and written as 16-bit WAV at the model's rate.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np

from ..spec.params import SeparateParams, check
from .base import StageContext, StageError
from .params import one_path

KIND = "separate"
OUTPUT_EXT = ".wav"
MODEL_ROLE = "separate"


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``); returns ``stem`` and ``overlap``."""
    return check(SeparateParams, params, KIND).model_dump()


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    import av
    import torch
    from demucs.apply import apply_model

    from ..media.audio import read_audio

    p = check_params(params)
    stem, overlap = p["stem"], p["overlap"]
    source = one_path("separate", inputs, "audio", required=True)
    model = ctx.models.get(MODEL_ROLE)
    rate, channels = int(model.samplerate), int(model.audio_channels)
    try:
        mix = torch.from_numpy(read_audio(source, rate=rate, channels=channels))
    except (ValueError, av.error.FFmpegError, OSError) as exc:
        raise StageError(f"separate: {source.name} has no readable sound ({exc})",
                         hint="give a song (audio or video file with an audio track)") from exc
    if mix.shape[1] == 0:
        raise StageError(f"separate: {source.name} holds no audio samples")
    if "vocals" not in model.sources:
        raise StageError(f"separate: the model has no vocals source (it has {', '.join(model.sources)})")
    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std().clamp_min(1e-8)
    device = next(model.parameters()).device
    with torch.no_grad():
        sources = apply_model(model, ((mix - mean) / std)[None].to(device), shifts=0, split=True,
                              overlap=overlap, progress=False, device=device)[0].cpu()
    sources = sources * std + mean
    vocals = sources[model.sources.index("vocals")]
    wave_ = vocals if stem == "vocals" else sources.sum(0) - vocals
    pcm = np.round(np.clip(wave_.numpy().T, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(out), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm).tobytes())
    ctx.progress(1, 1)
    return {"stem": stem, "rate": rate, "channels": channels, "samples": int(pcm.shape[0]),
            "duration": round(pcm.shape[0] / rate, 6)}
