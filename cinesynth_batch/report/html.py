"""The HTML report: a jinja2 template (autoescaped) over the manifest. The page is one file
that opens from disk with no network: previews are small files in ``thumbs/``, clips are
linked, the timeline is inline SVG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .figures import carried_figures
from .scenes import failures, final_rows, resume_command, scene_rows
from .timeline import colour, timeline_svg

TEMPLATE = Path(__file__).resolve().parent / "template.html"


def render_report(manifest: dict[str, Any]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    fig = carried_figures(manifest.get("figures"))
    earlier = manifest.get("earlier_render") if isinstance(manifest.get("earlier_render"), dict) else None
    history = [h for h in manifest.get("history", []) if isinstance(h, dict)] \
        if isinstance(manifest.get("history"), list) else []
    kinds = list(dict.fromkeys(k for h in history for k in h.get("by_kind", {})))
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        m=manifest, scenes=scene_rows(manifest), finals=final_rows(manifest),
        failures=failures(manifest), resume=resume_command(manifest), fig=fig,
        carried=bool(earlier and fig and "figures" in (earlier.get("carried") or ())),
        timeline=Markup(timeline_svg(fig["bars"]) if fig else ""), colour=colour,
        history=history, history_kinds=kinds)

