"""Sequence parallelism (Ulysses) for the Wan transformers: the I2V experts through diffusers'
context parallelism (``ContextParallelConfig(ulysses_degree=N, mesh=...)`` and
``transformer.enable_parallelism(config=...)``, driven by the model's ``_cp_plan``), our S2V
transformer by its own ``enable_sequence_parallel`` (``models/s2v/sequence.py`` says why).

A model split this way is a different object from the whole one (hooks split the sequence
before the blocks and gather it after the head), so a rank keeps it in a residency of its own
(see ``execute/distributed.py``). Which stages may be split, and by how much, is decided
before anything runs (``execute/parallel.py``). Renders split stages on CUDA GPUs only:
diffusers' context parallelism does not run on the CPU.
"""

from __future__ import annotations

from typing import Any

from ..errors import StageError

TRANSFORMER_ATTRS = ("transformer", "transformer_2")


def transformers_of(pipe: Any) -> list[Any]:
    """The transformers of a pipeline (the two experts of Wan2.2 A14B, or the one of the others)."""
    found = [getattr(pipe, a, None) for a in TRANSFORMER_ATTRS]
    return [t for t in found if t is not None]


def context_parallel_config(mesh: Any, degree: int) -> Any:
    from diffusers import ContextParallelConfig

    return ContextParallelConfig(ulysses_degree=degree, mesh=mesh)


def enable_split(pipe: Any, mesh: Any, degree: int, kind: str = "") -> Any:
    """Split every transformer of ``pipe`` over the ``degree`` ranks of ``mesh``."""
    models = transformers_of(pipe)
    if not models:
        raise StageError(f"{kind or type(pipe).__name__}: no transformer to split over ranks")
    for model in models:
        if hasattr(model, "enable_sequence_parallel"):      # ours: S2V splits itself
            model.enable_sequence_parallel(mesh["ulysses"].get_group())
            continue
        plan = getattr(model, "_cp_plan", None)
        if not plan:
            raise StageError(
                f"{kind}: {type(model).__name__} has no context-parallel plan, so it cannot be split over ranks",
                hint="use parallel: dp for this stage")
        model.enable_parallelism(config=context_parallel_config(mesh, degree))
    return pipe
