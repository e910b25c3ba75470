"""How a render spreads over ranks: which stages run whole on one rank (data parallel) and
which are split over a group of ranks (sequence parallel), decided and checked before anything
runs.

Imports no torch: the launcher and the coordinator decide with plain numbers. The GPU code
that applies a split lives in ``runtime/sequence_parallel.py``.

Groups are fixed blocks of consecutive ranks: with 8 ranks and degree 4, ranks 0-3 and 4-7.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import CinesynthError

MODES = ("auto", "dp", "sp")
SPLITTABLE = ("video", "lipsync", "animate")   # stages whose transformer can be split

VAE_STRIDE = (4, 8, 8)     # Wan VAE: frames, height, width
PATCH = (1, 2, 2)          # Wan transformers' patch size

NO_CP_PLAN = {
    "animate": "diffusers' WanAnimateTransformer3DModel declares no context-parallel plan (its face "
               "adapter attends per latent frame, across the split)",
}
WITH_STEP_CACHE = ("it uses a step cache (cache:), which decides from each rank's share which steps "
                   "to skip, so the ranks would part ways")


class ParallelError(CinesynthError):
    """A parallel setting that cannot be honoured (the render does not start)."""

    exit_code = 2


@dataclass(frozen=True)
class Topology:
    """The ranks of a render: how many, and whether they hold GPUs."""

    world: int
    device: str = "cpu"        # "cpu" | "cuda"

    @property
    def gpus(self) -> bool:
        return self.device.startswith("cuda")


@dataclass(frozen=True)
class SplitFacts:
    """What decides whether one stage can be split: its model's attention heads, the length of
    the sequence the transformer splits, and whether the model can be split at all."""

    heads: int | None = None
    tokens: int | None = None
    unsupported: str | None = None     # why the model cannot be split; None: it can


@dataclass(frozen=True)
class Options:
    mode: str = "auto"                 # auto | dp | sp
    sp_degree: int | None = None       # ranks per split stage for `sp` (default: all ranks)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ParallelError(f"--parallel {self.mode!r} is not a mode", hint="use dp, sp or auto")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def count_gpus() -> int:
    """GPUs on this node, as ``start.sh`` counted them (``--nproc auto``); 1 without any."""
    try:
        import torch
    except ImportError:  # pragma: no cover - the render extra is installed with torch
        return 1
    return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def parse_nproc(value: str) -> int:
    if value == "auto":
        return count_gpus()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ParallelError(f"--nproc {value!r} is not a rank count", hint="use a number >= 1 or auto")
    return n


def refuse_sp(topo: Topology, degree: int | None, what: str = "--parallel sp") -> None:
    """Refuse a sequence-parallel request that this machine cannot honour."""
    if not topo.gpus:
        raise ParallelError(
            f"{what}: sequence parallelism needs CUDA GPUs; diffusers context parallelism does not "
            "run on the CPU (gloo backend)",
            hint="use --parallel dp (or auto) on CPU: independent stages then run on separate ranks")
    d = degree or topo.world
    if topo.world < 2 or d < 2:
        raise ParallelError(
            f"{what}: {topo.world} rank(s), so the sequence-parallel degree would be {d}: "
            "there is nothing to split over",
            hint="start several ranks (--nproc N with N GPUs, or --nproc auto), or use --parallel dp")
    if topo.world % d:
        raise ParallelError(
            f"{what}: degree {d} does not divide the {topo.world} ranks",
            hint="use one of: " + ", ".join(str(x) for x in divisors(topo.world) if x > 1))


def why_not(degree: int, facts: SplitFacts) -> str | None:
    """Why a stage with ``facts`` cannot be split over ``degree`` ranks (None: it can)."""
    if facts.unsupported:
        return facts.unsupported
    if facts.heads is not None and facts.heads % degree:
        return f"its model has {facts.heads} attention heads, not a multiple of {degree}"
    if facts.tokens is not None and facts.tokens % degree:
        return f"its sequence of {facts.tokens} tokens is not a multiple of {degree}"
    return None


def split_hint(facts: SplitFacts, world: int) -> str:
    good = [d for d in divisors(world) if d > 1 and why_not(d, facts) is None]
    if good:
        return "use a degree among: " + ", ".join(str(d) for d in good)
    return "use parallel: dp for this stage"


def stage_degrees(stages: Iterable[tuple[str, str, Any]], options: Options, topo: Topology,
                  facts_for: Callable[[str], SplitFacts]) -> dict[str, int]:
    """Ranks per stage: 1 runs it on one rank, N > 1 splits it over a group of N.

    ``stages`` are (id, kind, per-stage ``parallel:``) of the stages that will run. A stage's own
    setting wins over ``options.mode``. ``auto`` splits only on GPUs, only when there are fewer
    splittable stages than ranks, and only by a degree the model allows; ``sp`` or a number
    that cannot be honoured is an error naming the stage and the reason.
    """
    stages = list(stages)
    heavy = [s for s in stages if s[1] in SPLITTABLE]
    out: dict[str, int] = {}
    for sid, kind, setting in stages:
        wanted = options.mode if setting in (None, "auto") else setting
        if kind not in SPLITTABLE or wanted == "dp" or wanted == 1:
            out[sid] = 1
        elif wanted == "auto":
            out[sid] = _auto_degree(topo, len(heavy), facts_for(sid))
        else:
            degree = wanted if isinstance(wanted, int) else (options.sp_degree or topo.world)
            what = f"{sid}: parallel {wanted}" if setting not in (None, "auto") else f"{sid}: --parallel sp"
            refuse_sp(topo, degree, what)
            facts = facts_for(sid)
            reason = why_not(degree, facts)
            if reason:
                raise ParallelError(f"{sid} cannot be split over {degree} ranks: {reason}",
                                    hint=split_hint(facts, topo.world))
            out[sid] = degree
    return out


def _auto_degree(topo: Topology, heavy: int, facts: SplitFacts) -> int:
    if not topo.gpus or topo.world < 2 or heavy >= topo.world:
        return 1
    limit = topo.world // max(1, heavy)
    for d in sorted(divisors(topo.world), reverse=True):
        if 1 < d <= limit and why_not(d, facts) is None:
            return d
    return 1


def groups(world: int, degree: int) -> list[list[int]]:
    """The fixed rank groups of ``degree`` ranks."""
    return [list(range(k, k + degree)) for k in range(0, world, degree)]


# -- facts from the plan (no torch: config.json files and stage parameters) -------------------

def split_facts(kind: str, params: dict[str, Any], model_dir: Path | None) -> SplitFacts:
    """Heads from the model's config.json; tokens of a Wan I2V clip from its size and frames.
    The S2V sequence (noisy, reference and motion tokens) is checked when it is split."""
    if kind in NO_CP_PLAN:
        return SplitFacts(unsupported=NO_CP_PLAN[kind])
    if params.get("cache"):
        return SplitFacts(unsupported=WITH_STEP_CACHE)
    if kind == "lipsync":
        return SplitFacts(heads=_heads(model_dir / "config.json") if model_dir is not None else None)
    heads = None
    if model_dir is not None:
        heads = _heads(model_dir / "transformer" / "config.json")
    frames = (int(params["frames"]) - 1) // VAE_STRIDE[0] + 1
    h = int(params["height"]) // (VAE_STRIDE[1] * PATCH[1])
    w = int(params["width"]) // (VAE_STRIDE[2] * PATCH[2])
    return SplitFacts(heads=heads, tokens=frames * h * w)


def _heads(config: Path) -> int | None:
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    value = data.get("num_attention_heads", data.get("num_heads"))
    return int(value) if isinstance(value, int) else None


def topology_from_env(device: str) -> Topology:
    """The topology of a render started by torchrun (``WORLD_SIZE``), for a device option."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Topology(world=world, device="cuda" if device.startswith("cuda") else "cpu")
