"""One render, start to end: plan, execute, publish. The CLI and tests call ``render``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..catalog.budget import MemoryRequest
from ..errors import RenderError, first_line
from ..plan.planner import Plan
from ..plan.reason import Reason
from .events import Event, EventBus, event_sinks
from .progress import make_progress
from .publish import DamagedOnPublish
from .runner import DryRunExecutor, Executor, LocalExecutor, Outcome
from .session import Session


@dataclass
class RenderResult:
    plan: Plan
    outcome: Outcome
    output_dir: Path
    manifest: dict[str, Any] | None

    @property
    def summary(self) -> str:
        return self.outcome.summary(skipped=self.plan.counts()["skip"])


def render(spec_path: str | Path, *, profile: str | None = None, only: list[str] | None = None,
           until: str | None = None, force: bool = False, keep_going: bool = False,
           dry_run: bool = False, reseed: bool = False, events: Path | None = None,
           device: str = "auto", dtype: str | None = None, budget: int | None = None,
           host_budget: int | None = None, progress: bool = True, sinks: list[Callable[[Event], None]] | None = None,
           executor: Executor | None = None, warn: Callable[[str], None] | None = None,
           offline: bool = False, allow_paths: list[str] | None = None,
           allow_hosts: list[str] | None = None, models: Any = None) -> RenderResult:
    """Plan, execute, publish. The render holds a lease on the cache from before it looks
    anything up until its outputs are written, so ``gc`` leaves what it uses alone.
    ``budget`` / ``host_budget``: the node's device and pinned-RAM budgets in bytes (None: the
    defaults of ``catalog/budget.py``). ``models``: a pool whose residency this render uses
    and leaves loaded for the next (``execute/batch.py``; None: models of this render only)."""
    started = time.time()
    session = Session.open(spec_path, profile=profile, warn=warn, allow_paths=allow_paths,
                           allow_hosts=allow_hosts)
    if dry_run:
        plan = session.plan(force=force, only=only, until=until, reseed=reseed, offline=offline,
                                   device=device, dtype=dtype)
        return _run(session, plan, started, executor or DryRunExecutor(), True, events, sinks,
                    progress, last=True)[0]
    session.cache.take_lease()
    try:
        # a local render makes an object found damaged while publishing again, in one more pass
        passes = 2 if executor is None else 1
        damaged: list[str] = []
        attempt = 1
        while True:
            with session.cache.guard():
                plan = session.plan(force=force, only=only, until=until, reseed=reseed, offline=offline,
                                   device=device, dtype=dtype)
            for nid in damaged:
                if plan.stages[nid].status == "run":
                    plan.stages[nid].reason = Reason(damaged=True)
            run_with = executor or LocalExecutor(device=device, dtype=dtype,
                                                 memory=MemoryRequest(budget, host_budget),
                                                 keep_going=keep_going, force=force, models=models)
            result, error = _run(session, plan, started, run_with, False, events, sinks, progress,
                                 last=attempt >= passes)
            if result is not None:
                return result
            damaged, attempt = error.stages, attempt + 1
    finally:
        session.cache.release_lease()


def _run(session: Session, plan: Plan, started: float, executor: Executor, dry_run: bool,
         events: Path | None, sinks: list[Callable[[Event], None]] | None, progress: bool,
         last: bool):
    """One pass: execute and publish. Returns (result, None), or (None, error) when an object
    turned out damaged while being published and another pass can make it again."""
    all_sinks, closers = event_sinks(events, sinks)
    if not dry_run:
        display = make_progress(len(plan.to_run()), enabled=progress)
        all_sinks.append(display)
        closers.append(display.close)
    bus = EventBus(all_sinks)
    bus.emit("render_started", detail={"project": plan.project, "spec": session.loaded.display,
                                       "stages": len(plan.order), "to_run": len(plan.to_run())})
    manifest = None
    if not dry_run and plan.seeds != {k: v for k, v in plan.lock.seeds.items() if k in plan.seeds}:
        keep_seeds(session, plan)
    try:
        outcome = executor.execute(plan, bus)
        if not outcome.dry_run:
            try:
                manifest = publish_outputs(session, plan, outcome, started)
            except DamagedOnPublish as exc:
                if last:
                    raise
                return None, exc
        bus.emit("render_finished", seconds=round(time.time() - started, 4),
                 detail={"summary": outcome.summary(), "model_loads": outcome.model_loads})
    finally:
        for close in closers:
            close()
    result = RenderResult(plan, outcome, session.output_dir, manifest)
    if outcome.failed:
        raise failed_error(result)
    return result, None


#: how much of each failure the closing line quotes (the report and the events keep it whole)
BRIEF_CHARS = 500


def failed_error(result: RenderResult) -> RenderError:
    """The error a render whose stages failed ends with (it carries the result)."""
    failed = result.outcome.failed
    names = ", ".join(f"{k} ({first_line(v, BRIEF_CHARS)})" for k, v in failed.items())
    err = RenderError(f"{len(failed)} stage(s) failed: {names}",
                      hint="fix the cause and render again: finished stages stay cached")
    err.result = result  # type: ignore[attr-defined]
    return err


def keep_seeds(session: Session, plan: Plan) -> None:
    """Write drawn seeds to the lock before anything runs, so an interrupted render resumes
    with the same seeds (and finds the stages it had finished in the cache)."""
    lock = plan.lock
    lock.project, lock.profile = plan.project, plan.registry.name
    lock.seeds = {**lock.seeds, **plan.seeds}
    lock.write(session.lock_path)


def publish_outputs(session: Session, plan: Plan, outcome: Outcome, started: float):
    from .publish import publish

    return publish(plan, outcome, session.output_dir, session.lock_path, started, warn=session.cache.warn)
