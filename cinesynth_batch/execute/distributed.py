"""A render spread over the ranks of one node, started by torchrun.

Rank 0 plans (the ordinary planner), writes the drawn seeds to the lock, and coordinates from
a thread: it hands ready stages to idle ranks (``schedule.py``) and collects what they report.
Every rank, rank 0 included, serves tasks in its main thread with the local executor's own
``run_one``: the same stage code, its own model residency, the shared content-addressed cache.
Rank 0 alone writes the lock, manifest and report, from the reports, exactly as a
single-process render would.

Messages go through torchrun's TCP key-value store (``task/<rank>/<n>``, ``done/<rank>/<n>``),
so the process group (gloo on CPU, NCCL on GPUs) is left to sequence-parallel collectives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from ..cache.store import Entry
from ..catalog.budget import MemoryRequest, Placement
from ..errors import CinesynthError
from ..plan.cost import plan_costs
from ..plan.planner import Plan
from ..plan.reason import Reason
from .events import Event, EventBus, event_sinks
from .parallel import (Options, SplitFacts, Topology, split_facts, stage_degrees,
                       topology_from_env)
from .progress import RankProgress
from .runner import (
    Executor, LocalExecutor, Outcome, _describe, _lock_entry, rank_memory, recheck_cached, record_cached,
)
from .schedule import Schedule

POLL = 0.01            # seconds between the coordinator's looks at the store


def in_torchrun() -> bool:
    """Whether this process is one rank of a torchrun launch."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


# -- the message channel ---------------------------------------------------------------------

class Channel:
    """JSON messages over torchrun's TCP store; one client per thread."""

    def __init__(self, prefix: str | None = None):
        from torch.distributed import TCPStore

        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = prefix or f"cinesynth/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{attempt}/"
        self.store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              is_master=False, timeout=timedelta(minutes=5))

    def put(self, key: str, value: Any) -> None:
        self.store.set(self.prefix + key, json.dumps(value))

    def has(self, key: str) -> bool:
        return bool(self.store.check([self.prefix + key]))

    def take(self, key: str) -> Any:
        return json.loads(self.store.get(self.prefix + key))

    def wait(self, key: str) -> Any:
        """Block until ``key`` is set (a stage on another rank may take hours)."""
        pause = POLL
        while not self.has(key):
            time.sleep(pause)
            pause = min(pause * 1.5, 0.1)
        return self.take(key)


# -- serialising results -----------------------------------------------------------------------

def _entry(data: dict[str, Any]) -> Entry:
    return Entry(**data)


def outcome_to_message(out: Outcome, stages: set[str]) -> dict[str, Any]:
    return {
        "ran": list(out.ran), "cached": list(out.cached), "failed": dict(out.failed),
        "blocked": list(out.blocked), "seconds": dict(out.seconds), "meta": dict(out.meta),
        "spans": dict(out.spans),
        "entries": {k: dataclasses.asdict(v) for k, v in out.entries.items() if k in stages},
        "lock": {k: v.to_dict() for k, v in out.lock.items()},
    }


def merge_message(total: Outcome, msg: dict[str, Any], plan: Plan) -> None:
    """Add one task's report to the render's outcome (a re-made damaged input moves from
    cached to ran, as in a local render). Lock entries are rebuilt from rank 0's plan, so
    the lock is written from the very objects a single-process render writes it from."""
    for nid in msg["ran"]:
        if nid in total.cached:
            total.cached.remove(nid)
        if nid not in total.ran:
            total.ran.append(nid)
    for nid in msg["cached"]:
        if nid not in total.cached and nid not in total.ran:
            total.cached.append(nid)
    total.failed.update(msg["failed"])
    total.blocked.extend(b for b in msg["blocked"] if b not in total.blocked)
    total.seconds.update(msg["seconds"])
    total.spans.update(msg.get("spans", {}))
    total.meta.update(msg["meta"])
    total.entries.update({k: _entry(v) for k, v in msg["entries"].items()})
    for k, v in msg["lock"].items():
        entry = total.entries[k]
        total.lock[k] = _lock_entry(plan.stages[k], v["key"], v["inputs"], entry)


# -- the coordinator (rank 0, a thread) ----------------------------------------------------------

class Coordinator:
    def __init__(self, plan: Plan, schedule: Schedule, out: Outcome, emit: Callable[..., Any],
                 channel: Channel):
        self.plan, self.schedule, self.out, self.emit = plan, schedule, out, emit
        self.channel = channel          # used by the coordinator thread only
        self.sent = {r: 0 for r in range(schedule.world)}     # tasks sent per rank
        self.got = {r: 0 for r in range(schedule.world)}      # reports received per rank
        self.loads: dict[int, dict[str, int]] = {}
        self.swaps: dict[int, dict[str, int]] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="cinesynth-coordinator", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            self._loop(self.channel)
        except BaseException as exc:  # reported by join() in the main thread
            self.error = exc
        finally:
            for r in range(self.schedule.world):
                self.channel.put(f"task/{r}/{self.sent[r]}", {"stop": True})

    def _loop(self, ch: Channel) -> None:
        sched = self.schedule
        while True:
            for stage, because in sched.block():
                node = self.plan.graph[stage]
                self.out.blocked.append(stage)
                self.emit("stage_blocked", stage=stage, kind=node.kind, scene=node.scene,
                          detail={"because": because})
            for a in sched.assign():
                for r in a.ranks:
                    self._send(ch, r, a.stage, a.ranks)
            if sched.finished():
                return
            if not self._collect(ch):
                time.sleep(POLL)

    def _send(self, ch: Channel, rank: int, stage: str, ranks: tuple[int, ...]) -> None:
        st = self.plan.stages[stage]
        ups = set(st.node.upstream())
        task = {"stage": stage, "ranks": list(ranks), "reason": dataclasses.asdict(st.reason),
                "entries": {u: dataclasses.asdict(self.out.entries[u]) for u in ups}}
        ch.put(f"task/{rank}/{self.sent[rank]}", task)
        self.sent[rank] += 1

    def _collect(self, ch: Channel) -> bool:
        got_any = False
        for rank, stage in list(self.schedule.busy.items()):
            key = f"done/{rank}/{self.got[rank]}"
            if not ch.has(key):
                continue
            msg = ch.take(key)
            self.got[rank] += 1
            got_any = True
            self.loads[rank] = msg.get("loads", {})
            self.swaps[rank] = msg.get("swaps", {})
            self.schedule.release(rank)
            if msg.get("follower"):
                continue
            merge_message(self.out, msg, self.plan)
            self.schedule.done(stage, ok=stage not in msg["failed"] and stage not in msg["blocked"])
        return got_any

    def model_loads(self) -> dict[str, int]:
        return _sum_counts(self.loads)

    def model_swaps(self) -> dict[str, int]:
        return _sum_counts(self.swaps)


def _sum_counts(per_rank: dict[int, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in per_rank.values():
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return total


# -- a rank's worker loop (every rank, main thread) ----------------------------------------------

@dataclasses.dataclass
class Worker:
    rank: int
    executor: LocalExecutor
    plan: Plan
    bus: EventBus
    meshes: dict[int, Any] = dataclasses.field(default_factory=dict)   # degree -> device mesh
    _residency: dict[int, Any] = dataclasses.field(default_factory=dict)

    def serve(self, channel: Channel) -> None:
        n = 0
        while True:
            task = channel.wait(f"task/{self.rank}/{n}")
            if task.get("stop"):
                break
            try:
                msg = self.run(task)
            except Exception as exc:  # reported as this stage's failure, the render goes on
                msg = outcome_to_message(Outcome(failed={task["stage"]: _describe(exc)}), set())
                node = self.plan.graph[task["stage"]]
                self.bus.emit("stage_failed", stage=node.id, kind=node.kind, scene=node.scene,
                              detail={"error": _describe(exc)})
            msg["loads"], msg["swaps"] = self.counts("loads"), self.counts("swaps")
            channel.put(f"done/{self.rank}/{n}", msg)
            n += 1
        channel.put(f"memory/{self.rank}", self.memory())
        for residency in self._residency.values():
            residency.clear()

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        st = self.plan.stages[task["stage"]]
        st.reason = Reason(**task["reason"])
        out = Outcome()
        known: dict[str, str] = {}
        for nid, data in task["entries"].items():
            out.entries[nid] = _entry(data)
            known[nid] = out.entries[nid].digest
        ranks = task["ranks"]
        residency = self.residency(len(ranks))
        if len(ranks) > 1 and ranks[0] != self.rank:
            self._follow(st, out, residency)
            return {"follower": True}
        self.executor.run_one(self.plan, st, known, out, self.bus, residency)
        if len(ranks) > 1 and task["stage"] in out.spans:      # its time counts on every rank
            out.spans[task["stage"]]["ranks"] = list(ranks)
        return outcome_to_message(out, {task["stage"], *out.ran, *out.cached})

    def _follow(self, st, out: Outcome, residency: Any) -> None:
        """A non-leading member of a split stage computes its share; the leader commits."""
        scratch = self.plan.cache.scratch()
        try:
            self.executor.run_module(self.plan, st, out, EventBus([], rank=self.rank), residency, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def residency(self, degree: int) -> Any:
        """This rank's models for whole stages (degree 1) or for stages split ``degree`` ways;
        switching between them frees the other's models."""
        if degree not in self._residency:
            loader = None
            if degree > 1:
                from ..catalog.loaders import split_loader

                loader = split_loader(self.meshes[degree], degree)
            self._residency[degree] = self.executor.make_residency(self.plan, loader=loader)
        for d, other in self._residency.items():
            if d != degree:
                other.clear()
        return self._residency[degree]

    def memory(self) -> dict[str, Any]:
        """This rank's entry of the manifest's memory table (``runner.rank_memory``)."""
        return rank_memory(self.rank, self.executor.device, list(self._residency.values()))

    def counts(self, counter: str = "loads") -> dict[str, int]:
        """Model loads (or swaps) of this rank per model; a split model is named ``role@spN``."""
        total: dict[str, int] = {}
        for degree, residency in self._residency.items():
            for k, v in getattr(residency, counter, {}).items():
                name = k if degree == 1 else f"{k}@sp{degree}"
                total[name] = total.get(name, 0) + v
        return total


# -- the executor on rank 0 ----------------------------------------------------------------------

class _Serialized:
    """Sinks shared by the coordinator thread and rank 0's worker, one event at a time."""

    def __init__(self, sinks: list[Callable[[Event], None]]):
        self.sinks = sinks
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            for sink in self.sinks:
                sink(event)


@dataclasses.dataclass
class DistributedExecutor(Executor):
    """Rank 0's executor: plans the spread, coordinates, and serves its own share of tasks."""

    rank_setup: "RankSetup"
    options: Options = dataclasses.field(default_factory=Options)
    keep_going: bool = False
    force: bool = False
    progress: bool = True

    def execute(self, plan: Plan, bus: EventBus) -> Outcome:
        setup = self.rank_setup
        out = Outcome()
        plan.cache.clean_stale_tmp()
        recheck_cached(plan)
        executor = setup.local_executor(force=self.force, keep_going=self.keep_going)
        to_run = plan.to_run()
        degrees = {}
        if to_run:
            executor.preflight(plan)
            degrees = plan_degrees(plan, self.options, setup.topology)
        setup.announce({"degrees": sorted({d for d in degrees.values() if d > 1})})
        shown = [RankProgress(0)] if self.progress else []
        shared = EventBus([_Serialized(bus.sinks + shown)], rank=0)
        record_cached(plan, out, shared)
        costs = plan_costs(plan) if to_run else {}
        schedule = Schedule(order=[s.id for s in to_run],
                            upstream={n: list(plan.graph[n].upstream()) for n in plan.order},
                            available=set(out.entries), world=setup.topology.world, degrees=degrees,
                            slots={s.id: _slot(s) for s in to_run}, keep_going=self.keep_going,
                            cost=lambda stage: costs[stage].seconds)
        coordinator = Coordinator(plan, schedule, out, shared.emit, Channel())
        coordinator.start()
        worker = Worker(0, executor, plan, shared, setup.meshes(degrees.values()))
        try:
            worker.serve(setup.channel)
        finally:
            coordinator.join()
        out.model_loads = coordinator.model_loads()
        out.model_swaps = coordinator.model_swaps()
        out.memory = [setup.channel.wait(f"memory/{r}") for r in range(setup.topology.world)]
        return out


def _slot(st) -> str | None:
    role = st.node.model_role
    if role is None:
        return None
    return role if st.node.model_name is None else f"{role}:{st.node.model_name}"


def plan_degrees(plan: Plan, options: Options, topo: Topology) -> dict[str, int]:
    """Ranks per stage for this plan (raises ParallelError naming a stage that cannot split)."""
    def facts(stage_id: str) -> SplitFacts:
        st = plan.stages[stage_id]
        try:
            folder = plan.registry.local_path(st.node.model_role, st.node.model_name) \
                if st.node.model_role else None
        except CinesynthError:
            folder = None
        return split_facts(st.node.kind, st.params, Path(folder) if isinstance(folder, Path) else None)

    return stage_degrees(((s.id, s.node.kind, s.node.parallel) for s in plan.to_run()),
                         options, topo, facts)


# -- one rank of a torchrun launch ---------------------------------------------------------------

@dataclasses.dataclass
class RankSetup:
    """This process's place in the launch: rank, topology, process group, channel."""

    rank: int
    local_rank: int
    topology: Topology
    device: str
    dtype: str | None
    memory: MemoryRequest
    placement: Placement
    channel: Channel
    _meshes: dict[int, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def start(cls, device: str, dtype: str | None, memory: MemoryRequest) -> "RankSetup":
        import torch
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        own_gpu = device == "cuda"      # each rank on its own GPU; otherwise they share one device
        if own_gpu:
            device = f"cuda:{local_rank}"
        placement = Placement(rank, local_rank, local_ranks, 1 if own_gpu else local_ranks)
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        topo = topology_from_env(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if topo.gpus else "gloo")
        return cls(rank, local_rank, topo, device, dtype, memory, placement, Channel())

    def local_executor(self, force: bool = False, keep_going: bool = False) -> LocalExecutor:
        return LocalExecutor(device=self.device, dtype=self.dtype, memory=self.memory,
                             placement=self.placement, keep_going=keep_going, force=force)

    def announce(self, message: dict[str, Any]) -> None:
        self.channel.put("plan", message)

    def meshes(self, degrees) -> dict[int, Any]:
        """One device mesh per split degree; every rank builds them, in the same order."""
        for d in sorted({d for d in degrees if d > 1}):
            if d not in self._meshes:
                from torch.distributed.device_mesh import init_device_mesh

                mesh = init_device_mesh("cuda" if self.topology.gpus else "cpu",
                                        (self.topology.world // d, 1, d),
                                        mesh_dim_names=("group", "ring", "ulysses"))
                self._meshes[d] = mesh["ring", "ulysses"]
        return self._meshes

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def serve_rank(spec: str | Path, *, profile: str | None, force: bool, events: Path | None,
               setup: RankSetup, progress: bool = True, warn=None, allow_paths: list[str] | None = None,
               allow_hosts: list[str] | None = None) -> None:
    """A rank other than 0: wait for rank 0's plan, then run the stages it hands out."""
    from .session import Session

    announced = setup.channel.wait("plan")
    if announced.get("abort"):
        return
    session = Session.open(spec, profile=profile, warn=warn, allow_paths=allow_paths,
                           allow_hosts=allow_hosts)
    plan = session.plan(device=setup.device, dtype=setup.dtype)   # rank 0's seeds are in the lock
    sinks, closers = event_sinks(events)
    if progress:
        sinks.append(RankProgress(setup.rank))
    bus = EventBus(sinks, rank=setup.rank)
    executor = setup.local_executor(force=force)
    worker = Worker(setup.rank, executor, plan, bus, setup.meshes(announced.get("degrees", [])))
    try:
        worker.serve(setup.channel)
    finally:
        for close in closers:
            close()


def run_rank(spec: str | Path, *, options: Options, profile: str | None = None,
             only: list[str] | None = None, until: str | None = None, force: bool = False,
             keep_going: bool = False, dry_run: bool = False, reseed: bool = False,
             events: Path | None = None, device: str = "auto", dtype: str | None = None,
             budget: int | None = None, host_budget: int | None = None, progress: bool = True, warn=None,
             offline: bool = False, allow_paths: list[str] | None = None, allow_hosts: list[str] | None = None):
    """This process's part of a torchrun launch: rank 0 renders (and returns the result),
    the other ranks serve tasks (and return None)."""
    from .render import render

    setup = RankSetup.start(device, dtype, MemoryRequest(budget, host_budget))
    try:
        if setup.rank != 0:
            serve_rank(spec, profile=profile, force=force, events=events, setup=setup,
                       progress=progress, warn=warn, allow_paths=allow_paths, allow_hosts=allow_hosts)
            return None
        try:
            return render(spec, profile=profile, only=only, until=until, force=force,
                          keep_going=keep_going, dry_run=dry_run, reseed=reseed, events=events,
                          progress=False, warn=warn, offline=offline, allow_paths=allow_paths,
                          allow_hosts=allow_hosts, executor=None if dry_run else DistributedExecutor(
                              setup, options=options, keep_going=keep_going, force=force,
                              progress=progress))
        finally:
            if not setup.channel.has("plan"):
                setup.announce({"abort": True})
    finally:
        setup.close()
