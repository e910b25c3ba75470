"""What the cache reliability tests share: a small spec, its stages, and checks of a store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from projects import new_project

# Six stages, one model (the tiny video pipeline): three PyAV stages run before the model is
# imported, so most stage boundaries are reached within seconds of the render's start.
SPEC = """project: k
profile: tiny
defaults: {resolution: 64x64, fps: 8, seed: 3}
scenes:
  - id: a
    video:
      image: {frame: {source: assets/dance.mp4, at: first}}
      prompt: "a dancer turns"
      frames: 5
      steps: 1
    audio: {extract: {source: assets/dance.mp4, end: 0.6}}
  - id: b
    video:
      image: {frame: {source: assets/dance.mp4, at: 0.5}}
      prompt: "a dancer bows"
      frames: 5
      steps: 1
"""
STAGES = {"a.extract_audio", "a.image_frame", "b.image_frame", "a.video", "b.video", "assemble.final"}
FINAL = Path("outputs/k/final.mp4")


def make_project(root: Path) -> Path:
    """A fresh project holding ``k.yaml``; returns the spec's path."""
    return new_project(root, "k.yaml", SPEC)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:          # a line cut by a kill
            pass
    return out


def stages_with(evs: list[dict], kind: str) -> list[str]:
    return [e["stage"] for e in evs if e["event"] == kind]


def check_store(cache: Path) -> dict[str, str]:
    """Every object hashes to its name and every key names a whole object; returns key -> digest."""
    for obj in (cache / "objects").glob("*/*"):
        digest, _, ext = obj.name.partition(".")
        assert len(digest) == 64 and not obj.name.endswith(".tmp"), f"stray file in objects: {obj}"
        assert sha(obj) == digest, f"object {obj.name} does not hash to its name"
    keys = {}
    for kp in (cache / "keys").glob("*/*"):
        if kp.name.startswith(".") and kp.name.endswith(".tmp"):
            continue                # a key write cut by a kill: never read as a key
        assert kp.name.endswith(".json"), f"stray key file {kp}"
        entry = json.loads(kp.read_text())
        obj = cache / "objects" / entry["digest"][:2] / f"{entry['digest']}{entry['ext']}"
        assert obj.is_file() and obj.stat().st_size == entry["size"], f"key {kp.name} names no object"
        keys[kp.name[:-len(".json")]] = entry["digest"]
    return keys
