"""The timeline of a render as a self-contained SVG: one lane per rank or worker, one bar per
stage that ran (a failed one outlined in red), coloured by stage kind, with a time axis and a
legend. A stage split over several ranks has its bar in its leading rank's lane and a paler
``share`` in each other rank's lane. Every text is escaped; numbers are the figures' own
(``report/figures.py``)."""

from __future__ import annotations

import hashlib
from html import escape
from typing import Any

COLOURS = {"image": "#4e79a7", "upscale": "#76b7b2", "video": "#f28e2b", "lipsync": "#e15759",
           "animate": "#b07aa1", "tts": "#59a14f", "audio": "#edc948", "fetch": "#9c755f",
           "assemble": "#bab0ac", "interpolate": "#ff9da7"}
WIDTH, LABEL, LANE, AXIS = 960, 80, 24, 34


def colour(kind: str) -> str:
    if kind in COLOURS:
        return COLOURS[kind]
    return "#" + hashlib.sha256(kind.encode()).hexdigest()[:6]


def timeline_svg(bars: list[dict[str, Any]]) -> str:
    """The SVG markup (empty when no bar)."""
    if not bars:
        return ""
    lanes = sorted({b["lane"] for b in bars} | {x for b in bars for x in b.get("shares", ())},
                   key=_lane_order)
    span = max(max(b["end"] for b in bars), 1e-3)
    plot = WIDTH - LABEL - 10
    kinds = list(dict.fromkeys(b["kind"] for b in bars))
    height = len(lanes) * LANE + AXIS + 22
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="stage timeline">',
           '<style>text{font:11px system-ui,sans-serif;fill:#333}.bar{stroke:#fff;stroke-width:.5}'
           '.bar.failed{stroke:#c00;stroke-width:2}.share{opacity:.45}</style>']
    for i, lane in enumerate(lanes):
        y = i * LANE
        out.append(f'<rect x="{LABEL}" y="{y}" width="{plot}" height="{LANE - 2}" fill="#f3f3f3"/>')
        out.append(f'<text x="4" y="{y + LANE / 2 + 3:.1f}">{escape(lane)}</text>')
    for b in bars:
        x = LABEL + plot * b["start"] / span
        w = max(plot * (b["end"] - b["start"]) / span, 1.5)
        y = lanes.index(b["lane"]) * LANE + 2
        took = b["end"] - b["start"]
        cls = "bar failed" if b["status"] == "failed" else "bar"
        shares = b.get("shares", [])
        where = f" · on {len(shares) + 1} ranks" if shares else ""
        where += f" · node {escape(b['node'])}" if b.get("node") else ""
        title = (f'<title>{escape(b["stage"])} · {escape(b["kind"])} · {took:.2f} s{where}'
                 f'{" · failed" if b["status"] == "failed" else ""}</title>')
        out.append(f'<rect class="{cls}" data-stage="{escape(b["stage"])}" data-kind="{escape(b["kind"])}" '
                   f'x="{x:.1f}" y="{y}" width="{w:.1f}" height="{LANE - 6}" fill="{colour(b["kind"])}">'
                   f'{title}</rect>')
        for lane in shares:
            out.append(f'<rect class="share" data-stage="{escape(b["stage"])}" x="{x:.1f}" '
                       f'y="{lanes.index(lane) * LANE + 2}" width="{w:.1f}" height="{LANE - 6}" '
                       f'fill="{colour(b["kind"])}">{title}</rect>')
    base = len(lanes) * LANE
    out.append(f'<line x1="{LABEL}" y1="{base}" x2="{LABEL + plot}" y2="{base}" stroke="#999"/>')
    for t in _ticks(span):
        x = LABEL + plot * t / span
        out.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#999"/>'
                   f'<text x="{x:.1f}" y="{base + 15}" text-anchor="middle">{_fmt(t)}</text>')
    x = LABEL
    for kind in kinds:
        out.append(f'<rect x="{x}" y="{base + 22}" width="10" height="10" fill="{colour(kind)}"/>'
                   f'<text x="{x + 14}" y="{base + 31}">{escape(kind)}</text>')
        x += 24 + 7 * len(kind)
    out.append("</svg>")
    return "".join(out)


def _lane_order(lane: str) -> tuple[str, int]:
    head, _, tail = lane.rpartition(" ")
    return (head, int(tail)) if tail.isdigit() else (lane, 0)


def _ticks(span: float) -> list[float]:
    step = 10 ** len(str(int(span))) / 10 if span >= 1 else 0.1
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= 8:
            step *= factor
            break
    return [i * step for i in range(int(span / step) + 1)]


def _fmt(t: float) -> str:
    if t >= 3600:
        return f"{t / 3600:.1f} h"
    if t >= 60 and t % 60 == 0:
        return f"{int(t // 60)} min"
    return f"{t:g} s"
