"""Typed render events, fanned out to sinks (JSON lines file, progress display, tests)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol


@dataclass
class Event:
    event: str                       # render_started | stage_started | stage_cached | stage_finished
    #                                  | stage_failed | stage_blocked | stage_progress | fast_paths
    #                                  | render_finished
    #                                  | stage_assigned | stage_lost (a worker of the Ray executor)
    stage: str | None = None
    kind: str | None = None
    scene: str | None = None
    key: str | None = None
    reason: str | None = None
    seconds: float | None = None
    step: int | None = None          # stage_progress: step of total, over the whole stage
    total: int | None = None
    segment: int | None = None       # stage_progress of a stage that makes segments: segment of
    segments: int | None = None      # segments (1-based), and the step within that segment
    segment_step: int | None = None
    segment_steps: int | None = None
    rank: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None and v != {}}
        return json.dumps(data, sort_keys=True, ensure_ascii=False)


class Sink(Protocol):
    def __call__(self, event: Event) -> None:  # pragma: no cover - protocol
        ...


class JsonLinesSink:
    """Appends one JSON object per event to a file, flushed at once (readable while rendering)."""

    def __init__(self, path: Path, progress_steps: bool = True):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")
        self._steps = progress_steps

    def __call__(self, event: Event) -> None:
        if event.event == "stage_progress" and not self._steps:
            return
        try:
            self._f.write(event.to_json() + "\n")
            self._f.flush()
        except OSError as exc:      # a full disk: say which file
            raise type(exc)(exc.errno, exc.strerror, str(self.path)) from exc

    def close(self) -> None:
        self._f.close()


def event_sinks(events: Path | None, sinks: list[Callable[[Event], None]] | None = None,
                progress_steps: bool = True):
    """``(sinks, closers)``: the given sinks, plus a JSON-lines file at ``events`` when asked
    (its ``close`` among the closers)."""
    all_sinks: list[Callable[[Event], None]] = list(sinks or [])
    closers: list[Callable[[], None]] = []
    if events is not None:
        sink = JsonLinesSink(events, progress_steps)
        all_sinks.append(sink)
        closers.append(sink.close)
    return all_sinks, closers


class EventBus:
    def __init__(self, sinks: list[Callable[[Event], None]] | None = None, rank: int = 0):
        self.sinks = list(sinks or [])
        self.rank = rank

    def emit(self, event: str, **fields: Any) -> Event:
        ev = Event(event=event, rank=self.rank, **fields)
        for sink in self.sinks:
            sink(ev)
        return ev
