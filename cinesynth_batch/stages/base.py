"""The contract between the executor and a stage implementation.

A stage module (``stages/<kind>.py``) exposes:

* ``KIND``: the stage kind (``"image"``, ``"upscale"``, ``"video"``, ``"assemble"``, ...).
* ``OUTPUT_EXT``: the extension of the single artifact it writes (``".png"``, ``".mp4"``).
* ``MODEL_ROLE``: the profile role of the model it needs (``"image"``, ``"video"``,
  ``"upscale"``) or ``None`` for stages that need no model (assemble).
* ``run(params, inputs, out, ctx) -> dict``: produce exactly one file at ``out`` and return
  a small JSON-able dict of facts about it (frames, size, duration, ...) for the manifest.

``params`` is the node's canonical parameter dict (plain JSON values, defaults applied, seed
already drawn). ``inputs`` maps input names to local file paths (or lists of paths) that the
executor has already verified. ``out`` is a temporary path inside the cache: the stage writes
it and nothing else; the executor moves it into place only once ``run`` has returned.

This module imports no torch: the plan and the CLI read the constants above without loading
any model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import StageError  # noqa: F401  (stages raise it; it lives with the other errors)


class ModelProvider(Protocol):
    """Hands out loaded pipelines/networks by profile role, under a memory budget."""

    def get(self, role: str) -> Any:  # pragma: no cover - protocol
        ...


class LoraResolver(Protocol):
    """Turns a LoRA ``name`` from a spec into a safetensors path."""

    def __call__(self, name: str, family: str) -> Path:  # pragma: no cover - protocol
        ...


def _no_progress(step: int, total: int, **segment: int) -> None:
    return None


@dataclass
class StageContext:
    """What a running stage may use. Built by the executor, one per stage run."""

    models: ModelProvider
    resolve_lora: LoraResolver
    device: str = "cpu"
    dtype: str = "float32"
    # progress(step, total): a stage that makes segments adds segment=, segments=, segment_step=,
    # segment_steps= (keywords) to say where in which segment it is
    progress: Callable[..., None] = _no_progress
    work_dir: Path | None = None  # scratch folder, removed after the stage
    extra: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)  # shared by the stages of one render


def pipeline_room(pipe: Any, ctx: StageContext) -> int | None:
    """Device bytes ``pipe`` may use: the residency's budget less what its other models hold
    (None when the models have no budget)."""
    from ..runtime.swap import model_nbytes

    budget = getattr(ctx.models, "budget", None)
    if not isinstance(budget, int):
        return None
    used = getattr(ctx.models, "used", None)
    return budget - (max(0, used - model_nbytes(pipe)) if isinstance(used, int) else 0)
