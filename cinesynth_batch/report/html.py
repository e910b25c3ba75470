"""The HTML report: a jinja2 template (autoescaped) over the manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE = Path(__file__).resolve().parent / "template.html"


def render_report(manifest: dict[str, Any]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(m=manifest)


def write_report(path: Path, manifest: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render_report(manifest), encoding="utf-8")
    os.replace(tmp, path)
