"""Render specs/examples/short.yaml in a scratch project and save a screenshot of its report
(``make report-screenshot`` writes docs/report.png)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import browser
from cinesynth_batch.execute.render import render
from projects import new_project


def main(out: Path) -> None:
    why = browser.missing()
    if why:
        sys.exit(f"no screenshot: {why}")
    out = out.resolve()
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="cinesynth-report-") as tmp:
        spec = new_project(Path(tmp), "short.yaml")
        os.chdir(tmp)                    # the report names the spec as given: short.yaml
        try:
            render(spec.name, progress=False)
            browser.screenshot(Path("outputs/short/report.html"), out)
        finally:
            os.chdir(here)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/report.png"))
