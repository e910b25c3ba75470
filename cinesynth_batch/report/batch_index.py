"""The index page of a batch: one line per spec of the session (its status, time, stages run,
cached and failed, and a link to its report), written beside the outputs. Like the report, it
is one HTML file (jinja2, autoescaped) that opens from disk with no network. Links are given
already checked (relative, inside the index's folder) by ``execute/batch_index.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATE = Path(__file__).resolve().parent / "batch_index.html"
STATUSES = ("ok", "partial", "failed")


def render_index(lines: list[dict[str, Any]], written_at: str, model_loads: dict[str, int]) -> str:
    """``lines``: one per spec, each with ``spec``, ``project``, ``status`` (ok | partial |
    failed), ``seconds``, ``ran``, ``cached``, ``failed``, ``note`` (the first line of its error)
    and ``href`` (a relative link to its report, or None)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    counts = {s: sum(1 for x in lines if x["status"] == s) for s in STATUSES}
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        lines=lines, written_at=written_at, counts=counts, model_loads=model_loads,
        seconds=round(sum(x["seconds"] for x in lines), 3))
