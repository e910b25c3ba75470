"""Before a render runs: does every model it needs fit the memory of the rank that runs it?

A model's size is the loader's estimate (``catalog/residency.py`` ``_disk_size``: its files, or a
shapes model's bytes in the load dtype). It fits when

* it fits the rank's device budget whole; or
* on CUDA, for a model whose stage offloads the transformer blocks of a pipeline larger than
  the budget (the video and lip-sync pipelines: ``runtime/accel.py`` ``prepared_pipeline``):
  what stays on the device (everything but those blocks, plus two blocks: the one computing and
  the one being copied in) fits the device budget, and the offloaded blocks fit the rank's
  pinned host RAM budget.

A model that does not fit is refused before anything runs, naming the stage role, the model, its
size and the budget (``ModelFitError``), never a CUDA out-of-memory error halfway through.
Imports no torch except to size a shapes model's blocks on the ``meta`` device.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..catalog.budget import RankBudget, human
from ..catalog.shapes import ShapesSource
from ..errors import ModelError

#: Kinds whose stages offload every transformer block when the pipeline is over the VRAM budget.
OFFLOADED_OVER_BUDGET = ("wan-i2v", "wan-s2v")
IN_FLIGHT = 2           # blocks on the device while offloaded: the one running, the one arriving

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
                      "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class ModelFitError(ModelError):
    """A model the render needs does not fit the budget of the rank that would run it."""


@dataclass(frozen=True)
class Need:
    """One model a render needs: the role it serves, its label and kind, its source."""

    role: str
    label: str
    kind: str
    source: Path | ShapesSource


@dataclass(frozen=True)
class Blocks:
    """The transformer blocks of a model that offloading streams from pinned RAM."""

    total: int
    largest: int


def model_size(source: Path | ShapesSource, dtype: str) -> int:
    from ..catalog.residency import _disk_size

    return _disk_size(source, dtype)


def model_blocks(source: Path | ShapesSource, dtype: str) -> Blocks | None:
    """Bytes of the repeated transformer blocks (``blocks.N.``) of a model: read from the
    safetensors headers of its files, or counted on a shapes model built on the ``meta`` device.
    None when the files say nothing (no safetensors)."""
    if isinstance(source, ShapesSource):
        return _shapes_blocks(source, dtype)
    files = [source] if source.is_file() else sorted(source.rglob("*.safetensors"))
    sizes: dict[tuple[str, int], int] = {}
    for file in files:
        if file.suffix != ".safetensors":
            continue
        for name, nbytes in _safetensors_sizes(file):
            m = _BLOCK.search(name)
            if m:
                key = (str(file.parent), int(m.group(1)))
                sizes[key] = sizes.get(key, 0) + nbytes
    if not sizes:
        return None
    return Blocks(sum(sizes.values()), max(sizes.values()))


def _safetensors_sizes(file: Path) -> Iterable[tuple[str, int]]:
    """(tensor name, bytes) from a safetensors header (nothing else of the file is read)."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        yield name, end - begin


def _shapes_blocks(source: ShapesSource, dtype: str) -> Blocks:
    from ..catalog.shapes.build import build_shapes

    model = build_shapes(source.name, "meta", dtype)
    sizes = []
    for name in ("transformer", "transformer_2"):
        module = getattr(model, name, None)
        for block in getattr(module, "blocks", None) or ():
            sizes.append(sum(t.numel() * t.element_size() for t in (*block.parameters(), *block.buffers())))
    return Blocks(sum(sizes), max(sizes)) if sizes else Blocks(0, 0)


def check_fit(needs: list[Need], budget: RankBudget, dtype: str) -> None:
    """Raise ``ModelFitError`` listing every model that cannot fit ``budget``."""
    problems = [p for p in (_problem(n, budget, dtype) for n in needs) if p]
    if not problems:
        return
    hint = ("pass a larger --vram-budget / --host-budget (budgets are per node, split between its "
            "ranks), start fewer ranks, or use block_swap / a smaller dtype")
    if len(problems) == 1:
        raise ModelFitError(problems[0], hint=hint)
    raise ModelFitError("models that do not fit:\n  " + "\n  ".join(problems), hint=hint)


def _problem(need: Need, budget: RankBudget, dtype: str) -> str | None:
    size = model_size(need.source, dtype)
    head = f"{need.role}: {need.label} needs {human(size)}"
    if size <= budget.budget:
        return None
    whole = f"{head}, the budget of {budget.owner} is {human(budget.budget)}"
    if not (budget.device.startswith("cuda") and need.kind in OFFLOADED_OVER_BUDGET):
        return whole
    blocks = model_blocks(need.source, dtype)
    if blocks is None or not blocks.total:
        return whole
    resident = size - blocks.total + IN_FLIGHT * blocks.largest
    if resident > budget.budget:
        return (f"{head} ({human(resident)} with its transformer blocks offloaded), the budget of "
                f"{budget.owner} is {human(budget.budget)}")
    if blocks.total > budget.host_budget:
        return (f"{head}; offloaded to fit the budget of {budget.owner} ({human(budget.budget)}), its "
                f"transformer blocks need {human(blocks.total)} of pinned RAM, the host budget of "
                f"{budget.owner} is {human(budget.host_budget)}")
    return None
