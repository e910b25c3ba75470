"""Why a stage runs, as flags that render to one sentence (like Snakemake's ``Reason``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..cache.lock import LockEntry


@dataclass
class Reason:
    forced: bool = False
    new: bool = False
    missing: bool = False
    damaged: bool = False
    model: bool = False
    params: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.forced, self.new, self.missing, self.damaged, self.model, self.params,
                    self.inputs, self.upstream))

    def __str__(self) -> str:
        parts = []
        if self.forced:
            parts.append("forced")
        if self.new:
            parts.append("new stage (no earlier render)")
        if self.model:
            parts.append("model changed")
        if self.params:
            parts.append("parameters changed: " + ", ".join(self.params))
        if self.inputs:
            parts.append("input changed: " + ", ".join(self.inputs))
        if self.upstream:
            parts.append("upstream runs: " + ", ".join(self.upstream))
        if self.damaged:
            parts.append("cached artifact was damaged")
        if self.missing and not parts:
            parts.append("missing: artifact not in cache")
        return "; ".join(parts) or "up to date"


def explain(prev: LockEntry | None, model: dict[str, Any] | None, params: dict[str, Any],
            inputs: dict[str, Any], upstream_running: list[str],
            labels: dict[str, str] | None = None) -> Reason:
    """Compare what a stage would be built from with what the lock says it was built from.

    ``inputs`` maps input names to digests; a digest of None means the input is produced by
    an upstream stage that runs first (named in ``upstream_running``). ``labels`` says how to
    name a changed input (its spec field and source, see ``planner.input_labels``).
    """
    reason = Reason(upstream=list(upstream_running))
    if prev is None:
        reason.new = True
        return reason
    reason.model = (prev.model or None) != (model or None)
    reason.params = [k for k in sorted(set(prev.params) | set(params))
                     if prev.params.get(k) != params.get(k)]
    labels = labels or {}
    reason.inputs = [labels.get(k, k)
                     for k in sorted(set(prev.inputs) | set(inputs))
                     if inputs.get(k, "") is not None and prev.inputs.get(k) != inputs.get(k)]
    reason.missing = True
    return reason
