"""Before a render runs: does every model it needs fit the memory of the rank that runs it?

A model's size is the loader's estimate (``catalog/residency.py`` ``_disk_size``: its files, or a
shapes model's bytes in the load dtype). It fits when

* it fits the rank's device budget whole; or
* on CUDA, for a model whose stage offloads the transformer blocks of a pipeline larger than
  the budget (the video and lip-sync pipelines: ``runtime/accel.py`` ``prepared_pipeline``):
  what stays on the device (everything but those blocks, plus two blocks: the one computing and
  the one being copied in) fits the device budget, and the offloaded blocks fit the rank's
  pinned host RAM budget. (A video pipeline whose one expert at a time fits the budget swaps its
  experts through pinned RAM instead, ``runtime/placement.py``; what passes this check fits that
  way too, so the check stays on the safe side);
* on CUDA, for a FLUX.2-klein image pipeline larger than the budget (``stages/image.py``), whose
  text encoder is on the device only while it encodes (and is loaded into pinned RAM, not onto
  the device: ``catalog/loaders.py``): the larger of the text encoder and the transformer, plus
  the other components (the VAE), fits the device budget, and the components that wait off the
  device (the text encoder; the transformer too while the prompts are encoded when the two do
  not fit together) fit the pinned host RAM budget (``runtime/placement.py`` decides both);
* on CUDA, for Wan2.2-Animate (``runtime/animate.py``): its transformer's loaded weights stay in
  host RAM and each run puts a working copy on the device, less the ``block_swap`` blocks it
  streams from pinned RAM; what that leaves on the device fits the device budget and the
  streamed blocks the pinned RAM budget.

Blocks stored as fp8 (``quantize: fp8_e4m3fn`` on every stage of the model) count at one byte
per weight where they are offloaded or copied. The estimates are conservative: the other
components of an offloaded diffusers pipeline, which are offloaded too, count as resident.

On CUDA a model must also fit the GPU itself (the rank's share of it): a pipeline is loaded whole
onto its device and its blocks are offloaded after, so a budget below the card's size does not
make a larger model loadable (the image pipeline over its budget loads without its text encoder).

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
from ..catalog.shapes import DTYPE_BYTES, ShapesSource
from ..errors import ModelError
from ..runtime.memory import IN_FLIGHT
from ..runtime.placement import (EXPERTS, HOST, ONE_TRANSFORMER, STREAMED_KINDS, TEXT_ENCODER, experts_fit,
                                 least_device_bytes, plan_placement)

#: Kinds whose stages offload every transformer block when the pipeline is over the VRAM budget.
OFFLOADED_OVER_BUDGET = STREAMED_KINDS
#: Kinds whose stage keeps only the text encoder or the transformer on the device at a time.
PLACED = ("flux2-klein",)
#: Kinds whose transformer rests in host RAM and runs as a working copy on the device.
WORKING_COPY = ("wan-animate",)
FP8_STORAGE = ("fp8_e4m3fn", "fp8_e4m3fn_scaled")

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
                      "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class ModelFitError(ModelError):
    """A model the render needs does not fit the budget of the rank that would run it."""


@dataclass(frozen=True)
class Need:
    """One model a render needs: the role it serves, its label and kind, its source; the fewest
    blocks its stages stream with ``block_swap``, and whether they all store them as fp8."""

    role: str
    label: str
    kind: str
    source: Path | ShapesSource
    block_swap: int = 0
    fp8: bool = False


def need_for(role: str, label: str, kind: str, source: Path | ShapesSource, params: list[dict]) -> Need:
    """The ``Need`` of a model used by stages with ``params`` (their params and runtime settings)."""
    swap = min((int(p.get("block_swap") or 0) for p in params), default=0)
    fp8 = bool(params) and all(p.get("quantize") in FP8_STORAGE for p in params)
    return Need(role, label, kind, source, swap, fp8)


@dataclass(frozen=True)
class Blocks:
    """The transformer blocks of a model that offloading streams from pinned RAM."""

    total: int
    largest: int
    count: int


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
    return Blocks(sum(sizes.values()), max(sizes.values()), len(sizes))


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
    return Blocks(sum(sizes), max(sizes), len(sizes)) if sizes else Blocks(0, 0, 0)


def component_sizes_of(source: Path | ShapesSource, dtype: str) -> dict[str, int]:
    """Bytes per component of a pipeline: a shapes model's table, or the weight files in each
    component folder of a diffusers pipeline folder."""
    from ..catalog.residency import _disk_size

    if isinstance(source, ShapesSource):
        from ..catalog.shapes import SIZES

        return {c.name: c.nbytes(dtype) for c in SIZES[source.name]}
    return {sub.name: _disk_size(sub) for sub in sorted(source.iterdir()) if sub.is_dir()} if source.is_dir() else {}


@dataclass(frozen=True)
class Placed:
    """A FLUX.2-klein pipeline over its budget: bytes on the device at most, and the components
    waiting off it with their pinned bytes."""

    device: int
    waiting: tuple[str, ...]
    pinned: int
    loaded: int             # on the device once loaded (without what waits in pinned RAM)


def placed(sizes: dict[str, int], budget: int) -> Placed:
    """How a FLUX.2-klein pipeline of these component ``sizes`` runs under ``budget`` device bytes
    (``runtime/placement.py``: the moves of a run starting from the load, which leaves the text
    encoder in pinned RAM). Its pinned copies stay once made, so every component that waits
    counts."""
    plan = plan_placement(cuda=True, sizes=sizes, where={n: "device" for n in sizes}, available=budget,
                          experts=ONE_TRANSFORMER)
    waiting = tuple(sorted({m.component for m in plan.moves if m.to == HOST}, key=lambda n: n != "text_encoder"))
    loaded = sum(sizes.values()) - (sizes["text_encoder"] if "text_encoder" in waiting else 0)
    return Placed(least_device_bytes(sizes, ONE_TRANSFORMER), waiting, sum(sizes[n] for n in waiting), loaded)


def host_need(need: Need, budget: RankBudget, dtype: str) -> int:
    """Host RAM (bytes) the model will hold while its stages run on the rank with ``budget``:

    * Wan2.2-Animate: its rest copy (the transformer) and the blocks its working copy streams, in
      the compute dtype (they pass through host RAM so before they are stored as fp8), and its
      text encoder (parked in pinned RAM after the prompts are encoded);
    * a Wan video or lip-sync pipeline: its transformer blocks and its text encoder when it cannot
      run within the device budget otherwise (every block streamed from pinned RAM), else its text
      encoder (parked in pinned RAM after the prompts are encoded) and, for two experts that do not
      fit the device together, the idle one;
    * a FLUX.2-klein pipeline over its budget: the components that wait in pinned RAM;
    * none for the others, or off CUDA (the models live in RAM there, under the device budget).
    """
    if not budget.device.startswith("cuda"):
        return 0
    sizes = component_sizes_of(need.source, dtype)
    size = sum(sizes.values()) or model_size(need.source, dtype)
    if need.kind in WORKING_COPY:
        blocks = model_blocks(need.source, dtype)
        streamed = 0
        if blocks is not None and blocks.count:
            streamed = blocks.total * min(need.block_swap, blocks.count) // blocks.count
        return sizes.get("transformer", size) + streamed + sizes.get(TEXT_ENCODER, 0)
    if need.kind in OFFLOADED_OVER_BUDGET:
        least = least_device_bytes(sizes) if need.kind == "wan-i2v" else size    # as the stages decide
        if least > budget.budget:
            blocks = model_blocks(need.source, dtype)
            if blocks is None or not blocks.total:
                return size
            scale = 1 / DTYPE_BYTES.get(dtype, 2) if need.fp8 else 1.0
            return int(blocks.total * scale) + sizes.get(TEXT_ENCODER, 0)
        idle = sizes.get(EXPERTS[1], 0) if not experts_fit(sizes, budget.budget) else 0
        return sizes.get(TEXT_ENCODER, 0) + idle
    if need.kind in PLACED and size > budget.budget and "transformer" in sizes and TEXT_ENCODER in sizes:
        return placed(sizes, budget.budget).pinned
    return 0


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
    problem = _over_budget(need, size, head, budget, dtype)
    if problem is None and need.kind in WORKING_COPY:
        held = host_need(need, budget, dtype)
        if held > budget.host_budget:
            problem = (f"{head}, its rest copy, streamed blocks and parked text encoder need {human(held)} "
                       f"of host RAM, the host budget of {budget.owner} is {human(budget.host_budget)}")
    loads_whole = need.kind not in WORKING_COPY
    loading = f"{head} on {budget.device} while it loads (it is loaded whole, its blocks are offloaded after)"
    if problem is None and need.kind in PLACED and size > budget.budget and budget.device.startswith("cuda"):
        size = placed(component_sizes_of(need.source, dtype), budget.budget).loaded
        loading = f"{head} ({human(size)} on {budget.device} while it loads, its text encoder in pinned RAM)"
    if problem is None and loads_whole and budget.capacity is not None and size > budget.capacity:
        shared = "" if budget.placement.sharing == 1 else f" for each of its {budget.placement.sharing} ranks"
        return f"{loading}, and {budget.device} holds {human(budget.capacity)}{shared}"
    return problem


def _over_budget(need: Need, size: int, head: str, budget: RankBudget, dtype: str) -> str | None:
    cuda = budget.device.startswith("cuda")
    animate = cuda and need.kind in WORKING_COPY and (need.block_swap or need.fp8)
    if size <= budget.budget and not animate:
        return None
    whole = f"{head}, the budget of {budget.owner} is {human(budget.budget)}"
    if cuda and need.kind in PLACED:
        return _placed_problem(need, head, whole, budget, dtype)
    if not (cuda and (need.kind in OFFLOADED_OVER_BUDGET or animate)):
        return whole
    blocks = model_blocks(need.source, dtype)
    if blocks is None or not blocks.total:
        return whole
    scale = 1 / DTYPE_BYTES.get(dtype, 2) if need.fp8 else 1.0      # fp8: one byte per weight
    if need.kind in WORKING_COPY:
        swapped = min(need.block_swap, blocks.count)
        streamed = int(blocks.total * scale * swapped / blocks.count)
        kept = int(blocks.total * scale) - streamed
        resident = size - blocks.total + kept + (int(IN_FLIGHT * blocks.largest * scale) if swapped else 0)
        how = f"with {swapped} of its {blocks.count} blocks streamed" if swapped else "with fp8 blocks"
    else:
        streamed = int(blocks.total * scale)
        resident = size - blocks.total + int(IN_FLIGHT * blocks.largest * scale)
        how = "with its transformer blocks offloaded"
    if resident > budget.budget:
        return (f"{head} ({human(resident)} {how}), the budget of {budget.owner} is "
                f"{human(budget.budget)}")
    if streamed > budget.host_budget:
        return (f"{head} ({human(resident)} {how}, fitting the budget of {budget.owner}), its streamed "
                f"blocks need {human(streamed)} of pinned RAM, the host budget of {budget.owner} is "
                f"{human(budget.host_budget)}")
    return None


def _placed_problem(need: Need, head: str, whole: str, budget: RankBudget, dtype: str) -> str | None:
    sizes = component_sizes_of(need.source, dtype)
    if "transformer" not in sizes or "text_encoder" not in sizes:
        return whole
    fit = placed(sizes, budget.budget)
    names = " and ".join(f"its {name.replace('_', ' ')}" for name in fit.waiting)
    how = f"{human(fit.device)} with {names} waiting in pinned RAM when idle"
    if fit.device > budget.budget:
        return f"{head} ({how}), the budget of {budget.owner} is {human(budget.budget)}"
    if fit.pinned > budget.host_budget:
        verb = "need" if len(fit.waiting) > 1 else "needs"
        return (f"{head} ({how}, fitting the budget of {budget.owner}), {names} {verb} {human(fit.pinned)} "
                f"of pinned RAM, the host budget of {budget.owner} is {human(budget.host_budget)}")
    return None
