"""What a render cost, from its manifest rows and memory table: the figures the report draws
(a timeline of the stages that ran, seconds by stage kind and by model, cache hits, model
loads, swaps, bytes moved, peak memory) and the short history of the last renders.

A render that runs nothing keeps the figures of the last render that did, dated by it; the
history holds one small entry per render that ran something, newest first.
"""

from __future__ import annotations

import math
from typing import Any

HISTORY = 6          # renders kept side by side
MAX_BARS = 5000      # a timeline never draws more bars than this
MAX_SPLIT = 64       # ranks one stage may be split over (one node's GPUs)


def figures(rows: list[dict[str, Any]], memory: dict[str, Any], rendered_at: str,
            seconds: float) -> dict[str, Any]:
    """The figures of one render (``rows``: the manifest's stage rows with their spans). A stage
    split over several ranks (``ranks``) counts its seconds once per rank in the totals by kind
    and by model (device-seconds), and its bar has the other ranks' lanes as ``shares``."""
    spans = [r for r in rows if _number(r.get("started_at")) is not None
             and _number(r.get("ended_at")) is not None]
    origin = min((r["started_at"] for r in spans), default=0.0)
    bars = [_bar(r, origin) for r in spans[:MAX_BARS]]
    by_kind: dict[str, float] = {}
    by_model: dict[str, float] = {}
    for b, r in zip(bars, spans):
        took = (b["end"] - b["start"]) * (1 + len(b.get("shares", ())))
        by_kind[b["kind"]] = by_kind.get(b["kind"], 0.0) + took
        if r.get("model"):
            by_model[r["model"]] = by_model.get(r["model"], 0.0) + took
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ran", "cached", "failed", "blocked")}
    looked = counts["ran"] + counts["cached"] + counts["failed"]
    devices = [str(r.get("device", "")) for r in memory.get("ranks", [])]
    return {
        "rendered_at": rendered_at,
        "seconds": seconds,
        "device_seconds": "GPU-seconds" if any(d.startswith("cuda") for d in devices) else "CPU-seconds",
        "by_kind": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "by_model": {k: round(v, 3) for k, v in sorted(by_model.items(), key=lambda kv: -kv[1])},
        **counts,
        "hit_rate": round(counts["cached"] / looked, 3) if looked else None,
        "loads": memory.get("loads", 0), "swaps": memory.get("swaps", 0),
        "bytes_moved": memory.get("bytes_moved", 0), "peak_gpu_bytes": memory.get("peak_gpu_bytes"),
        "pinned_bytes": memory.get("pinned_bytes", 0),
        "bars": bars,
    }


def _bar(r: dict[str, Any], origin: float) -> dict[str, Any]:
    lane = str(r.get("lane") or "rank 0")
    bar = {"stage": r["id"], "kind": r["kind"], "lane": lane, "status": r["status"],
           "start": round(r["started_at"] - origin, 3), "end": round(r["ended_at"] - origin, 3)}
    ranks = r.get("ranks")
    if isinstance(ranks, list) and 1 < len(ranks) <= MAX_SPLIT and all(_rank_ok(k) for k in ranks):
        bar["shares"] = [f"rank {k}" for k in dict.fromkeys(ranks) if f"rank {k}" != lane]
    if isinstance(r.get("node"), str):
        bar["node"] = r["node"]
    return bar


def _rank_ok(k: Any) -> bool:
    return isinstance(k, int) and not isinstance(k, bool) and 0 <= k < 1_000_000


def history_entry(fig: dict[str, Any], summary: str) -> dict[str, Any]:
    """One render's line in the history (small: no bars)."""
    return {"rendered_at": fig["rendered_at"], "seconds": fig["seconds"], "summary": summary,
            "by_kind": fig["by_kind"], "loads": fig["loads"], "swaps": fig["swaps"]}


def history(previous: Any, entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The new history: ``entry`` (None for a render that ran nothing) before the earlier
    renders' entries that still read as entries, at most ``HISTORY``."""
    kept = [h for h in (previous if isinstance(previous, list) else []) if _entry_ok(h)]
    return ([entry] if entry else []) + kept[: HISTORY - (1 if entry else 0)]


def carried_figures(previous: Any) -> dict[str, Any] | None:
    """An earlier manifest's figures, when they read as figures (the file may have been edited)."""
    if not isinstance(previous, dict) or not isinstance(previous.get("rendered_at"), str):
        return None
    if not isinstance(previous.get("bars"), list) or not isinstance(previous.get("by_kind"), dict):
        return None
    bars = [b for b in previous["bars"][:MAX_BARS] if _bar_ok(b)]
    return {**previous, "bars": bars}


def _entry_ok(h: Any) -> bool:
    return isinstance(h, dict) and isinstance(h.get("rendered_at"), str) \
        and _number(h.get("seconds")) is not None and isinstance(h.get("by_kind"), dict)


def _bar_ok(b: Any) -> bool:
    shares = b.get("shares", []) if isinstance(b, dict) else None
    return isinstance(b, dict) and all(isinstance(b.get(k), str) for k in ("stage", "kind", "lane", "status")) \
        and _number(b.get("start")) is not None and _number(b.get("end")) is not None \
        and isinstance(shares, list) and len(shares) < MAX_SPLIT and all(isinstance(x, str) for x in shares) \
        and isinstance(b.get("node", ""), str)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)
