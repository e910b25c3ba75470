"""Subtitles from TTS text: speech spans, sentence cues and SRT text.

* **Speech span.** The speech in a TTS file runs from the first to the last 10 ms window whose
  RMS is within ``SILENCE_DB`` (40 dB) of the loudest window: leading and trailing silence are
  trimmed, pauses inside are kept.
* **Cues.** A line is split into sentences (after ``. ! ? … 。 ！ ？`` and line breaks); the
  span is shared among them in proportion to their length in characters (spaces excluded).
* **Times** are scene start (in the final video) + the span, cut at the scene's end, written as
  ``HH:MM:SS,mmm`` (rounded to the millisecond).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SILENCE_DB = 40.0
WINDOW_S = 0.010
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+|(?<=[。！？])|\n+")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def speech_span(path: str | Path) -> tuple[float, float]:
    """(start, end) in seconds of the speech in an audio file; (0, 0) for silence."""
    from .audio import probe_audio, read_audio

    rate = probe_audio(path).rate
    samples = read_audio(path, channels=1)[0]
    return span_of(samples, rate)


def span_of(samples: np.ndarray, rate: int) -> tuple[float, float]:
    win = max(1, int(round(rate * WINDOW_S)))
    n = len(samples) // win
    if n == 0:
        return 0.0, 0.0
    frames = samples[: n * win].astype(np.float64).reshape(n, win)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    peak = rms.max()
    if peak <= 0:
        return 0.0, 0.0
    loud = np.nonzero(rms >= peak * 10 ** (-SILENCE_DB / 20))[0]
    start = loud[0] * win / rate
    end = min(len(samples), (loud[-1] + 1) * win) / rate
    return float(start), float(end)


def sentences(text: str) -> list[str]:
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip())]
    return [p for p in parts if p]


def line_cues(text: str, start: float, end: float, limit: float | None = None) -> list[Cue]:
    """Cues for one line spoken from ``start`` to ``end`` (seconds in the final video)."""
    if limit is not None:
        end = min(end, limit)
    parts = sentences(text)
    if not parts or end <= start:
        return []
    weights = [max(1, len(re.sub(r"\s+", "", p))) for p in parts]
    total = float(sum(weights))
    cues, t, acc = [], start, 0
    for part, w in zip(parts, weights):
        acc += w
        t_next = start + (end - start) * acc / total
        cues.append(Cue(t, t_next, part))
        t = t_next
    return cues


def timestamp(seconds: float) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(cues: list[Cue]) -> str:
    blocks = []
    for i, cue in enumerate(sorted(cues, key=lambda c: c.start), 1):
        blocks.append(f"{i}\n{timestamp(cue.start)} --> {timestamp(cue.end)}\n{cue.text}\n")
    return "\n".join(blocks)


def parse_srt(text: str) -> list[Cue]:
    """Read back what ``to_srt`` writes (for checks and tests)."""
    def secs(stamp: str) -> float:
        hms, ms = stamp.strip().split(",")
        h, m, s = (int(x) for x in hms.split(":"))
        return h * 3600 + m * 60 + s + int(ms) / 1000

    cues = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.strip().splitlines()
        if len(lines) < 3:
            continue
        a, b = lines[1].split("-->")
        cues.append(Cue(secs(a), secs(b), "\n".join(lines[2:])))
    return cues
