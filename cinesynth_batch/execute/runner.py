"""Executors: run a plan's stages (local), or say what would run (dry run).

Both share one small interface, ``execute(plan, bus) -> Outcome``. The local executor runs
stages in plan order inside this process; each stage writes into a scratch folder of the
cache, and its artifact is committed (renamed into place) only when the stage returned.
"""

from __future__ import annotations

import importlib
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..cache.keylock import key_lock
from ..cache.lock import LockEntry
from ..cache.store import Entry
from ..catalog.budget import MemoryRequest, Placement, RankBudget, rank_budget
from ..catalog.shapes import ShapesSource
from ..errors import CinesynthError, ModelError, RenderError
from ..plan.expand import input_paths
from ..plan.planner import Plan, PlannedStage, input_labels
from ..plan.reason import Reason, explain
from ..stages.base import StageContext, StageError
from .events import EventBus
from .timing import DevicePeak, StepClock, device_sync


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    lock: dict[str, LockEntry] = field(default_factory=dict)
    model_loads: dict[str, int] = field(default_factory=dict)
    model_swaps: dict[str, int] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)     # one entry per rank
    fast_paths: dict[str, Any] = field(default_factory=dict)       # runtime/fastpaths.py survey
    spans: dict[str, dict[str, Any]] = field(default_factory=dict) # stage -> start, end (epoch s), lane
    dry_run: bool = False

    def summary(self, skipped: int = 0) -> str:
        verb = "to run" if self.dry_run else "run"
        parts = [f"{len(self.ran)} {verb}", f"{len(self.cached)} cached"]
        if skipped:
            parts.append(f"{skipped} skipped")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.blocked:
            parts.append(f"{len(self.blocked)} blocked")
        return ", ".join(parts)


def stage_module(kind: str) -> ModuleType:
    return importlib.import_module(f"cinesynth_batch.stages.{kind}")


class Executor(ABC):
    @abstractmethod
    def execute(self, plan: Plan, bus: EventBus) -> Outcome:  # pragma: no cover - interface
        ...


class DryRunExecutor(Executor):
    """Runs nothing: reports each stage that would run, with its reason."""

    def execute(self, plan: Plan, bus: EventBus) -> Outcome:
        out = Outcome(dry_run=True)
        for nid in plan.order:
            st = plan.stages[nid]
            if st.status == "cached":
                out.cached.append(nid)
                bus.emit("stage_cached", stage=nid, kind=st.node.kind, scene=st.node.scene, key=st.key)
            elif st.status == "run":
                out.ran.append(nid)
                bus.emit("stage_would_run", stage=nid, kind=st.node.kind, scene=st.node.scene,
                         key=st.key, reason=str(st.reason))
        return out


@dataclass
class LocalExecutor(Executor):
    """Runs stages in this process, models under this rank's share of the node's memory
    (``memory``: the budgets asked for the node; ``placement``: this rank's place on it)."""

    device: str = "cpu"
    dtype: str | None = None
    memory: MemoryRequest = field(default_factory=MemoryRequest)
    placement: Placement = field(default_factory=Placement)
    keep_going: bool = False
    force: bool = False
    residency: Any = None
    models: Any = None      # a pool that lends one residency to several renders (execute/batch.py)
    _memo: dict = field(default_factory=dict)
    _host_needs: dict = field(default_factory=dict)   # (role, name) -> host RAM it will hold

    def execute(self, plan: Plan, bus: EventBus) -> Outcome:
        out = Outcome()
        self._memo = {}
        plan.cache.clean_stale_tmp()
        recheck_cached(plan)
        residency = None
        if plan.to_run():
            self.preflight(plan)
            residency = self.residency or (self.models.residency(self, plan) if self.models is not None
                                           else self.make_residency(plan))
            if hasattr(residency, "host_needs"):
                residency.host_needs.update(self._host_needs)
            out.fast_paths = self.announce_fast_paths(plan, bus)
        before_loads = dict(getattr(residency, "loads", {}))
        before_swaps = dict(getattr(residency, "swaps", {}))
        known = record_cached(plan, out, bus)
        try:
            for nid in plan.order:
                st = plan.stages[nid]
                if st.status != "run":
                    continue
                self.run_one(plan, st, known, out, bus, residency)
                if out.failed and not self.keep_going:
                    break
        finally:
            out.model_loads = _since(getattr(residency, "loads", {}), before_loads)
            out.model_swaps = _since(getattr(residency, "swaps", {}), before_swaps)
            if residency is not None:
                out.memory = [rank_memory(self.placement.rank, self.device, [residency])]
        return out

    # -- helpers -------------------------------------------------------------------------------
    def announce_fast_paths(self, plan: Plan, bus: EventBus) -> dict[str, Any]:
        """On CUDA, when a model stage will run: which fast paths this machine has, and why
        the others are missing (one ``fast_paths`` event; the progress display prints it)."""
        from ..runtime.fastpaths import line, survey

        if not any(st.node.model_role for st in plan.to_run()):
            return {}
        if self.device == "auto":
            self.device = pick_device()
        found = survey(self.device)
        if found:
            bus.emit("fast_paths", detail={**found, "line": line(found)})
        return found

    def make_residency(self, plan: Plan, loader: Any = None):
        from ..catalog.residency import Residency

        budget = self.rank_budget()
        return Residency(plan.registry, device=self.device, dtype=self.dtype or plan.registry.dtype,
                         budget=budget.budget, host_budget=budget.host_budget, loader=loader,
                         host_needs=dict(self._host_needs))

    def rank_budget(self) -> RankBudget:
        """This rank's device and pinned-RAM budgets (its share of the node's)."""
        if self.device == "auto":
            self.device = pick_device()
        return rank_budget(self.device, self.placement, self.memory)

    def preflight(self, plan: Plan) -> None:
        """Every model a running stage needs must be there before anything runs; a model built
        at full size on the device (profile ``shapes``) needs a CUDA device, and each must fit
        the memory budget of this rank (``execute/fit.py``)."""
        from .fit import check_fit, host_need, need_for

        uses: dict[tuple[str, str], list[dict]] = {}
        for st in plan.to_run():
            if st.node.model_role:
                uses.setdefault((st.node.model_role, st.node.model_name or ""), []).append(
                    {**st.params, **st.node.runtime})
        wanted = sorted(uses)
        problems, built, needs = [], [], []
        for role, name in wanted:
            try:
                found = plan.registry.local_path(role, name or None)
            except ModelError as exc:
                problems.append(exc.render())
                continue
            if isinstance(found, ShapesSource):
                built.append(found)
            spec = plan.registry.spec(role, name or None)
            needs.append(need_for(role, spec.label, spec.kind, found, uses[(role, name)]))
        if problems:
            raise ModelError("missing models:\n  " + "\n  ".join(problems))
        self._check_device()
        dtype = self.dtype or plan.registry.dtype
        if built:
            self._check_shapes_device(built, dtype)
        budget = self.rank_budget()
        check_fit(needs, budget, dtype)
        self._host_needs = {key: host_need(n, budget, dtype) for key, n in zip(wanted, needs)}

    def _check_device(self) -> None:
        """A CUDA device asked for by name must be here before anything runs."""
        if not self.device.startswith("cuda"):
            return
        from ..runtime.devices import cuda_problem

        problem = cuda_problem(self.device)
        if problem:
            raise ModelError(f"the models cannot run here: {problem}",
                             hint="pass --device auto (the GPU where there is one, else the CPU) or --device cpu")

    def _check_shapes_device(self, built: list, dtype: str) -> None:
        device = pick_device() if self.device == "auto" else self.device
        if device.startswith("cuda"):
            return
        sizes = ", ".join(f"{s.label} {s.nbytes(dtype) / 2**30:.1f} GiB" for s in built)
        raise ModelError(f"profile 'shapes' builds its models at full size on the render's device: they "
                         f"need CUDA ({sizes} in {dtype}); this render runs on {device}",
                         hint="render it on a machine with an NVIDIA GPU (--device cuda), or use profile: "
                              "tiny here")

    def run_one(self, plan: Plan, st: PlannedStage, known: dict[str, str], out: Outcome,
                bus: EventBus, residency: Any) -> None:
        """Bring one stage up to date: blocked, found in the cache, or run and committed.
        ``known`` holds the digests and ``out.entries`` the entries of its upstream stages."""
        node = st.node
        failed_up = [u for u in node.upstream() if u in out.failed or u in out.blocked]
        if failed_up:
            out.blocked.append(node.id)
            bus.emit("stage_blocked", stage=node.id, kind=node.kind, scene=node.scene,
                     detail={"because": failed_up})
            return
        inputs = plan.input_digests(node, known)
        key = plan.key_for(st, inputs)     # keyed as this machine runs it (Plan.effective)
        assert key is not None, f"{node.id}: inputs not ready"
        why = "upstream re-ran with identical output" if st.reason.upstream else "made by another render"
        if not self.force and self._adopt(plan, st, key, inputs, known, out, bus, why):
            return
        with key_lock(plan.cache.root, key):   # a second render of this key waits for the first
            if not self.force and self._adopt(plan, st, key, inputs, known, out, bus,
                                              "made by another render"):
                return
            self._run(plan, st, key, inputs, known, out, bus, residency)

    def _adopt(self, plan: Plan, st: PlannedStage, key: str, inputs: dict[str, Any],
               known: dict[str, str], out: Outcome, bus: EventBus, why: str) -> bool:
        """Count the stage as cached if ``key`` is in the store now."""
        entry = plan.cache.lookup(key)
        if entry is None:
            return False
        node = st.node
        known[node.id] = entry.digest
        out.entries[node.id] = entry
        out.cached.append(node.id)
        out.lock[node.id] = _lock_entry(st, key, inputs, entry)
        bus.emit("stage_cached", stage=node.id, kind=node.kind, scene=node.scene, key=key, reason=why)
        return True

    def _run(self, plan: Plan, st: PlannedStage, key: str, inputs: dict[str, Any],
             known: dict[str, str], out: Outcome, bus: EventBus, residency: Any) -> None:
        node = st.node
        if st.reason.upstream:  # inputs exist now: say which of them changed
            st.reason = explain(plan.lock.stages.get(node.id), st.model, st.params, inputs, [],
                                input_labels(node))
            st.reason.forced = self.force
        bus.emit("stage_started", stage=node.id, kind=node.kind, scene=node.scene, key=key,
                 reason=str(st.reason))
        started, began = time.perf_counter(), time.time()
        lane = f"rank {self.placement.rank}"
        try:
            entry = self._produce(plan, st, key, out, bus, residency)
        except Exception as exc:  # a stage failure must not lose the rest of the render
            message = _describe(exc)
            out.failed[node.id] = message
            out.spans[node.id] = {"start": began, "end": time.time(), "lane": lane}
            bus.emit("stage_failed", stage=node.id, kind=node.kind, scene=node.scene, key=key,
                     seconds=round(time.perf_counter() - started, 4), detail={"error": message})
            return
        seconds = time.perf_counter() - started
        out.spans[node.id] = {"start": began, "end": time.time(), "lane": lane}
        known[node.id] = entry.digest
        out.entries[node.id] = entry
        out.ran.append(node.id)
        out.seconds[node.id] = seconds
        out.meta[node.id] = entry.meta
        out.lock[node.id] = _lock_entry(st, key, inputs, entry)
        bus.emit("stage_finished", stage=node.id, kind=node.kind, scene=node.scene, key=key,
                 seconds=round(seconds, 4), detail=entry.meta)

    def _produce(self, plan: Plan, st: PlannedStage, key: str, out: Outcome, bus: EventBus,
                 residency: Any) -> Entry:
        scratch = plan.cache.scratch()
        try:
            target, meta = self.run_module(plan, st, out, bus, residency, scratch)
            ext = target.name[len("out"):]
            return plan.cache.commit(key, target, ext, st.node.id, st.node.kind, meta)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def run_module(self, plan: Plan, st: PlannedStage, out: Outcome, bus: EventBus, residency: Any,
                   scratch: Path) -> tuple[Path, dict[str, Any]]:
        """Run the stage's module into ``scratch``; returns the written file and its facts.
        Nothing is committed: the caller decides (a sequence-parallel follower discards it)."""
        node = st.node
        module = stage_module(node.kind)
        paths = {name: input_paths(value, lambda up: self._artifact(plan, up, out, bus, residency))
                 for name, value in node.inputs.items()}
        target = scratch / f"out{module.OUTPUT_EXT}"

        clock = StepClock(sync=device_sync(self.device))
        loading = sum(getattr(residency, "load_seconds", {}).values())

        def progress(step: int, total: int, **segment: int) -> None:
            clock.tick(step, segment.get("segment_step"))
            bus.emit("stage_progress", stage=node.id, kind=node.kind, step=step, total=total, **segment)

        models = residency if node.model_name is None else _Named(residency, node.model_name)
        ctx = StageContext(models=models, resolve_lora=plan.registry.resolve_lora,
                           device=self.device, dtype=self.dtype or plan.registry.dtype,
                           progress=progress, work_dir=scratch, memo=self._memo)
        peak = DevicePeak(self.device, residency) if node.model_role else None
        started = time.perf_counter()
        meta = module.run({**st.params, **node.runtime}, paths, target, ctx) or {}
        ended = time.perf_counter()
        if not target.is_file():
            raise RenderError(f"stage {node.id} returned without writing its output")
        if node.model_role:
            loaded = sum(getattr(residency, "load_seconds", {}).values()) - loading
            timing = clock.facts(loaded, started, ended)
            used = peak.bytes()
            if used is not None:
                timing["peak_gpu_bytes"] = used
            meta = {**meta, "timing": timing}
        return target, meta

    def _artifact(self, plan: Plan, node_id: str, out: Outcome, bus: EventBus, residency: Any) -> Path:
        """A verified input artifact (hashed: it is read in full anyway); a damaged one is
        dropped and its stage re-made now."""
        entry = out.entries.get(node_id)
        if entry is None:
            raise RenderError(f"input {node_id} has no artifact")
        path = plan.cache.verified_path(entry, full=True)
        if path is not None:
            return path
        st = plan.stages[node_id]
        bus.emit("stage_started", stage=node_id, kind=st.node.kind, scene=st.node.scene,
                 key=entry.key, reason="cached artifact was damaged")
        started = time.perf_counter()
        with key_lock(plan.cache.root, entry.key):
            fresh = self._produce(plan, st, entry.key, out, bus, residency)
        out.entries[node_id] = fresh
        if node_id in out.cached:
            out.cached.remove(node_id)
        if node_id not in out.ran:
            out.ran.append(node_id)
        out.seconds[node_id] = time.perf_counter() - started
        bus.emit("stage_finished", stage=node_id, kind=st.node.kind, scene=st.node.scene,
                 key=entry.key, seconds=round(out.seconds[node_id], 4), detail=fresh.meta)
        if fresh.digest != entry.digest:
            raise RenderError(f"{node_id} was re-made after damage but its output differs "
                              f"({fresh.digest[:12]} vs {entry.digest[:12]})",
                              hint="render again: stages below it will follow the new output")
        return plan.cache.object_path(fresh.digest, fresh.ext)


@dataclass
class _Named:
    """Hands a stage the model its spec named instead of the profile's model for the role."""

    residency: Any
    name: str

    def get(self, role: str) -> Any:
        return self.residency.get(role, self.name)

    def reload(self, role: str) -> Any:
        return self.residency.reload(role, self.name)

    @property
    def budget(self) -> Any:
        return self.residency.budget


def recheck_cached(plan: Plan) -> list[str]:
    """Check the object of every stage the plan found cached (cheaply: see ``CacheStore.check``)
    before anything reads or publishes it. A damaged or vanished one is dropped (with a
    warning) and its stage runs again. Returns those stages."""
    redo = []
    for nid in plan.order:
        st = plan.stages[nid]
        if st.status != "cached" or st.entry is None:
            continue
        state = plan.cache.check(st.entry)
        if state == "ok":
            continue
        if state == "damaged":
            plan.cache.drop_damaged(st.entry)
        else:
            plan.cache.drop_missing(st.entry)
        st.status, st.entry = "run", None
        st.reason = Reason(damaged=state == "damaged", missing=state == "missing")
        redo.append(nid)
    return redo


def rank_memory(rank: int, device: str, residencies: list[Any]) -> dict[str, Any]:
    """What one rank's models cost in memory and copies: peak GPU memory (None off CUDA; the
    highest of the device's counter and what its stage runs saw before they reset it), the most
    pinned host RAM its models held, loads, swaps and the bytes they brought onto the device."""
    peak = None
    if device.startswith("cuda"):
        import torch

        peak = int(torch.cuda.max_memory_allocated(torch.device(device)))
        peak = max([peak] + [getattr(r, "gpu_peak", 0) for r in residencies])
    def total(counter: str) -> int:
        return sum(sum(getattr(r, counter, {}).values()) for r in residencies)

    return {"rank": rank, "device": device, "peak_gpu_bytes": peak,
            "pinned_bytes": sum(r.pinned_high_water() for r in residencies if hasattr(r, "pinned_high_water")),
            "loads": total("loads"), "swaps": total("swaps"), "bytes_moved": total("moved")}


def _since(counts: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The counts added since ``before`` (a residency lent to several renders counts for all)."""
    return {k: v - before.get(k, 0) for k, v in counts.items() if v - before.get(k, 0)}


def pick_device() -> str:
    from ..runtime.devices import auto_device

    return auto_device()


def record_cached(plan: Plan, out: Outcome, bus: EventBus) -> dict[str, str]:
    """Each cached stage into ``out`` (its entry and lock line) with a ``stage_cached`` event;
    returns ``{stage: digest}`` of them."""
    known: dict[str, str] = {}
    for nid in plan.order:
        st = plan.stages[nid]
        if st.status == "cached" and st.entry is not None:
            known[nid] = st.entry.digest
            out.entries[nid] = st.entry
            out.cached.append(nid)
            out.lock[nid] = _lock_entry(st, st.key, st.inputs, st.entry)
            bus.emit("stage_cached", stage=nid, kind=st.node.kind, scene=st.node.scene, key=st.key)
    return known


def _lock_entry(st: PlannedStage, key: str | None, inputs: dict[str, Any], entry: Entry) -> LockEntry:
    return LockEntry(kind=st.node.kind, key=key or "", model=st.model, params=st.params,
                     inputs=inputs, output={"digest": entry.digest, "size": entry.size,
                                            "ext": entry.ext})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (CinesynthError, StageError)):
        text = exc.message
        if getattr(exc, "hint", None):
            text += f" ({exc.hint})"
        return text
    return f"{type(exc).__name__}: {exc}"
