"""Presets: named partial specs merged under what the spec says.

Lookup order for ``preset: NAME`` (first hit wins):

1. the spec's own top-level ``presets:`` mapping,
2. ``presets/NAME.yaml`` in the spec's folder,
3. ``presets/NAME.yaml`` in the project root,
4. the presets shipped with the package.

Merge rules:

* A preset may name ``extends: OTHER``; the chain is resolved base first, so each preset
  overrides what it extends, and a cycle is an error.
* Mappings merge key by key, recursively; everything else (strings, numbers, lists such as
  ``loras``) is replaced whole by the more specific side.
* The spec wins over its preset. Writing ``key: null`` in the spec removes a preset's value.
* ``description:`` in a preset is documentation and is dropped.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Problems, Where
from .yamlpos import LDict, load_yaml

PRESET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PACKAGE_PRESETS = Path(__file__).resolve().parent.parent / "presets"


def merge(base: Any, over: Any) -> Any:
    """Deep-merge ``over`` onto ``base`` (both left untouched); see the module rules."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base) if isinstance(base, LDict) else LDict(copy.deepcopy(base))
        for key, value in over.items():
            key_loc = over.key_locs.get(key) if isinstance(over, LDict) else None
            value_loc = over.value_locs.get(key) if isinstance(over, LDict) else None
            if value is None:
                out.pop(key, None)
                continue
            if key in out and isinstance(out[key], dict) and isinstance(value, dict):
                out.set(key, merge(out[key], value), key_loc, value_loc)
            else:
                out.set(key, copy.deepcopy(value), key_loc, value_loc)
        if isinstance(over, LDict) and over.loc is not None:
            out.loc = over.loc
        return out
    return copy.deepcopy(over)


@dataclass
class PresetLibrary:
    """Finds and resolves presets for one spec. Caches files it has read."""

    spec_dir: Path
    project_root: Path
    inline: dict[str, Any]
    display: Any  # callable Path -> str
    limits: Any = None  # config.Limits
    _cache: dict[str, tuple[Any, str]] = field(default_factory=dict)

    def search_path(self) -> list[Path]:
        dirs = [self.spec_dir / "presets", self.project_root / "presets", PACKAGE_PRESETS]
        seen: list[Path] = []
        for d in dirs:
            if d.resolve() not in [s.resolve() for s in seen]:
                seen.append(d)
        return seen

    def names(self) -> list[str]:
        found = set(self.inline)
        for d in self.search_path():
            if d.is_dir():
                found.update(p.stem for p in d.glob("*.yaml"))
        return sorted(found)

    def _find(self, name: str, problems: Problems) -> tuple[Any, str] | None:
        if name in self._cache:
            return self._cache[name]
        if name in self.inline:
            self._cache[name] = (self.inline[name], "spec")
            return self._cache[name]
        if not PRESET_NAME_RE.match(name):
            return None
        for d in self.search_path():
            f = d / f"{name}.yaml"
            if f.is_file():
                data = load_yaml(f, self.display(f), problems, self.limits)
                self._cache[name] = (data, self.display(f))
                return self._cache[name]
        return None

    def resolve(self, name: Any, where: Where | None, path: str, problems: Problems,
                chain: tuple[str, ...] = ()) -> LDict | None:
        """The fully extended mapping of preset ``name``, or None (with a problem added)."""
        if not isinstance(name, str):
            problems.add(f"{name!r} is not a preset name", where, path, hint="write preset: NAME")
            return None
        longest = getattr(self.limits, "name_chars", 128)
        if len(name) > longest:
            problems.add(f"preset name is {len(name)} characters, over the limit of {longest} (name_chars)",
                         where, path, hint="use a shorter preset name")
            return None
        if name not in self.inline and not PRESET_NAME_RE.match(name):
            problems.add(f"{name!r} is not a preset name", where, path,
                         hint="a preset name is letters, digits, '-', '_' and '.', not a path")
            return None
        if name in chain:
            cycle = " -> ".join(chain + (name,))
            problems.add(f"preset cycle: {cycle}", where, path,
                         hint=f"remove 'extends: {name}' from one of these presets")
            return None
        found = self._find(name, problems)
        if found is None:
            import difflib

            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"did you mean '{close[0]}'?" if close else (
                "add presets/" + name + ".yaml next to the spec or in the project, or define it "
                "under 'presets:'")
            problems.add(f"unknown preset '{name}'", where, path, hint=hint)
            return None
        data, _source = found
        if data is None:
            data = LDict()
        if not isinstance(data, dict):
            problems.add(f"preset '{name}' is not a mapping", getattr(data, "loc", where), path)
            return None
        body = LDict(loc=getattr(data, "loc", None))
        for key, value in data.items():
            if key in ("extends", "description"):
                continue
            body.set(key, value, data.key_locs.get(key) if isinstance(data, LDict) else None,
                     data.value_locs.get(key) if isinstance(data, LDict) else None)
        parent = data.get("extends")
        if parent is None:
            return body
        parent_where = data.where_value("extends") if isinstance(data, LDict) else where
        base = self.resolve(parent, parent_where, f"preset {name}.extends", problems, chain + (name,))
        if base is None:
            return None
        return merge(base, body)
