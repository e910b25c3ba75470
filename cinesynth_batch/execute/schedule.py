"""Who runs what next, when a render is spread over ranks. Plain bookkeeping, no I/O.

A stage is ready when every upstream stage has an artifact. Ready stages go out by priority
(``by_priority``): first those whose model an idle rank already holds (no load, no swap), then the
others; longest expected first within each (``cost``: expected seconds, ``plan/cost.py``), plan
order among equals (plan order groups stages by kind). An idle rank prefers a stage whose model it
already holds. A stage split over a group of ranks (sequence parallel) waits until its whole group is
idle, and the idle ranks of that group take no other work meanwhile, so it is not starved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .parallel import groups


@dataclass(frozen=True)
class Assignment:
    stage: str
    ranks: tuple[int, ...]          # the first rank leads: it commits the artifact and reports

    @property
    def leader(self) -> int:
        return self.ranks[0]


@dataclass
class Schedule:
    order: list[str]                          # plan order of the stages that must run
    upstream: dict[str, list[str]]            # stage -> upstream stages (any status)
    available: set[str]                       # stages whose artifact exists already (cached)
    world: int
    degrees: dict[str, int] = field(default_factory=dict)
    slots: dict[str, str | None] = field(default_factory=dict)   # stage -> model it needs
    keep_going: bool = False
    cost: Callable[[str], float] | None = None   # stage -> expected seconds; None: plan order only

    pending: list[str] = field(init=False)
    running: dict[str, tuple[int, ...]] = field(init=False, default_factory=dict)
    busy: dict[int, str] = field(init=False, default_factory=dict)
    failed: set[str] = field(init=False, default_factory=set)
    blocked: set[str] = field(init=False, default_factory=set)
    held: dict[int, str | None] = field(init=False, default_factory=dict)   # rank -> last model
    down: set[int] = field(init=False, default_factory=set)   # ranks lost, not (yet) back

    def __post_init__(self) -> None:
        self.pending = list(self.order)
        self.available = set(self.available)
        self._position = {s: i for i, s in enumerate(self.order)}

    # -- state ----------------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        """After a failure without --keep-going nothing new starts (as in a local render)."""
        return bool(self.failed) and not self.keep_going

    def finished(self) -> bool:
        if self.running:
            return False
        return not self.pending or self.stopped or not self.ready()

    def ready(self) -> list[str]:
        return [s for s in self.pending if all(u in self.available for u in self.upstream[s])]

    def block(self) -> list[tuple[str, list[str]]]:
        """Pending stages below a failed or blocked one: taken off, with the stages they needed."""
        out = []
        changed = True
        while changed:
            changed = False
            for s in list(self.pending):
                bad = [u for u in self.upstream[s] if u in self.failed or u in self.blocked]
                if bad:
                    self.pending.remove(s)
                    self.blocked.add(s)
                    out.append((s, bad))
                    changed = True
        return out

    # -- decisions ------------------------------------------------------------------------------
    def assign(self) -> list[Assignment]:
        """Hand ready stages to idle ranks; marks them running."""
        if self.stopped:
            return []
        free = [r for r in range(self.world) if r not in self.busy and r not in self.down]
        out: list[Assignment] = []
        for stage in self.by_priority(self.ready(), free):
            if not free:
                break
            degree = self.degrees.get(stage, 1)
            if degree > 1:
                group = max(groups(self.world, degree), key=lambda g: sum(r in free for r in g))
                if all(r in free for r in group):
                    out.append(self._start(stage, tuple(group)))
                free = [r for r in free if r not in group]      # held for this stage meanwhile
                continue
            rank = self._pick(free, self.slots.get(stage))
            free.remove(rank)
            out.append(self._start(stage, (rank,)))
        return out

    # -- priority: the one place that decides which ready stage goes first ----------------------
    def by_priority(self, ready: list[str], free: list[int]) -> list[str]:
        """``ready`` in the order it is handed out: stages whose model an idle rank holds first,
        then the rest; within each, longest expected first; plan order among equals."""
        holding = {self.held.get(r) for r in free} - {None}

        def rank(stage: str) -> tuple[bool, float, int]:
            seconds = self.cost(stage) if self.cost is not None else 0.0
            return (self.slots.get(stage) not in holding, -seconds, self._position[stage])

        return sorted(ready, key=rank)

    def withdraw(self, stages: set[str]) -> None:
        """Take pending stages off without running them (their render stopped)."""
        self.pending = [s for s in self.pending if s not in stages]

    # -------------------------------------------------------------------------------------------
    def _pick(self, free: list[int], slot: str | None) -> int:
        same = [r for r in free if slot is not None and self.held.get(r) == slot]
        empty = [r for r in free if self.held.get(r) is None]
        return (same or empty or free)[0]

    def _start(self, stage: str, ranks: tuple[int, ...]) -> Assignment:
        self.pending.remove(stage)
        self.running[stage] = ranks
        for r in ranks:
            self.busy[r] = stage
            if self.slots.get(stage) is not None:
                self.held[r] = self.slots[stage]
        return Assignment(stage, ranks)

    def release(self, rank: int) -> None:
        """A rank reported back: it is idle again."""
        self.busy.pop(rank, None)

    def done(self, stage: str, ok: bool) -> None:
        """The leader of ``stage`` reported its result."""
        self.running.pop(stage, None)
        if ok:
            self.available.add(stage)
        else:
            self.failed.add(stage)

    # -- ranks that die (a worker whose process or node is lost; execute/ray_executor.py) ---------
    def lost(self, rank: int) -> str | None:
        """``rank`` died: the stage it ran goes back among the pending ones (in plan order) for
        another rank; ``rank`` takes no work and holds no model until ``back(rank)``."""
        stage = self.busy.pop(rank, None)
        self.down.add(rank)
        self.held.pop(rank, None)
        if stage is None or stage not in self.running:
            return None
        ranks = self.running.pop(stage)
        for r in ranks:
            if self.busy.get(r) == stage:
                self.busy.pop(r)
        again = set(self.pending) | {stage}
        self.pending = [s for s in self.order if s in again]
        return stage

    def back(self, rank: int) -> None:
        """A lost rank is serving again (restarted, with no model loaded)."""
        self.down.discard(rank)
