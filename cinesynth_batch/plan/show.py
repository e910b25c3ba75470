"""Plan views for the CLI: table, JSON, mermaid, status.

Stages that make segments say how many (``3 segments``; a chained video's stages ``segment 2/3``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cost import Estimate, format_seconds, total
from .planner import Plan
from .segments import stage_segments


def as_json(plan: Plan, costs: dict[str, Estimate] | None = None) -> dict[str, Any]:
    """``costs``: the expected seconds of the stages to run (``plan/cost.py``), added as
    ``estimate`` per stage and ``estimated_seconds`` for the plan."""
    stages = []
    for nid in plan.order:
        st = plan.stages[nid]
        model = f"{st.model['id']}@{st.model['revision']}" if st.model else None
        stages.append({"id": nid, "kind": st.node.kind, "scene": st.node.scene, "key": st.key,
                       "model": model, "status": st.status,
                       "reason": str(st.reason) if st.status == "run" else None,
                       "inputs": sorted(set(st.node.upstream())),
                       **_segments_json(plan, nid)})
        if costs is not None and nid in costs:
            stages[-1]["estimate"] = {"seconds": round(costs[nid].seconds, 3), "from": costs[nid].source}
    out: dict[str, Any] = {"project": plan.project, "stages": stages}
    if costs is not None:
        out["estimated_seconds"] = round(total(costs), 3)
    return out


def _segments_json(plan: Plan, nid: str) -> dict[str, Any]:
    seg = stage_segments(plan, nid)
    return seg.as_json() if seg is not None else {}


def _segments_text(plan: Plan, nid: str) -> str:
    seg = stage_segments(plan, nid)
    return str(seg) if seg is not None else ""


def as_table(plan: Plan, costs: dict[str, Estimate] | None = None) -> str:
    """One row per stage; with ``costs``, an ``estimate`` column for the stages to run and the
    plan's estimated GPU time (and where the figures come from) at the end."""
    rows = [("stage", "kind", "status", "segments", "estimate", "key", "reason")]
    for nid in plan.order:
        st = plan.stages[nid]
        est = format_seconds(costs[nid].seconds) if costs and nid in costs else ""
        rows.append((nid, st.node.kind, st.status, _segments_text(plan, nid), est,
                     (st.key or "pending")[:12], str(st.reason) if st.status == "run" else ""))
    keep = [i for i in range(len(rows[0])) if i not in (3, 4) or any(r[i] for r in rows[1:])]
    if costs is None:
        keep = [i for i in keep if i != 4]
    rows = [tuple(r[i] for i in keep) for r in rows]
    n = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(n)) + "  " + r[n] for r in rows]
    c = plan.counts()
    lines.append(f"{c['run']} to run, {c['cached']} cached" + (f", {c['skip']} skipped" if c["skip"] else ""))
    if costs is not None:
        lines.append(f"estimated GPU time: {format_seconds(total(costs))}" + _sources(costs))
    return "\n".join(line.rstrip() for line in lines)


def _sources(costs: dict[str, Estimate]) -> str:
    """`` (2 measured, 1 from earlier runs, 3 from the defaults table)``, what is there."""
    names = {"measured": "measured", "earlier runs": "from earlier runs", "table": "from the defaults table"}
    parts = [f"{n} {names[src]}" for src in names
             if (n := sum(e.source == src for e in costs.values()))]
    return f" ({', '.join(parts)})" if parts else ""


def as_mermaid(plan: Plan) -> str:
    def ident(nid: str) -> str:
        return "n_" + "".join(ch if ch.isalnum() else "_" for ch in nid)

    lines = ["flowchart LR"]
    for nid in plan.order:
        st = plan.stages[nid]
        seg = _segments_text(plan, nid)
        lines.append(f'  {ident(nid)}["{nid}<br/>{st.node.kind} · {st.status}'
                     + (f" · {seg}" if seg else "") + '"]')
    for nid in plan.order:
        for up in sorted(set(plan.graph[nid].upstream())):
            lines.append(f"  {ident(up)} --> {ident(nid)}")
    lines.append("  classDef run fill:#fde2c8;")
    lines.append("  classDef cached fill:#d8f0d8;")
    for status in ("run", "cached"):
        ids = [ident(n) for n in plan.order if plan.stages[n].status == status]
        if ids:
            lines.append(f"  class {','.join(ids)} {status};")
    return "\n".join(lines)


def as_status(plan: Plan, output_dir: Path) -> str:
    lines = [f"project {plan.project} · profile {plan.registry.name} · outputs {output_dir}"]
    for nid in plan.order:
        st = plan.stages[nid]
        mark = {"cached": "ok ", "run": "-> ", "skip": "   "}[st.status]
        tail = f"  ({st.reason})" if st.status == "run" else ""
        if st.node.kind == "download":
            tail += f"  {st.node.params['url']}"
        lines.append(f"{mark}{nid}{tail}")
    for node in plan.graph:
        if node.kind == "assemble" and node.publish:
            p = output_dir / node.publish
            lines.append(f"output {node.publish}: {'present' if p.is_file() else 'missing'}")
    c = plan.counts()
    lines.append(f"{c['run']} to run, {c['cached']} cached")
    return "\n".join(lines)
