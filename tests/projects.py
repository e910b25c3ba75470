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


def edited_copy(spec: Path, tmp_path: Path, old: str, new: str) -> Path:
    """A copy of ``spec``'s project (its cache too) under ``tmp_path``, with ``old`` replaced by
    ``new`` in the spec; returns the copied spec's path."""
    work = tmp_path / "p"
    shutil.copytree(spec.parent, work)
    path = work / spec.name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def to_run(spec: Path) -> set[str]:
    """The stage ids a render of ``spec`` would run now."""
    from cinesynth_batch.execute.session import Session

    return {st.id for st in Session.open(spec).plan().to_run()}


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def rgb_pixels(path: Path):
    """The picture's RGB pixels as a numpy array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def render_example(tmp_path_factory, name: str, presets: bool = True):
    """``specs/examples/<name>.yaml`` rendered in a project of its own: (spec path, render result)."""
    from cinesynth_batch.execute.render import render

    spec = new_project(tmp_path_factory.mktemp(name) / "p", f"{name}.yaml", presets=presets)
    return spec, render(spec, progress=False)
