"""A render spread over a Ray cluster (``cinesynth render SPEC --executor ray``).

The driver (this process) plans and writes the lock's seeds exactly as a local render does
(``render.py``), then executes the plan on long-lived worker actors (``ray_worker.py``): one per
GPU of the cluster, or one per ``worker_cpus`` CPUs where it has no GPU. Ray places the actors
on nodes by those resources; the torchrun executor's scheduling core (``schedule.py``) picks,
for each ready stage, the actor already holding its model, and the stage runs as a method call
on that actor. An actor keeps its models loaded from one stage (and one render of a batch) to
the next.

A worker that dies (its process, or its node) fails its call; its stage goes back to the queue
and runs on another actor, while Ray restarts the lost actor (``max_restarts``) wherever the
cluster has room, and it rejoins empty-handed. A stage's artifact enters the cache only by the
rename that ends a finished stage (``CacheStore.commit``), so a killed stage leaves nothing
there; the driver hashes every artifact a worker reports against its digest before taking it.
Each stage's span (when it started and ended) comes back with its report and goes into the
manifest in its worker's lane (``worker N``, with its node), for the report's timeline.

Every node must see the spec, its assets and the cache folder at the same paths (a shared
filesystem), and have this package and its models installed.

Ray is imported here only, when a render uses it: the rest of the package imports without it.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import CinesynthError, ModelError, RenderError
from ..plan.planner import Plan
from .distributed import _slot, merge_message
from .events import Event, EventBus
from .runner import Executor, Outcome, recheck_cached, record_cached
from .schedule import Schedule

PING = 1.0          # seconds between looks at a lost worker (is it back?)
REACH = 5.0         # seconds a named Ray head has to take a connection
MEMORY_WAIT = 10.0  # seconds to wait for each worker's memory report at the end
SKEW = 1.0          # seconds a worker's clock may differ from the driver's before its spans move


def import_ray():
    """Ray, or an error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise CinesynthError(f"--executor ray needs Ray ({exc})",
                             hint="install the ray extra: pip install -e '.[ray]' (Ray 2.60)") from exc
    return ray


def unreachable(address: str, timeout: float = REACH) -> str | None:
    """Why the Ray head at ``address`` (``HOST:PORT``, ``HOST``, ``ray://HOST[:PORT]``) takes no
    connection, or None. ``ray.init`` retries an address that answers nothing for minutes; an
    unknown host or a closed port is said at once."""
    scheme, _, rest = address.rpartition("://")
    host, colon, port = rest.rpartition(":")
    if not colon or "]" in port:                                  # no port given (or a bare IPv6 address)
        host, port = rest, "10001" if scheme == "ray" else "6379"
    if not port.isdigit():
        return f"'{port}' is not a port"
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port} takes no connection ({exc.strerror or exc})"


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """``address``: ``auto`` (the cluster this machine belongs to, see ``ray start``),
    ``HOST:PORT`` (its head node) or ``local`` (a Ray instance of this process's own).
    ``worker_cpus``: CPUs per worker on a cluster without GPUs; ``workers``: at most this many."""

    address: str = "auto"
    worker_cpus: float = 1.0
    workers: int | None = None
    max_restarts: int = 3


@dataclasses.dataclass
class RayExecutor(Executor):
    """The driver's executor. Start once, execute one plan or several (a batch), ``close``."""

    options: RayOptions = dataclasses.field(default_factory=RayOptions)
    device: str = "auto"             # auto: cuda where the cluster has GPUs, else cpu
    dtype: str | None = None
    vram: int | None = None          # --vram-budget / --host-budget, for each worker's node
    host: int | None = None
    keep_going: bool = False
    force: bool = False
    profile: str | None = None
    allow_paths: list[str] | None = None
    allow_hosts: list[str] | None = None

    actors: list[Any] = dataclasses.field(default_factory=list, init=False)
    nodes: dict[int, str] = dataclasses.field(default_factory=dict, init=False)
    _connected: bool = dataclasses.field(default=False, init=False)

    # -- the cluster ---------------------------------------------------------------------------
    def connect(self) -> str:
        """Join the cluster; returns the device the workers render on (``cuda`` or ``cpu``)."""
        ray = import_ray()
        if not ray.is_initialized():
            address = None if self.options.address == "local" else self.options.address
            problem = unreachable(address) if address not in (None, "auto") else None
            if problem:
                raise CinesynthError(f"no Ray cluster at '{address}': {problem}",
                                     hint="check the head's address and port (`ray status` on the head "
                                          "prints it), or pass --ray-address auto on a node of the cluster")
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level="warning")
            except ConnectionError as exc:
                raise CinesynthError(f"no Ray cluster at '{self.options.address}' ({exc})",
                                     hint="start one with `ray start --head` (and `ray start --address "
                                          "HEAD:6379` on the other nodes), or pass --ray-address "
                                          "HOST:PORT") from exc
            self._connected = True
        gpus = ray.cluster_resources().get("GPU", 0)
        if self.device == "auto":
            self.device = "cuda" if gpus >= 1 else "cpu"
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def capacity(self) -> int:
        """How many workers the cluster holds: its GPUs, or its CPUs by ``worker_cpus``."""
        ray = import_ray()
        res = ray.cluster_resources()
        n = int(res.get("GPU", 0)) if self.device.startswith("cuda") else \
            int(res.get("CPU", 0) // self.options.worker_cpus)
        if self.options.workers is not None:
            n = min(n, self.options.workers)
        if n < 1:
            raise CinesynthError(f"the Ray cluster has no room for a worker on {self.device} "
                                 f"(resources: {res})",
                                 hint="add nodes, or lower --ray-worker-cpus")
        return n

    def ensure_workers(self, wanted: int) -> None:
        """Start actors until there are ``wanted`` (at most the cluster's capacity). They are not
        waited for: Ray places each when the cluster has room, and it serves from then on."""
        ray = import_ray()
        from .ray_worker import StageWorker

        cuda = self.device.startswith("cuda")
        cls = ray.remote(StageWorker).options(
            num_gpus=1 if cuda else 0, num_cpus=self.options.worker_cpus,
            max_restarts=self.options.max_restarts, max_task_retries=0)
        for rank in range(len(self.actors), min(wanted, self.capacity())):
            self.actors.append(cls.remote(rank, "cuda" if cuda else "cpu"))

    def placements(self) -> dict[int, list[int]]:
        """Each worker's place on its node (``Placement`` without the rank): its index among the
        node's workers, their number, and how many share its device (all of them on the CPU)."""
        by_node: dict[str, list[int]] = {}
        for rank, node in sorted(self.nodes.items()):
            by_node.setdefault(node, []).append(rank)
        out = {}
        for ranks in by_node.values():
            for i, rank in enumerate(ranks):
                out[rank] = [i, len(ranks), 1 if self.device.startswith("cuda") else len(ranks)]
        return out

    def close(self) -> None:
        """Let the workers go (and leave the cluster if this executor joined it)."""
        if not self.actors and not self._connected:
            return
        ray = import_ray()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors.clear()
        if self._connected:
            ray.shutdown()
            self._connected = False

    # -- one render ----------------------------------------------------------------------------
    def execute(self, plan: Plan, bus: EventBus) -> Outcome:
        ray = import_ray()
        out = Outcome()
        plan.cache.clean_stale_tmp()
        recheck_cached(plan)
        record_cached(plan, out, bus)
        to_run = plan.to_run()
        if not to_run:
            return out
        self.connect()
        self.ensure_workers(len(to_run))
        job = self._job(plan)
        schedule = Schedule(order=[s.id for s in to_run],
                            upstream={n: list(plan.graph[n].upstream()) for n in plan.order},
                            available=set(out.entries), world=len(self.actors),
                            slots={s.id: _slot(s) for s in to_run}, keep_going=self.keep_going)
        run = _Dispatch(ray, self, plan, schedule, out, bus, job)
        run.loop()
        out.model_loads, out.model_swaps = run.loads, run.swaps
        out.memory = self._memory(ray, [r for r in range(len(self.actors))
                                        if r not in schedule.down and r not in run.gone])
        return out

    def _job(self, plan: Plan) -> dict[str, Any]:
        from .ray_worker import Job

        return dataclasses.asdict(Job(
            id=uuid.uuid4().hex, spec=str(plan.loaded.path), cache=str(Path(plan.cache.root).resolve()),
            profile=self.profile, allow_paths=list(self.allow_paths or []),
            allow_hosts=list(self.allow_hosts or []), dtype=self.dtype, force=self.force,
            vram=self.vram, host=self.host, placements=self.placements()))

    def _memory(self, ray, ranks: list[int]) -> list[dict[str, Any]]:
        """The memory reports of the workers in ``ranks`` (those serving now)."""
        refs = [self.actors[r].memory.remote() for r in ranks]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=MEMORY_WAIT)
        rows = []
        for ref in ready:
            try:
                rows.append(ray.get(ref))
            except ray.exceptions.RayError:
                continue        # a worker lost at the end has no report
        return sorted(rows, key=lambda r: r["rank"])


@dataclasses.dataclass
class _Dispatch:
    """The driver's loop for one render: hand ready stages to workers, take their reports."""

    ray: Any
    ex: RayExecutor
    plan: Plan
    schedule: Schedule
    out: Outcome
    bus: EventBus
    job: dict[str, Any]
    calls: dict[Any, tuple[int, str]] = dataclasses.field(default_factory=dict)   # ref -> (rank, stage)
    sent_at: dict[Any, float] = dataclasses.field(default_factory=dict)           # ref -> when (epoch s)
    pings: dict[Any, int] = dataclasses.field(default_factory=dict)               # ref -> lost rank
    retry_at: dict[int, float] = dataclasses.field(default_factory=dict)          # lost rank -> when
    gone: set[int] = dataclasses.field(default_factory=set)                       # out of restarts
    loads: dict[str, int] = dataclasses.field(default_factory=dict)
    swaps: dict[str, int] = dataclasses.field(default_factory=dict)
    why: str = ""                         # how the last worker out of restarts died

    def __post_init__(self) -> None:
        for rank in range(self.schedule.world):     # a worker not placed yet serves once it is
            if rank not in self.ex.nodes:
                self.schedule.lost(rank)
                self.pings[self.ex.actors[rank].node.remote()] = rank

    def loop(self) -> None:
        sched = self.schedule
        while True:
            for stage, because in sched.block():
                node = self.plan.graph[stage]
                self.out.blocked.append(stage)
                self.bus.emit("stage_blocked", stage=stage, kind=node.kind, scene=node.scene,
                              detail={"because": because})
            for a in sched.assign():
                self._send(a.leader, a.stage)
            if sched.finished():
                return
            if len(self.gone) == sched.world:
                raise RenderError(f"every Ray worker was lost and none can be restarted: {self.why}",
                                  hint="every node needs this package (the same version) and its "
                                       "models; run the same command again when the cluster is "
                                       "back: finished stages are cached")
            self._ping_lost()
            waiting = list(self.calls) + list(self.pings)
            if not waiting:             # every worker lost: wait for Ray to restart one
                time.sleep(PING)
                continue
            ready, _ = self.ray.wait(waiting, num_returns=1, timeout=PING)
            for ref in ready:
                if ref in self.calls:
                    self._report(ref)
                else:
                    self._pinged(ref)

    def _send(self, rank: int, stage: str) -> None:
        st = self.plan.stages[stage]
        task = {"stage": stage, "ranks": [rank], "reason": dataclasses.asdict(st.reason),
                "entries": {u: dataclasses.asdict(self.out.entries[u]) for u in st.node.upstream()}}
        ref = self.ex.actors[rank].run.remote(self.job, task)
        self.calls[ref], self.sent_at[ref] = (rank, stage), time.time()
        self.bus.emit("stage_assigned", stage=stage, kind=st.node.kind, scene=st.node.scene,
                      detail={"worker": rank, "node": self.ex.nodes.get(rank)})

    def _report(self, ref) -> None:
        rank, stage = self.calls.pop(ref)
        sent = self.sent_at.pop(ref, time.time())
        try:
            msg = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:      # the worker or its node died
            self._lost(rank, stage, exc)
            return
        except self.ray.exceptions.RayError as exc:           # an error outside the stage's code
            msg = {"ran": [], "cached": [], "failed": {}, "blocked": [], "seconds": {}, "meta": {},
                   "entries": {}, "lock": {}}
            self._fail(msg, stage, last_line(str(exc)))
        for data in msg.get("events", []):
            event = Event(**data)
            for sink in self.bus.sinks:
                sink(event)
        if "refused" in msg:
            raise ModelError(msg["refused"]["message"], hint=msg["refused"]["hint"])
        _add(self.loads, msg.get("loads", {}))
        _add(self.swaps, msg.get("swaps", {}))
        self._check(msg)
        msg["spans"] = worker_spans(msg, stage, f"worker {rank}", self.ex.nodes.get(rank), sent, time.time())
        self.schedule.release(rank)
        merge_message(self.out, msg, self.plan)
        self.schedule.done(stage, ok=stage not in msg["failed"] and stage not in msg["blocked"])

    def _check(self, msg: dict[str, Any]) -> None:
        """Every artifact a worker made is hashed against its digest before it is used."""
        from ..cache.store import Entry

        for nid in list(msg["ran"]):
            data = msg["entries"].get(nid)
            if data is None:
                continue
            entry = Entry(**data)
            if self.plan.cache.check(entry, full=True) != "ok":
                self.plan.cache.drop_damaged(entry)
                msg["ran"].remove(nid)
                msg["entries"].pop(nid)
                msg["lock"].pop(nid, None)
                self._fail(msg, nid, f"the artifact a worker made for {nid} does not match its "
                                     f"digest {entry.digest[:12]} on this machine")

    def _fail(self, msg: dict[str, Any], stage: str, error: str) -> None:
        node = self.plan.graph[stage]
        msg["failed"][stage] = error
        self.bus.emit("stage_failed", stage=stage, kind=node.kind, scene=node.scene,
                      detail={"error": error})

    def _lost(self, rank: int, stage: str, exc: BaseException) -> None:
        node = self.plan.graph[stage]
        self.schedule.lost(rank)
        self.retry_at[rank] = time.monotonic() + PING
        self.bus.emit("stage_lost", stage=stage, kind=node.kind, scene=node.scene,
                      detail={"worker": rank, "node": self.ex.nodes.get(rank),
                              "error": type(exc).__name__})

    def _ping_lost(self) -> None:
        now = time.monotonic()
        for rank, when in list(self.retry_at.items()):
            if when <= now:
                del self.retry_at[rank]
                self.pings[self.ex.actors[rank].node.remote()] = rank

    def _pinged(self, ref) -> None:
        rank = self.pings.pop(ref)
        try:
            self.ex.nodes[rank] = self.ray.get(ref)
        except self.ray.exceptions.ActorDiedError as exc:
            self.gone.add(rank)                                    # out of restarts
            self.why = last_line(str(exc))
        except self.ray.exceptions.RayActorError:
            self.retry_at[rank] = time.monotonic() + PING          # still restarting
        else:
            self.schedule.back(rank)
            self.job["placements"] = self.ex.placements()


def worker_spans(msg: dict[str, Any], stage: str, lane: str, node: str | None, sent: float,
                 received: float) -> dict[str, dict[str, Any]]:
    """The spans of one call's report, for the timeline: in the worker's lane, with the first 12
    characters of its node's id, on the driver's clock (``on_driver_clock``). A stage that failed
    without a span of its own (an error outside its code) spans the whole call."""
    where = {"lane": lane, **({"node": node[:12]} if node else {})}
    spans = {nid: {**on_driver_clock(span, sent, received), **where}
             for nid, span in (msg.get("spans") or {}).items() if _span_ok(span)}
    if stage in msg.get("failed", {}) and stage not in spans:
        spans[stage] = {"start": sent, "end": received, **where}
    return spans


def on_driver_clock(span: dict[str, Any], sent: float, received: float) -> dict[str, Any]:
    """A worker's span (seconds since the epoch on its own clock) as the driver saw it: as
    reported when it lies within the call, from ``sent`` to ``received`` give or take ``SKEW``;
    otherwise (the worker's clock is not the driver's) moved to end when the report came,
    keeping its length (at most the call's)."""
    start, end = float(span["start"]), float(span["end"])
    if sent - SKEW <= start <= end <= received + SKEW:
        return dict(span)
    took = min(max(end - start, 0.0), max(received - sent, 0.0))
    return {**span, "start": received - took, "end": received}


def _span_ok(span: Any) -> bool:
    return isinstance(span, dict) and all(
        isinstance(span.get(k), (int, float)) and not isinstance(span.get(k), bool) for k in ("start", "end"))


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


def last_line(text: str) -> str:
    """The last line of a Ray error (where the cause is), without terminal colours."""
    lines = [x.strip() for x in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if x.strip()]
    return lines[-1] if lines else "no reason given"
