"""Audio helpers on PyAV: probe, exact duration, decode to numpy, and test tones.

Decoded audio is ``float32`` shaped ``(channels, samples)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

__all__ = ["AudioInfo", "probe_audio", "audio_duration", "read_audio", "resample_hq", "write_tone", "rms_db"]


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a file, with its length counted by decoding."""

    codec: str
    rate: int
    channels: int
    samples: int

    @property
    def duration(self) -> float:
        return self.samples / self.rate if self.rate else 0.0


def probe_audio(path: str | Path) -> AudioInfo:
    """Open ``path``, decode its first audio stream to the end and count the samples.

    Decoding (rather than trusting the container) gives the exact length for mp3/aac too.
    Raises ``ValueError`` if the file has no audio stream or no decodable audio, and PyAV's
    errors (``av.error.FFmpegError`` / ``OSError``) if it cannot be opened.
    """
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        samples = 0
        rate = ctx.sample_rate
        channels = ctx.channels
        for frame in container.decode(stream):
            samples += frame.samples
            rate = frame.sample_rate or rate
            channels = len(frame.layout.channels) or channels
        if samples == 0:
            raise ValueError(f"{path}: no decodable audio")
        return AudioInfo(codec=ctx.name, rate=int(rate), channels=int(channels), samples=samples)


def audio_duration(path: str | Path) -> float:
    """Length in seconds of the first audio stream of ``path`` (decoded sample count / rate)."""
    return probe_audio(path).duration


def read_audio(path: str | Path, rate: int | None = None, channels: int | None = None) -> np.ndarray:
    """Decode the first audio stream of ``path`` to float32 ``(channels, samples)``.

    ``rate`` resamples (None keeps the file's rate). ``channels`` remixes (None keeps the
    file's channels): 1 averages the channels; 2 copies mono to both channels at full level
    and downmixes more than two channels with swresample's standard matrix.
    """
    if channels not in (None, 1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        out_rate = int(rate or ctx.sample_rate)
        src_channels = int(ctx.channels)
        layout = "stereo" if channels == 2 and src_channels > 2 else ctx.layout.name
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=out_rate)
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            frame.pts = None
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if chunks:
        data = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    else:
        data = np.zeros((len(av.AudioLayout(layout).channels), 0), dtype=np.float32)
    if channels == 1 and data.shape[0] != 1:
        data = data.mean(axis=0, keepdims=True, dtype=np.float32)
    elif channels == 2 and data.shape[0] == 1:
        data = np.repeat(data, 2, axis=0)
    return data


def resample_hq(samples: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
    """Resample float32 ``(channels, samples)`` with soxr at high quality, as librosa's default
    ``soxr_hq`` does: ``ceil(samples * out_rate / rate)`` samples out (soxr's own count, padded
    with zeros or cut to it, as librosa fixes the length); the same rate returns the input."""
    import math

    import soxr

    if rate == out_rate:
        return samples
    out = soxr.resample(np.ascontiguousarray(samples.T), rate, out_rate, quality="HQ")
    out = np.ascontiguousarray(out.reshape(len(out), -1).T, dtype=np.float32)
    n = math.ceil(samples.shape[-1] * out_rate / rate)
    if out.shape[-1] < n:
        out = np.pad(out, ((0, 0), (0, n - out.shape[-1])))
    return np.ascontiguousarray(out[:, :n])


def write_tone(
    path: str | Path,
    seconds: float,
    freq: float = 440.0,
    rate: int = 16000,
    channels: int = 1,
    amplitude: float = 0.5,
) -> Path:
    """Write a sine tone as 16-bit PCM WAV (``freq=0`` or ``amplitude=0`` writes silence).

    The same arguments always give the same bytes. Returns ``path``.
    """
    if seconds < 0 or rate <= 0 or channels < 1:
        raise ValueError("seconds must be >= 0, rate > 0, channels >= 1")
    n = int(round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    wave_ = amplitude * np.sin(2.0 * np.pi * freq * t)
    pcm = np.clip(np.round(wave_ * 32767.0), -32768, 32767).astype("<i2")
    interleaved = np.repeat(pcm[:, None], channels, axis=1).reshape(-1)
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(interleaved.tobytes())
    return path


def rms_db(samples: np.ndarray) -> float:
    """RMS level in dBFS of an array of samples (all channels together); ``-inf`` when silent."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(x * x)))
    return float(20.0 * np.log10(rms)) if rms > 0 else float("-inf")
