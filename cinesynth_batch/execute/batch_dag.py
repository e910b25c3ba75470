"""The specs of a batch run as one DAG (``plan/batch.py``) in this process, with one model
residency for the whole batch.

Every spec is planned, its drawn seeds kept and its cached stages checked exactly as a render of
it alone would; then the merged DAG runs through the shared scheduling core (``schedule.py``,
one rank): stages whose model is loaded first, longest expected first. A stage shared by key runs
once, for the first of its specs still rendering; the others take its artifact from the cache
(``made by another spec of the batch``). A failure stays inside its spec: without
``--keep-going`` that spec starts nothing more (as a render of it alone would stop), with it the
spec's stages below the failure are blocked; the other specs go on. At the end each spec
publishes its outputs, ``render.lock``, manifest and report as ``render`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..catalog.budget import MemoryRequest
from ..errors import CinesynthError
from ..plan.batch import BatchGraph, merge_plans
from ..plan.cost import History, plan_costs
from ..plan.planner import Plan
from .events import Event, EventBus, event_sinks
from .progress import make_progress
from .publish import DamagedOnPublish
from .runner import LocalExecutor, Outcome, _describe, _lock_entry, rank_memory, recheck_cached
from .schedule import Schedule
from .session import Session

SHARED = "made by another spec of the batch"


@dataclass
class SpecRun:
    """One spec's part of the batch."""

    index: int
    spec: Path
    session: Session
    plan: Plan
    started: float
    out: Outcome = field(default_factory=Outcome)
    known: dict[str, str] = field(default_factory=dict)
    bus: EventBus | None = None
    stopped: bool = False
    error: str | None = None            # a failure before any stage ran (missing model...)


@dataclass
class Finished:
    """How one spec ended: a result (maybe with failed stages), or an error before it ran."""

    spec: Path
    result: Any = None                  # render.RenderResult
    error: CinesynthError | OSError | None = None


def render_dag(specs: list[Path], pool: Any, *, profile: str | None, allow_paths: list[str] | None,
               allow_hosts: list[str] | None, warn: Callable[[str], None] | None,
               only: list[str] | None = None, until: str | None = None, force: bool = False,
               keep_going: bool = False, reseed: bool = False, events: Path | None = None,
               device: str = "auto", dtype: str | None = None, budget: int | None = None,
               host_budget: int | None = None, progress: bool = True, offline: bool = False,
               sinks: list[Callable[[Event], None]] | None = None) -> list[Finished]:
    """Render ``specs`` (valid ones, in batch order) as one DAG. ``pool``: the batch's
    ``ModelPool``. Returns one ``Finished`` per spec, in order."""
    from .render import keep_seeds

    finished: dict[int, Finished] = {}
    runs: list[SpecRun] = []
    sessions: list[Session] = []
    all_sinks, closers = event_sinks(events, sinks)
    try:
        for i, spec in enumerate(specs):
            try:
                session = Session.open(spec, profile=profile, warn=warn, allow_paths=allow_paths,
                                       allow_hosts=allow_hosts)
                sessions.append(session)
                session.cache.take_lease()
                with session.cache.guard():
                    plan = session.plan(force=force, only=only, until=until, reseed=reseed,
                                        offline=offline, device=device, dtype=dtype)
                if plan.seeds != {k: v for k, v in plan.lock.seeds.items() if k in plan.seeds}:
                    keep_seeds(session, plan)
            except (CinesynthError, OSError) as exc:
                finished[i] = Finished(spec, error=exc)
                continue
            runs.append(SpecRun(i, spec, session, plan, time.time()))
        executor = LocalExecutor(device=device, dtype=dtype, memory=MemoryRequest(budget, host_budget),
                                 keep_going=keep_going, force=force, models=pool)
        display = make_progress(sum(len(r.plan.to_run()) for r in runs), enabled=progress)
        closers.append(display.close)
        found: dict[str, Any] = {}          # the fast paths, surveyed once for the batch
        for run in runs:
            run.bus = EventBus(all_sinks + [display])
            run.bus.emit("render_started", detail={"project": run.plan.project,
                                                   "spec": run.session.loaded.display,
                                                   "stages": len(run.plan.order),
                                                   "to_run": len(run.plan.to_run())})
            _prepare(run, executor, found)
        live = [r for r in runs if r.error is None]
        DagRun(live, executor, pool, keep_going).run()
        for run in runs:
            finished[run.index] = _finish(run, pool, executor, warn, dict(
                profile=profile, allow_paths=allow_paths, allow_hosts=allow_hosts, only=only,
                until=until, keep_going=keep_going, reseed=reseed, device=device, dtype=dtype,
                budget=budget, host_budget=host_budget, offline=offline, progress=False))
    finally:
        for close in closers:
            close()
        for session in sessions:
            session.cache.release_lease()
    return [finished[i] for i in range(len(specs))]


def _prepare(run: SpecRun, executor: LocalExecutor, found: dict[str, Any]) -> None:
    """What ``LocalExecutor.execute`` does before running anything: stale scratch cleaned,
    cached objects checked, models checked, the fast paths announced (once for the batch:
    ``found``, filled by the first spec that runs a model; every such spec records them); the
    cached stages counted."""
    plan, out = run.plan, run.out
    plan.cache.clean_stale_tmp()
    recheck_cached(plan)
    if plan.to_run():
        try:
            executor.preflight(plan)
        except CinesynthError as exc:
            run.error = exc
            return
        if any(st.node.model_role for st in plan.to_run()):
            if not found:
                found.update(executor.announce_fast_paths(plan, run.bus))
            out.fast_paths = dict(found)
    for nid in plan.order:
        st = plan.stages[nid]
        if st.status == "cached" and st.entry is not None:
            run.known[nid] = st.entry.digest
            out.entries[nid] = st.entry
            out.cached.append(nid)
            out.lock[nid] = _lock_entry(st, st.key, st.inputs, st.entry)
            run.bus.emit("stage_cached", stage=nid, kind=st.node.kind, scene=st.node.scene, key=st.key)


class DagRun:
    """The merged DAG, run on one rank through the scheduling core."""

    def __init__(self, runs: list[SpecRun], executor: LocalExecutor, pool: Any, keep_going: bool):
        self.runs, self.executor, self.pool, self.keep_going = runs, executor, pool, keep_going
        self.graph: BatchGraph = merge_plans([r.plan for r in runs])
        history = History.from_folders(r.plan.loaded.output_dir for r in runs)
        costs: dict[str, float] = {}
        for k, run in enumerate(runs):
            for sid, est in plan_costs(run.plan, history).items():
                costs.setdefault(self.graph.owner[(k, sid)], est.seconds)
        self.costs = costs
        self.schedule = Schedule(order=self.graph.order, upstream=self.graph.upstream, available=set(),
                                 world=1, slots=self.graph.slots(), keep_going=True,
                                 cost=costs.__getitem__)

    def run(self) -> None:
        sched = self.schedule
        while True:
            for nid, because in sched.block():
                self._blocked(nid, because)
            assigned = sched.assign()
            if not assigned:
                return
            for a in assigned:
                ok = self._run_node(a.stage)
                sched.release(a.leader)
                sched.done(a.stage, ok)
            self._withdraw_stopped()

    def _run_node(self, nid: str) -> bool:
        node = self.graph.nodes[nid]
        members = [(self.runs[k], sid) for k, sid in node.members if not self.runs[k].stopped]
        if not members:
            return False
        first, sid = members[0]
        self._run_member(first, sid)
        ok = sid not in first.out.failed and sid not in first.out.blocked
        for run, other in members[1:]:
            if ok:
                self._share(first, sid, run, other)
            else:
                st = run.plan.stages[other]
                message = first.out.failed.get(sid, "an upstream stage failed")
                run.out.failed[other] = message
                run.bus.emit("stage_failed", stage=other, kind=st.node.kind, scene=st.node.scene,
                             key=st.key, detail={"error": message})
        for run, other in members:
            if other in run.out.failed and not self.keep_going:
                run.stopped = True
        return ok

    def _run_member(self, run: SpecRun, sid: str) -> None:
        residency = self.pool.residency(self.executor, run.plan)
        loads, swaps = dict(residency.loads), dict(getattr(residency, "swaps", {}))
        try:
            self.executor.run_one(run.plan, run.plan.stages[sid], run.known, run.out, run.bus, residency)
        except (CinesynthError, OSError) as exc:
            run.out.failed[sid] = _describe(exc)
        _add(run.out.model_loads, residency.loads, loads)
        _add(run.out.model_swaps, getattr(residency, "swaps", {}), swaps)

    def _share(self, first: SpecRun, sid: str, run: SpecRun, other: str) -> None:
        """Count a stage another spec of the batch just made (or found) as cached."""
        st = run.plan.stages[other]
        key = first.out.lock[sid].key
        if not self.executor._adopt(run.plan, st, key, st.inputs, run.known, run.out, run.bus, SHARED):
            self._run_member(run, other)     # not in this spec's cache after all: make it here

    def _blocked(self, nid: str, because: list[str]) -> None:
        for k, sid in self.graph.nodes[nid].members:
            run = self.runs[k]
            if run.stopped:
                continue
            st = run.plan.stages[sid]
            run.out.blocked.append(sid)
            up = [u for u in run.plan.graph[sid].upstream() if self.graph.owner.get((k, u)) in because]
            run.bus.emit("stage_blocked", stage=sid, kind=st.node.kind, scene=st.node.scene,
                         detail={"because": sorted(set(up))})

    def _withdraw_stopped(self) -> None:
        gone = {n for n in self.schedule.pending
                if all(self.runs[k].stopped for k, _ in self.graph.nodes[n].members)}
        if gone:
            self.schedule.withdraw(gone)


def _add(total: dict[str, int], now: dict[str, int], before: dict[str, int]) -> None:
    for k, v in now.items():
        if v - before.get(k, 0):
            total[k] = total.get(k, 0) + v - before.get(k, 0)


def _finish(run: SpecRun, pool: Any, executor: LocalExecutor, warn, options: dict[str, Any]) -> Finished:
    """Publish one spec's outputs, lock, manifest and report. An object found damaged while
    publishing is made again by a render of that spec alone (as ``render``'s second pass)."""
    from .render import RenderResult, failed_error, publish_outputs, render

    if run.error is not None:
        return Finished(run.spec, error=run.error)
    if pool.current is not None:
        run.out.memory = [rank_memory(0, executor.device, [pool.current])]
    try:
        manifest = publish_outputs(run.session, run.plan, run.out, run.started)
    except DamagedOnPublish:
        try:
            return Finished(run.spec, result=render(run.spec, warn=warn, models=pool, **options))
        except (CinesynthError, OSError) as exc:
            return Finished(run.spec, result=getattr(exc, "result", None), error=exc)
    except (CinesynthError, OSError) as exc:
        return Finished(run.spec, error=exc)
    run.bus.emit("render_finished", seconds=round(time.time() - run.started, 4),
                 detail={"summary": run.out.summary(), "model_loads": run.out.model_loads})
    result = RenderResult(run.plan, run.out, run.session.output_dir, manifest)
    if run.out.failed:
        return Finished(run.spec, result=result, error=failed_error(result))
    return Finished(run.spec, result=result)
