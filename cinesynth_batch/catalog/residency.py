"""Which models are loaded, under a memory budget (VRAM on a GPU, RAM on the CPU).

``Residency.get(role)`` returns a loaded model, loading it through ``catalog/loaders.py`` on
first use. When the next model would not fit the budget, the least recently used ones leave the
device first (a policy close to ComfyUI's: free what is needed, keep the rest).

On a GPU a model that leaves the device is kept in pinned host RAM while ``host_budget`` allows
(``runtime/swap.py``), so using it again costs a host-to-device copy, not a read from disk. Loads
(disk reads), swaps (copies back to the device) and evictions are counted per model so a render
can report them, with the bytes each brought onto the device (``moved``) and the most pinned host
RAM its models held at once (``pinned_peak``).

A model is loaded with the device bytes left to it (``room``: the budget less the models that
stay), which the loader uses to keep the text encoder of a pipeline that does not fit in pinned
host RAM from the start (``catalog/loaders.py``).

The host budget covers all the host RAM the models hold: their pinned copies (kept while a model
is on the device too), blocks streamed from pinned RAM, and weights that rest in RAM
(Wan2.2-Animate's rest copy), as measured (``runtime/swap.py`` ``host_nbytes``). Before a model
loads, models waiting in pinned RAM leave (least recently used first) until what the incoming
one will hold in host RAM (``host_needs``: the stage's estimate, ``execute/fit.py``) fits beside
the rest; a model leaving the device waits in pinned RAM only where it fits beside that too.

The budgets are this rank's share of its node (``catalog/budget.py``); built without them, a
residency takes the defaults of a node with one rank.
"""

from __future__ import annotations

import gc
import math
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .budget import Placement, rank_budget
from .registry import Registry
from .shapes import ShapesSource

Loader = Callable[..., Any]            # (kind, path, device, dtype, room) -> model
Sizer = Callable[[Any], int]
Mover = Callable[[Any, str], None]     # (model, "host" | device) -> None
Pinned = Callable[[Any], int]          # bytes of pinned host copies a model holds
Held = Callable[[Any], int]            # bytes of host RAM a model holds (pinned or not)


def parse_size(text: str) -> int:
    """``"24GiB"``, ``"512MiB"``, ``"8GB"``, ``"1000000"`` -> bytes. Raises ValueError, naming
    ``text``, for anything else: no number, a negative one, nan or inf."""
    t = text.strip().lower().replace(" ", "")
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
             "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 1 << 10, "m": 1 << 20,
             "g": 1 << 30, "b": 1}
    number, scale = t, 1
    for unit in sorted(units, key=len, reverse=True):
        if t.endswith(unit):
            number, scale = t[: -len(unit)], units[unit]
            break
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a size: give a number of bytes of 0 or more, with a unit or "
                         "not (24GiB, 512MiB, 8GB, 1000000)")
    return int(value * scale)


def default_budget(device: str, placement: Placement = Placement()) -> int:
    """This rank's device budget by default (``catalog/budget.py``)."""
    return rank_budget(device, placement).budget


def default_host_budget(device: str, placement: Placement = Placement()) -> int:
    """This rank's pinned host RAM by default: its share of half the RAM on a GPU node, none on
    the CPU."""
    return rank_budget(device, placement).host_budget


def _disk_size(path: Path | ShapesSource, dtype: str = "bfloat16") -> int:
    if isinstance(path, ShapesSource):   # built on the device: its size in the load dtype
        return path.nbytes(dtype)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()
               and p.suffix in (".safetensors", ".bin", ".pth", ".pt", ".gguf"))


@dataclass
class Residency:
    registry: Registry
    device: str = "cpu"
    dtype: str = "float32"
    budget: int | None = None
    host_budget: int | None = None
    loader: Loader | None = None
    sizer: Sizer | None = None
    mover: Mover | None = None
    pinned: Pinned | None = None
    held: Held | None = None
    host_needs: dict = field(default_factory=dict)  # (role, name or "") -> host bytes it will hold
    loads: Counter = field(default_factory=Counter)
    swaps: Counter = field(default_factory=Counter)
    evictions: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)   # left pinned RAM (or never went there)
    load_seconds: Counter = field(default_factory=Counter)   # building or reading each model
    moved: Counter = field(default_factory=Counter)     # bytes brought onto the device, per model
    pinned_peak: int = 0
    gpu_peak: int = 0             # the most device memory allocated, across stage runs' counter resets
    _resident: "OrderedDict[str, tuple[Any, int]]" = field(default_factory=OrderedDict)
    _host: "OrderedDict[str, tuple[Any, int]]" = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if None in (self.loader, self.sizer, self.mover, self.pinned, self.held):
            from ..runtime.swap import host_nbytes, model_nbytes, pinned_nbytes, swap_model
            from .loaders import load_model

            self.loader = self.loader or load_model
            self.sizer = self.sizer or model_nbytes
            self.mover = self.mover or swap_model
            self.pinned = self.pinned or pinned_nbytes
            self.held = self.held or host_nbytes
        if self.budget is None:
            self.budget = default_budget(self.device)
        if self.host_budget is None:
            self.host_budget = default_host_budget(self.device)

    @property
    def used(self) -> int:
        return sum(size for _, size in self._resident.values())

    @property
    def host_used(self) -> int:
        return sum(size for _, size in self._host.values())

    def host_held(self, skip: str | None = None) -> int:
        """Host RAM held now by the models this residency keeps (on the device or off it), as
        measured; ``skip``: leave that one out."""
        assert self.held is not None
        return sum(self.held(model) for slot, (model, _) in (*self._resident.items(), *self._host.items())
                   if slot != skip)

    def _host_need(self, role: str, name: str | None) -> int:
        if not self.host_budget:
            return 0
        return int(self.host_needs.get((role, name or ""), 0))

    def resident(self) -> list[str]:
        return list(self._resident)

    def on_host(self) -> list[str]:
        return list(self._host)

    def _slot(self, role: str, name: str | None) -> tuple[Any, str]:
        spec = self.registry.spec(role, name)
        return spec, role if spec is self.registry.spec(role) else f"{role}:{spec.label}"

    def get(self, role: str, name: str | None = None) -> Any:
        """The loaded model for ``role`` (or the one a stage names), loading it if needed."""
        spec, slot = self._slot(role, name)
        if slot in self._resident:
            self._resident.move_to_end(slot)
            return self._resident[slot][0]
        if slot in self._host:
            model, size = self._host.pop(slot)
            self._host[slot] = (model, size)      # most recently used: the last to leave
            self._make_room(size, keep_host=slot)
            self._host.pop(slot)
            assert self.mover is not None
            self.mover(model, self.device)
            self.swaps[slot] += 1
            self.moved[slot] += size
            self._resident[slot] = (model, size)
            self._note_pinned()           # its pinned copy stays while it is on the device
            return model
        path = self.registry.local_path(role, name)
        host_need = self._host_need(role, name)
        self._make_room(_disk_size(path, self.dtype), reserve=host_need)
        self._make_host_room(host_need)
        assert self.loader is not None and self.sizer is not None and self.budget is not None
        started = time.perf_counter()
        model = self.loader(spec.kind, path, self.device, self.dtype, max(0, self.budget - self.used))
        size = self.sizer(model)
        self.load_seconds[slot] += time.perf_counter() - started
        self.loads[slot] += 1
        self.moved[slot] += size
        self._resident[slot] = (model, size)
        self._make_room(0, keep=slot)
        return model

    def reload(self, role: str, name: str | None = None) -> Any:
        """A fresh copy from disk (for a stage that needs the model set up differently)."""
        _, slot = self._slot(role, name)
        self._resident.pop(slot, None)
        self._host.pop(slot, None)
        self._collect()
        return self.get(role, name)

    def _make_room(self, needed: int, keep: str | None = None, reserve: int = 0,
                   keep_host: str | None = None) -> None:
        assert self.budget is not None
        while self._resident and self.used + needed > self.budget:
            victim = next((r for r in self._resident if r != keep), None)
            if victim is None:
                return
            self.release(victim, reserve=reserve, keep_host=keep_host)

    def _make_host_room(self, needed: int) -> None:
        """Models waiting in pinned RAM leave, oldest first, until ``needed`` more bytes of host RAM
        fit the host budget beside what the kept models hold."""
        if not needed or not self.host_budget:
            return
        left = False
        while self._host and self.host_held() + needed > self.host_budget:
            self._drop_host(next(iter(self._host)))
            left = True
        if left:
            self._collect()

    def _drop_host(self, slot: str) -> None:
        self._host.pop(slot)
        self.dropped[slot] += 1

    def release(self, role: str, reserve: int = 0, keep_host: str | None = None) -> None:
        """Take ``role`` off the device: to pinned host RAM when it fits ``host_budget`` beside
        what the other kept models hold and ``reserve`` bytes (for a model about to load), else
        dropped. ``keep_host``: a model in pinned RAM that must not leave it for this one."""
        if role not in self._resident:
            return
        self._note_pinned()               # its offloaded blocks, pinned while it ran, count too
        model, size = self._resident[role]
        self.evictions[role] += 1
        dropped = True
        if self.host_budget and size + reserve <= self.host_budget:
            others = self.host_held(skip=role)
            evicted = False
            while others + size + reserve > self.host_budget:
                victim = next((r for r in self._host if r != keep_host), None)
                if victim is None:
                    break
                self._drop_host(victim)
                evicted = True
                others = self.host_held(skip=role)
            if evicted:
                self._collect()         # their pinned RAM goes before this one's is taken
            if others + size + reserve <= self.host_budget:
                assert self.mover is not None
                self.mover(model, "host")
                self._resident.pop(role)
                self._host[role] = (model, size)
                self._note_pinned()
                dropped = False         # its device tensors are freed as the pointers swap; the
                                        # caching allocator hands their blocks to the next model
        if dropped:
            self._resident.pop(role)
            self.dropped[role] += 1
        del model
        if dropped:
            self._collect()

    def pinned_bytes(self) -> int:
        """Pinned host RAM held now by the models this residency keeps (on the device or off it)."""
        assert self.pinned is not None
        return sum(self.pinned(model) for model, _ in (*self._resident.values(), *self._host.values()))

    def _note_pinned(self) -> int:
        self.pinned_peak = max(self.pinned_peak, self.pinned_bytes())
        return self.pinned_peak

    def pinned_high_water(self) -> int:
        """The most pinned host RAM its models have held at once, as far as it has looked: when a
        model left or came back to the device, and now."""
        return self._note_pinned()

    def _collect(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            from ..runtime.pinned import empty_host_cache

            torch.cuda.empty_cache()
            empty_host_cache()

    def clear(self) -> None:
        self._resident.clear()
        self._host.clear()
        gc.collect()
