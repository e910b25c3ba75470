"""Plan views for the CLI: table, JSON, mermaid, status.

Stages that make segments say how many (``3 segments``; a chained video's stages ``segment 2/3``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .planner import Plan
from .segments import stage_segments


def as_json(plan: Plan) -> dict[str, Any]:
    stages = []
    for nid in plan.order:
        st = plan.stages[nid]
        model = f"{st.model['id']}@{st.model['revision']}" if st.model else None
        stages.append({"id": nid, "kind": st.node.kind, "scene": st.node.scene, "key": st.key,
                       "model": model, "status": st.status,
                       "reason": str(st.reason) if st.status == "run" else None,
                       "inputs": sorted(set(st.node.upstream())),
                       **_segments_json(plan, nid)})
    return {"project": plan.project, "stages": stages}


def _segments_json(plan: Plan, nid: str) -> dict[str, Any]:
    seg = stage_segments(plan, nid)
    return seg.as_json() if seg is not None else {}


def _segments_text(plan: Plan, nid: str) -> str:
    seg = stage_segments(plan, nid)
    return str(seg) if seg is not None else ""


def as_table(plan: Plan) -> str:
    rows = [("stage", "kind", "status", "segments", "key", "reason")]
    for nid in plan.order:
        st = plan.stages[nid]
        rows.append((nid, st.node.kind, st.status, _segments_text(plan, nid), (st.key or "pending")[:12],
                     str(st.reason) if st.status == "run" else ""))
    if not any(r[3] for r in rows[1:]):
        rows = [r[:3] + r[4:] for r in rows]
    n = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(n)) + "  " + r[n] for r in rows]
    c = plan.counts()
    lines.append(f"{c['run']} to run, {c['cached']} cached" + (f", {c['skip']} skipped" if c["skip"] else ""))
    return "\n".join(line.rstrip() for line in lines)


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
