"""How many segments a stage makes, known before it runs (``plan`` shows it).

A chained video is one stage per segment (``<scene>.video.<k>``, runtime ``segment``/``segments``).
A lip-sync makes as many segments as its speech needs, counted as the S2V pipeline counts them
(``models/s2v/audio_features.speech_segments``) from the speech's length: a source file is read
now, a speech an upstream stage makes is read from the cache once it is there, else unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .graph import FileInput, NodeInput
from .planner import Plan, PlannedStage


@dataclass(frozen=True)
class Segments:
    count: int | None            # None: not known before an upstream stage runs
    index: int | None = None     # this stage's place in a chain (1-based), None for a whole clip

    def __str__(self) -> str:
        if self.index is not None:
            return f"segment {self.index}/{self.count}"
        if self.count is None:
            return "segments: after upstream"
        return f"{self.count} segment" + ("" if self.count == 1 else "s")

    def as_json(self) -> dict[str, int | None]:
        return {"segments": self.count, **({"segment": self.index} if self.index is not None else {})}


def stage_segments(plan: Plan, nid: str) -> Segments | None:
    """The segments of stage ``nid``; None for a stage that makes no segments."""
    st = plan.stages[nid]
    if st.node.kind == "video" and "segments" in st.node.runtime:
        return Segments(st.node.runtime["segments"], st.node.runtime["segment"])
    if st.node.kind == "lipsync":
        return Segments(_lipsync_count(plan, st))
    return None


def _lipsync_count(plan: Plan, st: PlannedStage) -> int | None:
    if st.entry is not None and isinstance(st.entry.meta.get("segments"), int):
        return st.entry.meta["segments"]
    speech = _speech_path(plan, st.node.inputs.get("audio"))
    if speech is None:
        return None
    from ..models.s2v.audio_features import read_speech, speech_segments

    try:
        _, seconds = read_speech(speech)
    except Exception:  # noqa: BLE001 - an unreadable speech is the stage's error to report
        return None
    return speech_segments(seconds, st.node.params["fps"], st.node.params["infer_frames"])


def _speech_path(plan: Plan, value: object) -> Path | None:
    if isinstance(value, FileInput):
        return value.path
    if isinstance(value, NodeInput):
        up = plan.stages[value.node]
        if up.entry is not None:
            return plan.cache.object_path(up.entry.digest, up.entry.ext)
    return None
