"""Where a batch's index page goes and what each of its lines says (``report/batch_index.py``
draws it).

By default the page is ``outputs/index.html`` of the first spec's project, beside the specs'
output folders; ``--index FILE`` puts it elsewhere. A spec's line links to its ``report.html``
only when that report was written in this session, is a regular file, and lies inside the
index's folder: the link is relative and stays inside that tree. A report elsewhere is named,
not linked.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..cache.files import write_atomic
from ..spec.load import find_project_root

INDEX = "index.html"
NOTE = 300          # characters of an error's first line shown


def default_index(specs: list[Path]) -> Path:
    """``outputs/index.html`` under the project root of the first spec."""
    return find_project_root(Path(specs[0]).resolve().parent) / "outputs" / INDEX


def write_index(result: Any, path: Path) -> Path:
    """Write the index of a batch (``batch.BatchResult``) at ``path``; returns it."""
    from ..report.batch_index import render_index

    lines = [index_line(row, path.parent) for row in result.specs]
    written_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_atomic(path, render_index(lines, written_at, result.model_loads))
    return path


def index_line(row: Any, index_dir: Path) -> dict[str, Any]:
    """One spec's line (``batch.SpecResult``): ``ok`` when it rendered, ``partial`` when stages
    failed but others ran or were cached, ``failed`` when nothing was made (or the spec is
    invalid)."""
    made = row.output_dir is not None and (row.ran or row.cached)
    status = "ok" if row.status == "rendered" else "partial" if row.status == "failed" and made else "failed"
    note = _first_line(row.error)
    if row.status == "invalid":
        note = f"invalid spec: {note}"
    href, elsewhere = report_link(row.output_dir, index_dir)
    return {"spec": row.spec, "project": row.project, "status": status, "seconds": row.seconds,
            "ran": row.ran, "cached": row.cached, "failed": row.failed, "note": note, "href": href,
            "report_elsewhere": elsewhere}


def report_link(output_dir: str | None, index_dir: Path) -> tuple[str | None, str | None]:
    """``(href, None)`` for a report inside ``index_dir`` (a relative, URL-quoted path),
    ``(None, where)`` for one outside it, ``(None, None)`` when there is no report to show (none
    written, or not a regular file)."""
    if not output_dir:
        return None, None
    report = Path(output_dir) / "report.html"
    try:
        if not stat.S_ISREG(os.lstat(report).st_mode):
            return None, None
    except OSError:
        return None, None
    real, base = os.path.realpath(report), os.path.realpath(index_dir)
    if os.path.commonpath([real, base]) != base:
        return None, f"report: {report}"
    return quote(Path(os.path.relpath(real, base)).as_posix()), None


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    first = lines[0] if lines else ""
    return first if len(first) <= NOTE else first[:NOTE] + "…"
