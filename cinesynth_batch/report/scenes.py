"""The report's rows: one per scene in assembly order (its stills, upscaled stills, clips with
their previews, sounds with their waveforms, status), the final videos, and the failures to
show first."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import Any

from .previews import CLIPS, SOUNDS, STILLS


def scene_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    stages = [r for r in m.get("stages", []) if isinstance(r, dict)]
    order = list(dict.fromkeys([s for s in m.get("scene_order", []) if isinstance(s, str)]
                               + [r["scene"] for r in stages if r.get("scene")]))
    return [_row(sid, [r for r in stages if r.get("scene") == sid], m) for sid in order]


def final_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """The outputs of stages of no scene (the assembled videos)."""
    return [_row(r["id"], [r], m) for r in m.get("stages", []) if isinstance(r, dict) and not r.get("scene")]


def failures(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Each failed stage with the first line of its error, the whole error, and what it blocked."""
    rows = [r for r in m.get("stages", []) if isinstance(r, dict)]
    blocked = [r["id"] for r in rows if r.get("status") == "blocked"]
    return [{"id": r["id"], "scene": r.get("scene"), "kind": r.get("kind"),
             "first": first_line(r.get("error")), "error": str(r.get("error") or ""), "blocked": blocked}
            for r in rows if r.get("status") == "failed"]


def resume_command(m: dict[str, Any]) -> str:
    """The command that renders the spec again: finished stages come from the cache."""
    parts = ["cinesynth", "render", str(m.get("spec", "SPEC"))]
    if m.get("profile"):
        parts += ["--profile", str(m["profile"])]
    return " ".join(shlex.quote(p) for p in parts) + " --keep-going"


def first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else ""


def _row(name: str, stages: list[dict[str, Any]], m: dict[str, Any]) -> dict[str, Any]:
    files = m.get("files") if isinstance(m.get("files"), dict) else {}
    previews = m.get("previews") if isinstance(m.get("previews"), dict) else {}
    thumbs = m.get("thumbs") if isinstance(m.get("thumbs"), dict) else {}
    row: dict[str, Any] = {"id": name, "stills": [], "upscaled": [], "clips": [], "sounds": [], "other": [],
                           "stages": stages, "status": _status(stages), "error": ""}
    failed = [s for s in stages if s.get("status") == "failed"]
    if failed:
        row["error"] = f"{failed[0]['id']}: {first_line(failed[0].get('error'))}"
    for s in stages:
        rel = s.get("publish")
        if not isinstance(rel, str) or rel not in files:
            continue
        item = {"src": rel, "stage": s["id"], "status": s.get("status"), "facts": files[rel],
                **{role: {"src": name, **_size(thumbs.get(name))}
                   for role, name in (previews.get(rel) or {}).items()}}
        suffix = PurePosixPath(rel).suffix.lower()
        if suffix in CLIPS:
            row["clips"].append(item)
        elif suffix in STILLS:
            row["upscaled" if s.get("kind") == "upscale" else "stills"].append(item)
        elif suffix in SOUNDS:
            row["sounds"].append(item)
        else:
            row["other"].append(item)
    heard = {i["wave"]["src"] for i in row["sounds"] if i.get("wave")}
    for clip in row["clips"]:       # speech shown once: beside its sound when both are published
        if clip.get("wave") and clip["wave"]["src"] in heard:
            del clip["wave"]
    return row


def _status(stages: list[dict[str, Any]]) -> str:
    states = {s.get("status") for s in stages}
    for status, label in (("failed", "failed"), ("blocked", "blocked"), ("ran", "made now")):
        if status in states:
            return label
    return "cached" if states else "nothing"


def _size(info: Any) -> dict[str, Any]:
    if not isinstance(info, dict):
        return {}
    out: dict[str, Any] = {k: info[k] for k in ("width", "height") if isinstance(info.get(k), int)}
    if isinstance(info.get("seconds"), (int, float)) and not isinstance(info["seconds"], bool):
        out["seconds"] = float(info["seconds"])
    return out
