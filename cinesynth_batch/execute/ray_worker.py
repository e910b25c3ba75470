"""The body of one Ray worker actor: a long-lived process on one GPU (or a few CPUs) that runs
the stages the driver hands it, with the models of the stages before still loaded.

Plain Python: ``ray_executor.py`` turns it into an actor (``ray.remote``), so this module
imports no Ray. A task names the render (``job``) and the stage; the worker opens the spec once
per render (the driver already wrote the seeds to the lock, so its plan has the driver's keys)
and runs the stage with the torchrun worker's own code (``distributed.Worker.run``), which is
the local executor's ``run_one``: the same stage code, the same scratch folder and commit by
rename into the shared cache. What it reports is the torchrun worker's message, plus the
events it emitted and the model loads the stage cost.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..catalog.budget import MemoryRequest, Placement
from ..errors import CinesynthError, ModelError
from .distributed import Worker, outcome_to_message
from .events import Event, EventBus
from .runner import LocalExecutor, Outcome, _describe, rank_memory


@dataclasses.dataclass
class Job:
    """One render as every worker opens it (JSON-able: it travels with each task)."""

    id: str
    spec: str
    cache: str
    profile: str | None = None
    allow_paths: list[str] = dataclasses.field(default_factory=list)
    allow_hosts: list[str] = dataclasses.field(default_factory=list)
    dtype: str | None = None
    force: bool = False
    vram: int | None = None
    host: int | None = None
    placements: dict[int, list[int]] = dataclasses.field(default_factory=dict)   # rank -> Placement


class StageWorker:
    """One worker: its device, its models (kept from one render to the next while the renders
    use the same models) and the render it has open."""

    def __init__(self, rank: int, device: str):
        self.rank = rank
        self.device = device
        self.job_id: str | None = None
        self.plan: Any = None
        self.executor: LocalExecutor | None = None
        self.residency: Any = None

    def node(self) -> str:
        """The Ray node this worker runs on (a restarted worker may be elsewhere)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, job: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
        """Run one stage of ``job``: the torchrun worker's message, with ``events``, ``loads``
        and ``swaps`` (of this stage), or ``refused`` when a model is missing or too large."""
        events: list[Event] = []
        bus = EventBus([events.append], rank=self.rank)
        try:
            plan, executor = self._open(Job(**job))
        except ModelError as exc:
            return {"refused": {"message": exc.message, "hint": exc.hint}, "events": []}
        except (CinesynthError, OSError) as exc:   # e.g. the spec changed or went away meanwhile
            bus.emit("stage_failed", stage=task["stage"], detail={"error": _describe(exc)})
            return {**outcome_to_message(Outcome(failed={task["stage"]: _describe(exc)}), set()),
                    "events": [dataclasses.asdict(e) for e in events]}
        before = (dict(self.residency.loads), dict(self.residency.swaps))
        worker = Worker(self.rank, executor, plan, bus, _residency={1: self.residency})
        try:
            msg = worker.run(task)
        except Exception as exc:  # reported as this stage's failure, the render goes on
            msg = outcome_to_message(Outcome(failed={task["stage"]: _describe(exc)}), set())
            node = plan.graph[task["stage"]]
            bus.emit("stage_failed", stage=node.id, kind=node.kind, scene=node.scene,
                     detail={"error": _describe(exc)})
        msg["loads"] = _delta(self.residency.loads, before[0])
        msg["swaps"] = _delta(self.residency.swaps, before[1])
        msg["events"] = [dataclasses.asdict(e) for e in events]
        return msg

    def memory(self) -> dict[str, Any]:
        """This worker's entry of the manifest's memory table."""
        return rank_memory(self.rank, self.device, [self.residency] if self.residency else [])

    def _open(self, job: Job):
        if job.id == self.job_id:
            return self.plan, self.executor
        from .batch import same_models
        from .session import Session

        session = Session.open(job.spec, profile=job.profile, allow_paths=job.allow_paths or None,
                               allow_hosts=job.allow_hosts or None, cache_root=Path(job.cache))
        plan = session.plan(device=self.device, dtype=job.dtype)   # the driver's seeds are in the lock
        where = job.placements.get(self.rank) or [0, 1, 1]     # not placed yet: alone on its node
        executor = LocalExecutor(device=self.device, dtype=job.dtype,
                                 memory=MemoryRequest(job.vram, job.host),
                                 placement=Placement(self.rank, *where), force=job.force)
        executor.preflight(plan)
        if self.residency is not None and not same_models(self.residency.registry, plan.registry):
            self.residency.clear()
            self.residency = None
        if self.residency is None:
            self.residency = executor.make_residency(plan)
        self.job_id, self.plan, self.executor = job.id, plan, executor
        return plan, executor


def _delta(counts: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in counts.items() if v - before.get(k, 0)}

