"""Progress on the terminal: one bar for stages, one for the running stage's steps.

On a terminal it uses rich bars; elsewhere (CI logs, pipes) it prints one line per stage, and
one per segment of a stage that makes segments ("segment 2/3").
"""

from __future__ import annotations

import sys
from typing import TextIO

from .events import Event
from .timing import timing_text


def segment_text(ev: Event) -> str:
    """``segment 2/3`` for a progress event inside a segment, else ``""``."""
    return f"segment {ev.segment}/{ev.segments}" if ev.segment and ev.segments else ""


def segment_begins(ev: Event) -> bool:
    """Whether a progress event is the first step of a segment."""
    return ev.event == "stage_progress" and bool(segment_text(ev)) and ev.segment_step == 1


class PlainProgress:
    def __init__(self, total: int, stream: TextIO | None = None):
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr

    def __call__(self, ev: Event) -> None:
        if ev.event == "stage_started":
            self.stream.write(f"[{self.done + 1}/{self.total}] run {ev.stage}: {ev.reason}\n")
        elif segment_begins(ev):
            self.stream.write(f"[{self.done + 1}/{self.total}]   {ev.stage} {segment_text(ev)}\n")
        elif ev.event == "stage_finished":
            self.done += 1
            self.stream.write(f"[{self.done}/{self.total}] done {ev.stage} in {ev.seconds:.2f}s"
                              f"{timing_text((ev.detail or {}).get('timing'))}\n")
        elif ev.event == "stage_cached" and ev.reason:
            self.done += 1
            self.stream.write(f"[{self.done}/{self.total}] cached {ev.stage}: {ev.reason}\n")
        elif ev.event == "stage_failed":
            self.done += 1
            self.stream.write(f"[{self.done}/{self.total}] FAILED {ev.stage}: {ev.detail.get('error')}\n")
        elif ev.event == "fast_paths":
            self.stream.write(ev.detail["line"] + "\n")
        elif ev.event == "stage_blocked":
            self.done += 1
            self.stream.write(f"[{self.done}/{self.total}] blocked {ev.stage} "
                              f"(needs {', '.join(ev.detail.get('because', []))})\n")
        else:
            return
        self.stream.flush()

    def close(self) -> None:
        return None


class RankProgress:
    """One line per stage event of one rank, when a render is spread over ranks."""

    def __init__(self, rank: int, stream: TextIO | None = None):
        self.rank = rank
        self.stream = stream or sys.stderr

    def __call__(self, ev: Event) -> None:
        head = f"[rank {self.rank}]"
        if ev.event == "stage_started":
            self.stream.write(f"{head} run {ev.stage}: {ev.reason}\n")
        elif segment_begins(ev):
            self.stream.write(f"{head}   {ev.stage} {segment_text(ev)}\n")
        elif ev.event == "stage_finished":
            self.stream.write(f"{head} done {ev.stage} in {ev.seconds:.2f}s"
                              f"{timing_text((ev.detail or {}).get('timing'))}\n")
        elif ev.event == "stage_cached" and ev.reason:
            self.stream.write(f"{head} cached {ev.stage}: {ev.reason}\n")
        elif ev.event == "stage_failed":
            self.stream.write(f"{head} FAILED {ev.stage}: {ev.detail.get('error')}\n")
        elif ev.event == "fast_paths":
            self.stream.write(f"{head} {ev.detail['line']}\n")
        elif ev.event == "stage_blocked":
            self.stream.write(f"{head} blocked {ev.stage} (needs {', '.join(ev.detail.get('because', []))})\n")
        else:
            return
        self.stream.flush()

    def close(self) -> None:
        return None


class RichProgress:
    def __init__(self, total: int):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), transient=False)
        self._stages = self._p.add_task("stages", total=max(total, 1))
        self._steps = self._p.add_task("steps", total=1, visible=False)
        self._p.start()

    def __call__(self, ev: Event) -> None:
        if ev.event == "stage_started":
            self._p.update(self._stages, description=f"{ev.stage}")
            self._p.update(self._steps, completed=0, total=1, visible=True,
                           description=f"  {ev.kind} steps")
            self._p.console.print(f"run [bold]{ev.stage}[/]: {ev.reason}", markup=True, highlight=False)
        elif ev.event == "stage_progress" and ev.total:
            where = segment_text(ev)
            if where:
                self._p.update(self._steps, completed=ev.segment_step, total=ev.segment_steps,
                               description=f"  {ev.kind} {where} steps")
            else:
                self._p.update(self._steps, completed=ev.step, total=ev.total)
        elif ev.event in ("stage_finished", "stage_failed", "stage_blocked") or (
                ev.event == "stage_cached" and ev.reason):
            self._p.advance(self._stages)
            self._p.update(self._steps, visible=False)
            if ev.event == "stage_failed":
                self._p.console.print(f"[red]failed {ev.stage}[/]: {ev.detail.get('error')}",
                                      markup=True, highlight=False)

    def close(self) -> None:
        self._p.stop()


class NoProgress:
    def __call__(self, ev: Event) -> None:
        return None

    def close(self) -> None:
        return None


def make_progress(total: int, enabled: bool = True):
    if not enabled:
        return NoProgress()
    if sys.stderr.isatty():
        return RichProgress(total)
    return PlainProgress(total)
