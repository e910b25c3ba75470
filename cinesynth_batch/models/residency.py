"""Which models are loaded, under a memory budget (VRAM on a GPU, RAM on the CPU).

``Residency.get(role)`` returns a loaded model, loading it through ``models/loaders.py`` on
first use. When the next model would not fit the budget, the least recently used ones are
released first (a policy close to ComfyUI's: free what is needed, keep the rest). Loads and
evictions are counted so a render can report them.
"""

from __future__ import annotations

import gc
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .registry import Registry

Loader = Callable[[str, Path, str, str], Any]
Sizer = Callable[[Any], int]


def parse_size(text: str) -> int:
    """``"24GiB"``, ``"512MiB"``, ``"8GB"``, ``"1000000"`` -> bytes."""
    t = text.strip().lower().replace(" ", "")
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
             "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 1 << 10, "m": 1 << 20,
             "g": 1 << 30, "b": 1}
    for unit in sorted(units, key=len, reverse=True):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * units[unit])
    return int(float(t))


def default_budget(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(total * 0.9)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        total = 16 << 30
    return int(total * 0.6)


def _disk_size(path: Path) -> int:
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
    loader: Loader | None = None
    sizer: Sizer | None = None
    loads: Counter = field(default_factory=Counter)
    evictions: Counter = field(default_factory=Counter)
    _resident: "OrderedDict[str, tuple[Any, int]]" = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.loader is None or self.sizer is None:
            from . import loaders

            self.loader = self.loader or loaders.load_model
            self.sizer = self.sizer or loaders.model_nbytes
        if self.budget is None:
            self.budget = default_budget(self.device)

    @property
    def used(self) -> int:
        return sum(size for _, size in self._resident.values())

    def resident(self) -> list[str]:
        return list(self._resident)

    def get(self, role: str, name: str | None = None) -> Any:
        """The loaded model for ``role`` (or the one a stage names), loading it if needed."""
        spec = self.registry.spec(role, name)
        slot = role if spec is self.registry.spec(role) else f"{role}:{spec.label}"
        if slot in self._resident:
            self._resident.move_to_end(slot)
            return self._resident[slot][0]
        path = self.registry.local_path(role, name)
        self._make_room(_disk_size(path))
        model = self.loader(spec.kind, path, self.device, self.dtype)
        size = self.sizer(model)
        self.loads[slot] += 1
        self._resident[slot] = (model, size)
        self._make_room(0, keep=slot)
        return model

    def _make_room(self, needed: int, keep: str | None = None) -> None:
        assert self.budget is not None
        while self._resident and self.used + needed > self.budget:
            victim = next((r for r in self._resident if r != keep), None)
            if victim is None:
                return
            self.release(victim)

    def release(self, role: str) -> None:
        if role not in self._resident:
            return
        del self._resident[role]
        self.evictions[role] += 1
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def clear(self) -> None:
        for role in list(self._resident):
            del self._resident[role]
        gc.collect()
