"""After a render: copy artifacts to the output folder, write render.lock, manifest, report.

Nothing is written or deleted outside the output folder: published paths come from the plan
and are checked again here; a path read from an earlier ``manifest.json`` is only removed when
it is a regular file inside the folder whose bytes are the ones that manifest says were
published (anything else is left alone, with a warning). Every object is hashed while it is
copied out of the cache; a damaged one is dropped and never reaches an output.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from ..cache.digest import CHUNK, sha256_file
from ..cache.files import open_fresh, temp_beside, write_atomic
from ..cache.lock import Lock
from ..cache.store import Entry
from ..errors import RenderError
from ..plan.cost import read_manifest
from ..plan.planner import Plan
from ..report.figures import carried_figures, figures, history, history_entry
from .runner import Outcome

Warn = Callable[[str], None]


class DamagedOnPublish(RenderError):
    """Objects that failed their digest while being published (dropped from the cache)."""

    def __init__(self, stages: list[str]):
        super().__init__(f"cached artifact of {', '.join(stages)} was damaged",
                         hint="render again: the stage runs again")
        self.stages = stages


class UnsafeOutputPath(RenderError):
    """A published path that would leave the output folder."""


def publish(plan: Plan, outcome: Outcome, output_dir: Path, lock_path: Path,
            started: float, events: list[dict[str, Any]] | None = None,
            warn: Warn | None = None) -> dict[str, Any]:
    """Write outputs, ``render.lock``, ``manifest.json`` and ``report.html``; return the manifest."""
    warn = warn or plan.cache.warn
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(output_dir / "manifest.json") or {}
    published = _place_all(plan, outcome, output_dir, warn)
    _remove_stale(plan, previous, published, output_dir, warn)
    _write_lock(plan, outcome, published, lock_path)
    plan.digests.save()

    rows = [_stage_row(plan, outcome, nid) for nid in plan.order]
    previews, thumbs = _previews(output_dir, published, previous, warn)
    manifest = {
        "project": plan.project,
        "spec": plan.loaded.display,
        "profile": plan.registry.name,
        "rendered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
        "summary": outcome.summary(),
        "model_loads": outcome.model_loads,
        "model_swaps": outcome.model_swaps,
        "memory": memory_table(outcome.memory, [outcome.meta[n] for n in outcome.ran if n in outcome.meta]),
        "fast_paths": outcome.fast_paths,
        "scene_order": scene_order(plan),
        "stages": rows,
        "files": published,
        "previews": previews,
        "thumbs": thumbs,
    }
    nothing_ran = not outcome.ran and not outcome.failed
    fig = figures(rows, manifest["memory"], manifest["rendered_at"], manifest["seconds"])
    manifest["figures"] = fig
    manifest["history"] = history(previous.get("history"),
                                  None if nothing_ran else history_entry(fig, manifest["summary"]))
    carry_over(manifest, previous, nothing_ran=nothing_ran)
    write_atomic(output_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=False))
    from ..report.html import render_report

    write_atomic(output_dir / "report.html", render_report(manifest))
    return manifest


# -- outputs -----------------------------------------------------------------------------------

def _place_all(plan: Plan, outcome: Outcome, output_dir: Path, warn: Warn) -> dict[str, dict[str, Any]]:
    published: dict[str, dict[str, Any]] = {}
    damaged: list[str] = []
    for nid in plan.order:
        node = plan.graph[nid]
        entry = outcome.entries.get(nid)
        if entry is None or node.publish is None:
            continue
        if not _place(plan, entry, output_dir, node.publish, warn):
            damaged.append(nid)
            continue
        published[node.publish] = {"stage": nid, "kind": node.kind, "scene": node.scene,
                                   "digest": entry.digest, "size": entry.size, **_media_facts(entry.meta)}
        speech = outcome.lock[nid].inputs.get("audio") if nid in outcome.lock else None
        if isinstance(speech, str):            # a clip made from speech (lipsync): its waveform
            published[node.publish]["audio_digest"] = speech
    if damaged:
        raise DamagedOnPublish(damaged)
    return published


def _place(plan: Plan, entry: Entry, output_dir: Path, rel: str, warn: Warn) -> bool:
    """Copy the entry's object to ``output_dir/rel``, hashing as it copies. False (and the
    object dropped) when its bytes are not its digest."""
    dest = _dest(output_dir, rel, warn)
    if _holds(plan, dest, entry.digest):
        return True
    source = plan.cache.object_path(entry.digest, entry.ext)
    tmp = temp_beside(dest)
    try:
        digest = _copy_hashing(source, tmp)
        if digest != entry.digest:
            plan.cache.drop_damaged(entry)
            return False
        os.replace(tmp, dest)                     # replaces a link at dest, never follows it
    finally:
        _unlink(tmp)
    plan.digests.digest(dest)
    return True


def _dest(output_dir: Path, rel: str, warn: Warn) -> Path:
    """``output_dir/rel`` with real folders (not links) between them, made as needed."""
    parts = _relative_parts(rel)
    if parts is None:
        raise UnsafeOutputPath(f"output path '{rel}' leaves the output folder")
    folder = output_dir
    for name in parts[:-1]:
        folder = folder / name
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            warn(f"'{folder}' is not a folder (a link or a file); replacing it with a folder")
            folder.unlink()
        folder.mkdir(exist_ok=True)
    return folder / parts[-1]


def _holds(plan: Plan, dest: Path, digest: str) -> bool:
    """Whether ``dest`` is a regular file (not a link) that already has these bytes."""
    try:
        if not stat.S_ISREG(os.lstat(dest).st_mode):
            return False
        return plan.digests.digest(dest) == digest
    except OSError:
        return False


def _copy_hashing(source: Path, tmp: Path) -> str:
    h = hashlib.sha256()
    fd = open_fresh(tmp)
    with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            dst.write(chunk)
    return h.hexdigest()


# -- files of earlier renders ------------------------------------------------------------------

def _remove_stale(plan: Plan, previous: dict[str, Any], published: dict[str, Any],
                  output_dir: Path, warn: Warn) -> None:
    """Delete files an earlier render published for stages that are gone from the spec."""
    files = previous.get("files")
    if not isinstance(files, dict):
        return
    for old, info in files.items():
        if old in published:
            continue
        stage = info.get("stage") if isinstance(info, dict) else None
        if isinstance(stage, str) and stage in plan.graph.nodes:
            continue
        remove_earlier(output_dir, old, info, "output", warn)


def published_before(output_dir: Path, rel: Any, info: Any) -> tuple[Path | None, str | None]:
    """The file an earlier manifest names, if it is safe to remove: (path, None); (None, None)
    when it is already gone; (None, why) when the entry is not to be trusted."""
    parts = _relative_parts(rel)
    if parts is None:
        return None, "the path is not inside the output folder"
    path = output_dir.joinpath(*parts)
    root = os.path.realpath(output_dir)
    if os.path.commonpath([root, os.path.realpath(path.parent)]) != root:
        return None, "its folder leads outside the output folder"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"it cannot be read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return None, "it is not a regular file (a link or a folder)"
    digest = info.get("digest") if isinstance(info, dict) else None
    if not isinstance(digest, str) or sha256_file(path) != digest:
        return None, "its bytes are not the ones the manifest says were published"
    return path, None


def _relative_parts(rel: Any) -> list[str] | None:
    """The parts of a relative path that stays inside its folder, or None."""
    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
        return None
    p = PurePosixPath(rel)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or p.parts == (".",):
        return None
    parts = [part for part in p.parts if part != "."]
    return parts or None


def _show(rel: Any) -> str:
    text = str(rel)
    return (text[:120] + "…") if len(text) > 120 else text


# -- previews -----------------------------------------------------------------------------------

def _previews(output_dir: Path, published: dict[str, Any], previous: dict[str, Any],
              warn: Warn) -> tuple[dict[str, Any], dict[str, Any]]:
    """Previews of the published stills and clips in ``thumbs/`` (``report/previews.py``); the
    previews of an earlier render that no output uses now are removed (when their bytes are the
    ones its manifest recorded)."""
    from ..report.previews import THUMBS, make_previews

    _dest(output_dir, f"{THUMBS}/-", warn)               # a real folder, not a link
    earlier = previous.get("thumbs") if isinstance(previous.get("thumbs"), dict) else {}
    previews, thumbs = make_previews(output_dir, published, earlier, warn)
    for old, info in earlier.items():
        if old in thumbs or not isinstance(old, str) or not old.startswith(f"{THUMBS}/"):
            continue
        remove_earlier(output_dir, old, info, "preview", warn)
    return previews, thumbs


def scene_order(plan: Plan) -> list[str]:
    """Scenes in the order the first assembled video plays them, then the others as written."""
    spec = plan.loaded.spec
    written = [s.id for s in spec.scenes]
    first = spec.assemble[0].scenes if spec.assemble and spec.assemble[0].scenes else []
    return list(dict.fromkeys([s for s in first if s in written] + written))


# -- lock and manifest -------------------------------------------------------------------------

def _write_lock(plan: Plan, outcome: Outcome, published: dict[str, Any], lock_path: Path) -> None:
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


def remove_earlier(output_dir: Path, old: str, info: Any, what: str, warn: Warn) -> None:
    """Remove a file an earlier manifest lists as its ``what`` (output, preview) when it is still
    the file that render published (``published_before``); otherwise leave it and say why."""
    path, problem = published_before(output_dir, old, info)
    if problem:
        warn(f"manifest.json lists '{_show(old)}' as an earlier {what}, but {problem}; leaving it alone")
    elif path is not None:
        path.unlink()


def memory_table(ranks: list[dict[str, Any]], facts: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """The manifest's ``memory``: one entry per rank (``runner.rank_memory``) and the render's
    totals (peak GPU memory: the largest of the ranks', None when none ran on CUDA); ``moves`` /
    ``moved_in_pipelines``: the components the stages that ran moved inside their pipelines
    (``runtime/placement.py``, from each run's ``facts``) and their bytes, both ways."""
    rows = sorted(ranks, key=lambda r: r["rank"])
    peaks = [r["peak_gpu_bytes"] for r in rows if r.get("peak_gpu_bytes") is not None]
    totals = {k: sum(r[k] for r in rows) for k in ("loads", "swaps", "bytes_moved", "pinned_bytes")}
    moves = [m for f in facts if isinstance(f, dict) and isinstance(f.get("placement"), dict)
             for m in f["placement"].get("moves", []) if isinstance(m, dict)]
    return {"ranks": rows, **totals, "moves": len(moves),
            "moved_in_pipelines": sum(int(m.get("bytes", 0)) for m in moves),
            "peak_gpu_bytes": max(peaks) if peaks else None}


def carry_over(manifest: dict[str, Any], previous: dict[str, Any], nothing_ran: bool) -> None:
    """Keep what earlier renders measured, marked as theirs: a cached stage keeps the seconds
    it took when it last ran (same key); a render that ran nothing keeps the model loads and
    the figures (timeline, seconds by kind and model, loads, memory) of the last render that
    did, dated by it."""
    rows = previous.get("stages")
    before = {r.get("id"): r for r in (rows if isinstance(rows, list) else []) if isinstance(r, dict)}
    for row in manifest["stages"]:
        old = before.get(row["id"])
        if row["status"] == "cached" and old and old.get("key") == row["key"] \
                and isinstance(old.get("seconds"), (int, float)):
            row["seconds"] = old["seconds"]
            row["seconds_from"] = "earlier render"
    if not nothing_ran:
        return
    earlier = previous.get("earlier_render")
    when = earlier.get("rendered_at") if isinstance(earlier, dict) else previous.get("rendered_at")
    carried = []
    loads = previous.get("model_loads")
    if isinstance(loads, dict) and loads:
        manifest["model_loads"] = loads
        swaps = previous.get("model_swaps")
        manifest["model_swaps"] = swaps if isinstance(swaps, dict) else {}
        carried += ["model_loads", "model_swaps"]
    fig = carried_figures(previous.get("figures"))
    if fig is not None and fig.get("bars"):
        manifest["figures"] = fig
        carried.append("figures")
    if carried:
        manifest["earlier_render"] = {"rendered_at": when, "carried": carried}


def _media_facts(meta: dict[str, Any]) -> dict[str, Any]:
    """Frames, duration, size and rate from a cache entry's meta (read back from disk: numbers only)."""
    keys = ("frames", "duration", "width", "height", "fps")
    return {k: meta[k] for k in keys if isinstance(meta.get(k), (int, float)) and not isinstance(meta[k], bool)
            and math.isfinite(meta[k])}


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
    span = outcome.spans.get(nid)
    if span and status in ("ran", "failed"):
        row["started_at"] = round(span["start"], 3)
        row["ended_at"] = round(span["end"], 3)
        row["lane"] = span.get("lane", "rank 0")
        if len(span.get("ranks", ())) > 1:     # split over several ranks (sequence parallel)
            row["ranks"] = list(span["ranks"])
        if span.get("node"):                   # the Ray node its worker ran on
            row["node"] = span["node"]
    if st.model:
        row["model"] = f"{st.model['id']}@{st.model['revision']}"
    if entry is not None:
        row["digest"] = entry.digest
        row["publish"] = st.node.publish
        row["facts"] = entry.meta
    return row


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass
