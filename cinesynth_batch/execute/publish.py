"""After a render: copy artifacts to the output folder, write render.lock, manifest, report."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..cache.lock import Lock
from ..plan.planner import Plan
from .runner import Outcome


def publish(plan: Plan, outcome: Outcome, output_dir: Path, lock_path: Path,
            started: float, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write outputs, ``render.lock``, ``manifest.json`` and ``report.html``; return the manifest."""
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_manifest(output_dir / "manifest.json")
    published: dict[str, dict[str, Any]] = {}
    for nid in plan.order:
        node = plan.graph[nid]
        entry = outcome.entries.get(nid)
        if entry is None or node.publish is None:
            continue
        dest = output_dir / node.publish
        _place(plan, entry.digest, plan.cache.object_path(entry.digest, entry.ext), dest)
        published[node.publish] = {"stage": nid, "kind": node.kind, "scene": node.scene,
                                   "digest": entry.digest, "size": entry.size, **_media_facts(entry.meta)}
    for old, info in previous.get("files", {}).items():
        gone = isinstance(info, dict) and info.get("stage") not in plan.graph.nodes
        if old not in published and gone and (output_dir / old).is_file():
            (output_dir / old).unlink()

    lock = plan.lock
    new_lock = Lock(project=plan.project, profile=plan.registry.name, seeds=dict(plan.seeds))
    for nid in plan.graph.nodes:
        if nid in outcome.lock:
            new_lock.stages[nid] = outcome.lock[nid]
        elif nid in lock.stages:
            new_lock.stages[nid] = lock.stages[nid]
    for rel, info in published.items():
        if plan.graph[info["stage"]].kind == "assemble":
            new_lock.outputs[rel] = {"stage": info["stage"], "digest": info["digest"]}
    new_lock.write(lock_path)
    plan.digests.save()

    manifest = {
        "project": plan.project,
        "spec": plan.loaded.display,
        "profile": plan.registry.name,
        "rendered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
        "summary": outcome.summary(),
        "model_loads": outcome.model_loads,
        "model_swaps": outcome.model_swaps,
        "stages": [_stage_row(plan, outcome, nid) for nid in plan.order],
        "files": published,
    }
    tmp = output_dir / f".manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False))
    os.replace(tmp, output_dir / "manifest.json")
    from ..report.html import write_report

    write_report(output_dir / "report.html", manifest)
    return manifest


def _place(plan: Plan, digest: str, source: Path, dest: Path) -> None:
    if dest.is_file():
        try:
            if plan.digests.digest(dest) == digest:
                return
        except OSError:
            pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)
    plan.digests.digest(dest)


def _media_facts(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("frames", "duration", "width", "height", "fps")
    return {k: meta[k] for k in keys if k in meta}


def _stage_row(plan: Plan, outcome: Outcome, nid: str) -> dict[str, Any]:
    st = plan.stages[nid]
    if nid in outcome.failed:
        status = "failed"
    elif nid in outcome.blocked:
        status = "blocked"
    elif nid in outcome.ran:
        status = "ran"
    elif nid in outcome.cached:
        status = "cached"
    else:
        status = st.status
    entry = outcome.entries.get(nid)
    row: dict[str, Any] = {"id": nid, "kind": st.node.kind, "scene": st.node.scene, "status": status,
                           "key": outcome.lock[nid].key if nid in outcome.lock else st.key}
    if status == "ran":
        row["reason"] = str(st.reason)
        row["seconds"] = round(outcome.seconds.get(nid, 0.0), 3)
    if status == "failed":
        row["error"] = outcome.failed[nid]
    if st.model:
        row["model"] = f"{st.model['id']}@{st.model['revision']}"
    if entry is not None:
        row["digest"] = entry.digest
        row["publish"] = st.node.publish
        row["facts"] = entry.meta
    return row


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
