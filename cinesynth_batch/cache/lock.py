"""``render.lock``: what each stage was last rendered from and what it produced.

Like ``dvc.lock``: one entry per stage with its content key, model identity, canonical
parameters (the seed actually used included), input digests and output digest. It holds no
timestamps, so two renders of the same spec write the same lock. Seeds drawn for ``seed: -1``
are read back from it, which is what makes a render repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .files import write_atomic

LOCK_SCHEMA = 1
#: a larger lock is not read (as if there were none): about 30 times that of 5,000 scenes of four
#: stages; a crafted one cannot hold a render for minutes and gigabytes of RAM
MAX_LOCK_BYTES = 32 << 20

# libyaml's safe loader and dumper when present (the same documents, parsed ~10x faster)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass
class LockEntry:
    kind: str
    key: str
    model: dict[str, Any] | None
    params: dict[str, Any]
    inputs: dict[str, Any]
    output: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "model": self.model, "params": self.params,
                "inputs": self.inputs, "output": self.output}


@dataclass
class Lock:
    project: str = ""
    profile: str = ""
    stages: dict[str, LockEntry] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)   # seeds drawn for `seed: -1`

    @classmethod
    def read(cls, path: Path) -> "Lock":
        try:
            if not path.is_file() or path.stat().st_size > MAX_LOCK_BYTES:
                return cls()
            data = yaml.load(path.read_text(), Loader=_Loader) or {}
        except (OSError, ValueError, yaml.YAMLError):
            return cls()
        if not isinstance(data, dict) or data.get("schema") != LOCK_SCHEMA:
            return cls()
        stages = {}
        for node_id, e in _mapping(data.get("stages")).items():
            entry = _entry(e)
            if isinstance(node_id, str) and entry is not None:      # a row of another shape is not read
                stages[node_id] = entry
        seeds = {k: v for k, v in _mapping(data.get("seeds")).items()
                 if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}
        return cls(project=_text(data.get("project")), profile=_text(data.get("profile")), stages=stages,
                   outputs=_mapping(data.get("outputs")), seeds=seeds)

    def seed_for(self, node_id: str) -> int | None:
        if node_id in self.seeds:
            return self.seeds[node_id]
        entry = self.stages.get(node_id)
        if entry is None:
            return None
        seed = entry.params.get("seed")
        return seed if isinstance(seed, int) and seed >= 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": LOCK_SCHEMA,
            "project": self.project,
            "profile": self.profile,
            "stages": {k: self.stages[k].to_dict() for k in sorted(self.stages)},
            "outputs": {k: self.outputs[k] for k in sorted(self.outputs)},
            "seeds": {k: self.seeds[k] for k in sorted(self.seeds)},
        }

    def write(self, path: Path) -> None:
        text = yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=True, allow_unicode=True, width=100)
        write_atomic(path, text)


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _entry(e: Any) -> LockEntry | None:
    """A stage's row as the lock holds it, or None when it is not one (the lock is read back
    from disk, where anyone may have edited it)."""
    if not isinstance(e, dict) or not isinstance(e.get("kind"), str) or not isinstance(e.get("key"), str):
        return None
    model = e.get("model")
    return LockEntry(e["kind"], e["key"], model if isinstance(model, dict) else None, _mapping(e.get("params")),
                     _mapping(e.get("inputs")), _mapping(e.get("output")))
