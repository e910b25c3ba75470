"""Expected seconds of each stage before it runs: what the scheduler orders by (longest first)
and what ``cinesynth plan`` prints.

A stage's work is ``steps x frames x pixels`` (times its segments, for a lipsync), or one unit
for a stage without steps (upscale, speech, assembly...). Its expected seconds come from, in
order:

1. ``measured``: an earlier render ran a stage with this very key (its manifest row);
2. ``earlier runs``: seconds per unit of work measured by earlier renders of the same kind on the
   same model (id and revision), the median of them, times this stage's work — a manifest row
   gives the seconds, the ``render.lock`` beside it the params they were spent on;
3. ``table``: a default rate per kind (``DEFAULTS``; ``TINY_DEFAULTS`` for the tiny profile's
   models), times the work, plus the kind's fixed seconds.

Manifests and locks are read as untrusted files: bounded in size, parsed as JSON / safe YAML, and
any row whose numbers are not finite and positive is ignored. Imports no torch.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..cache.lock import Lock
from .planner import Plan, PlannedStage

MAX_MANIFEST_BYTES = 16 * 2**20
SCALED = {"image", "video", "lipsync", "animate"}      # kinds whose time grows with steps and pixels


@dataclass(frozen=True)
class Rate:
    """Seconds = ``per_unit`` x work + ``fixed``."""

    per_unit: float
    fixed: float = 0.0


# Production models on one H100 (bf16). video/lipsync/animate: a Wan2.2 14B CFG step at
# 480x832x81 takes 5.060 s with the renderer's default attention and compile, a VAE decode at that
# size 2.07 s (docs/performance.md), i.e. 1.56e-7 s per step x frame x pixel plus 2.1 s.
# image: FLUX.2-klein, 2e-7 s per step x pixel (a rough figure: 0.8 s for 4 steps at 1024x1024).
# The others: seconds per stage.
DEFAULTS: dict[str, Rate] = {
    "image": Rate(2e-7, 0.5),
    "video": Rate(1.56e-7, 2.1),
    "lipsync": Rate(1.56e-7, 2.1),
    "animate": Rate(1.56e-7, 2.1),
    "upscale": Rate(1.0),
    "tts": Rate(2.0),
    "separate": Rate(5.0),
    "animate_prep": Rate(3.0),
    "assemble": Rate(1.0),
}
# The tiny profile's models on a CPU core (2-step 64x64 image ~0.1 s, 9-frame 32x32 video ~0.1 s).
TINY_DEFAULTS: dict[str, Rate] = {
    "image": Rate(1.2e-5, 0.05),
    "video": Rate(5e-6, 0.05),
    "lipsync": Rate(5e-6, 0.05),
    "animate": Rate(5e-6, 0.05),
    "upscale": Rate(0.2),
    "tts": Rate(0.3),
}
OTHER = Rate(0.5)      # a kind neither table names


@dataclass(frozen=True)
class Estimate:
    seconds: float
    source: str          # "measured" | "earlier runs" | "table"


def work(kind: str, params: dict[str, Any], segments: int | None = None) -> float:
    """Units of work of a stage: steps x frames x pixels (x segments) for a kind that denoises,
    else 1."""
    if kind not in SCALED:
        return 1.0
    steps = _positive(params.get("steps")) or 1
    if kind == "image":
        frames = 1
    elif kind == "lipsync":
        frames = _positive(params.get("infer_frames")) or 1
    elif kind == "animate":
        frames = _positive(params.get("frame_window")) or 1
    else:
        frames = _positive(params.get("frames")) or 1
    pixels = (_positive(params.get("width")) or 1) * (_positive(params.get("height")) or 1)
    return float(steps * frames * pixels * (segments or 1))


@dataclass
class History:
    """What earlier renders measured: seconds per stage key, seconds per unit of work per
    (kind, model)."""

    by_key: dict[str, float] = field(default_factory=dict)
    rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    @classmethod
    def from_folders(cls, folders: Iterable[Path]) -> "History":
        """Read ``manifest.json`` and ``render.lock`` of each output folder (missing, oversized
        or unreadable files add nothing)."""
        history = cls()
        seen: set[Path] = set()
        for folder in folders:
            folder = Path(folder)
            if folder in seen:
                continue
            seen.add(folder)
            manifest = read_manifest(folder / "manifest.json")
            if manifest is not None:
                history.add(manifest, Lock.read(folder / "render.lock"))
        return history

    def add(self, manifest: dict[str, Any], lock: Lock) -> None:
        """Add the measurements of one manifest; params come from the lock written with it."""
        rows = manifest.get("stages")
        if not isinstance(rows, list):
            return
        for row in rows:
            if not isinstance(row, dict) or row.get("status") not in ("ran", "cached"):
                continue
            seconds, kind, sid = row.get("seconds"), row.get("kind"), row.get("id")
            if not _finite_positive(seconds) or not isinstance(kind, str) or not isinstance(sid, str):
                continue
            if isinstance(row.get("key"), str):
                self.by_key[row["key"]] = float(seconds)
            entry = lock.stages.get(sid)
            model = row.get("model", "")          # a stage without a model has none
            if entry is None or not isinstance(model, str) or entry.kind != kind:
                continue
            facts = row.get("facts") if isinstance(row.get("facts"), dict) else {}
            units = work(kind, entry.params, _positive(facts.get("segments")))
            self.rates.setdefault((kind, model), []).append(float(seconds) / units)

    def rate(self, kind: str, model: str | None) -> float | None:
        found = self.rates.get((kind, model or ""))
        return statistics.median(found) if found else None


def estimate(st: PlannedStage, history: History, tiny: bool, segments: int | None = None) -> Estimate:
    """Expected seconds of one stage."""
    if st.key and st.key in history.by_key:
        return Estimate(history.by_key[st.key], "measured")
    kind = st.node.kind
    units = work(kind, st.params, segments)
    rate = history.rate(kind, model_label(st))
    if rate is not None:
        return Estimate(rate * units, "earlier runs")
    table = (TINY_DEFAULTS if tiny else {}).get(kind) or DEFAULTS.get(kind) or OTHER
    return Estimate(table.per_unit * units + table.fixed, "table")


def plan_costs(plan: Plan, history: History | None = None) -> dict[str, Estimate]:
    """The expected seconds of every stage the plan runs. ``history``: what earlier renders
    measured (None: this spec's own output folder)."""
    if history is None:
        history = History.from_folders([plan.loaded.output_dir])
    out = {}
    for st in plan.to_run():
        out[st.id] = estimate(st, history, _tiny(plan, st), _segments(plan, st))
    return out


def model_label(st: PlannedStage) -> str | None:
    """The model as a manifest row names it: ``id@revision``."""
    return f"{st.model['id']}@{st.model['revision']}" if st.model else None


def total(costs: dict[str, Estimate]) -> float:
    return sum(e.seconds for e in costs.values())


def format_seconds(seconds: float) -> str:
    """``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _tiny(plan: Plan, st: PlannedStage) -> bool:
    if not st.node.model_role:
        return False
    try:
        return bool(plan.registry.spec(st.node.model_role, st.node.model_name).tiny)
    except Exception:  # noqa: BLE001 - an unknown model is the render's error to report
        return False


def _segments(plan: Plan, st: PlannedStage) -> int | None:
    if st.node.kind != "lipsync":
        return None
    from .segments import stage_segments

    seg = stage_segments(plan, st.id)
    return seg.count if seg is not None else None


def read_manifest(path: Path) -> dict[str, Any] | None:
    """An output folder's ``manifest.json``, or None when it is missing, unreadable, over
    ``MAX_MANIFEST_BYTES`` or not a mapping."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _positive(x: Any) -> int | None:
    return int(x) if isinstance(x, int) and not isinstance(x, bool) and x > 0 else None
