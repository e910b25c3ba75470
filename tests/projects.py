"""Fresh project folders for tests: the root marker, a copy of the example assets and a spec."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "specs" / "examples"


def new_project(root: Path, spec: str | None = None, text: str | None = None, presets: bool = False) -> Path:
    """Make ``root`` a project: ``cinesynth.toml``, ``assets/`` copied from the examples and, when
    asked, ``presets/``. With ``spec`` alone the example spec of that name is copied in; with
    ``text`` too, a spec file named ``spec`` holds that text. Returns the spec's path, or ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cinesynth.toml").write_text("")
    shutil.copytree(EXAMPLES / "assets", root / "assets")
    if presets:
        shutil.copytree(REPO / "presets", root / "presets")
    if spec is None:
        return root
    path = root / spec
    if text is None:
        shutil.copy(EXAMPLES / spec, path)
    else:
        path.write_text(text)
    return path
