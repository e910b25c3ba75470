"""A waveform of a sound for the report: the first audio stream of a file (a speech ``.wav``,
or the speech muxed into a lip-synced clip) decoded with PyAV, reduced to the lowest and
highest sample (of any channel) of each column and drawn with Pillow as a small WebP image.

Decoding keeps only the peaks of short blocks (never the whole signal), and stops after
``MAX_SECONDS``: a waveform of a very long file shows its beginning.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from .thumbs import save_webp

WIDTH, HEIGHT = 200, 40        # pixels
BLOCK = 64                     # samples reduced to one low and one high while decoding
MAX_SECONDS = 3600.0           # decoded at most
FLOOR = 0.05                   # quieter than this is not scaled up (silence stays flat)
INK, PAPER = (59, 110, 165), (243, 243, 243)


def peaks(src: Path, columns: int = WIDTH, max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, np.ndarray, float]:
    """``(lows, highs, seconds)``: for each of ``columns`` columns the lowest and highest sample
    of any channel (full scale ±1) in its share of the sound, and the seconds decoded."""
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    carry = np.zeros((2, 0), np.float32)            # the samples of a block not yet whole
    total = 0
    with av.open(str(src)) as container:
        if not container.streams.audio:
            raise ValueError(f"{src.name}: no audio stream")
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        if not rate:
            raise ValueError(f"{src.name}: no sample rate")
        limit = int(max_seconds * rate)
        resampler = av.AudioResampler(format="fltp")      # planar float: one row per channel

        def take(frames) -> bool:
            nonlocal carry, total
            for frame in frames:
                planes = frame.to_ndarray()[:, : max(limit - total, 0)]
                total += planes.shape[1]
                chunk = np.concatenate([carry, np.stack([planes.min(axis=0), planes.max(axis=0)])], axis=1)
                whole = chunk.shape[1] // BLOCK * BLOCK
                if whole:
                    lows.append(chunk[0, :whole].reshape(-1, BLOCK).min(axis=1))
                    highs.append(chunk[1, :whole].reshape(-1, BLOCK).max(axis=1))
                carry = chunk[:, whole:]
            return total < limit

        for frame in container.decode(stream):
            if not take(resampler.resample(frame)):
                break
        else:
            take(resampler.resample(None))
    if carry.shape[1]:
        lows.append(carry[0].min(keepdims=True))
        highs.append(carry[1].max(keepdims=True))
    if not lows:
        raise ValueError(f"{src.name}: no audio samples")
    low, high = np.concatenate(lows), np.concatenate(highs)
    edges = np.linspace(0, low.size, columns + 1).astype(int)
    cols_low = np.array([low[a:max(b, a + 1)].min() for a, b in zip(edges[:-1], edges[1:])])
    cols_high = np.array([high[a:max(b, a + 1)].max() for a, b in zip(edges[:-1], edges[1:])])
    return np.clip(cols_low, -1, 1), np.clip(cols_high, -1, 1), total / rate


def waveform(src: Path, dest: Path, width: int = WIDTH, height: int = HEIGHT) -> dict[str, float]:
    """Write the waveform of ``src`` to ``dest`` (WebP, lossless): one vertical line per column
    from its lowest to its highest sample, scaled to the loudest column (a quiet sound is not
    scaled past ``FLOOR``). Returns its ``width``, ``height`` and the ``seconds`` it shows."""
    low, high, seconds = peaks(src, width)
    scale = (height / 2 - 1) / max(float(np.abs(low).max()), float(np.abs(high).max()), FLOOR)
    mid = height / 2
    im = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(im)
    draw.line((0, int(mid), width - 1, int(mid)), fill=(200, 200, 200))
    for x, (lo, hi) in enumerate(zip(low, high)):
        draw.line((x, round(mid - hi * scale), x, round(mid - lo * scale)), fill=INK)
    save_webp(im, dest, lossless=True)
    return {"width": width, "height": height, "seconds": round(seconds, 3)}
