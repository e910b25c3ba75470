"""Open a report in a real browser: Playwright driving the system's Chromium (Debian's
``chromium`` package; ``make browser`` installs it). Playwright's own browser download is not
used. ``browser_or_skip`` skips the calling test, saying why, when either is missing."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The Chromium to drive: $CINESYNTH_CHROMIUM, else the first on PATH."""
    given = os.environ.get("CINESYNTH_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return "no Chromium found: run `make browser` (as root: apt-get install chromium) or set CINESYNTH_CHROMIUM"
    return None


@contextmanager
def page(width: int = 1240, height: int = 900):
    """A Playwright page in headless Chromium; no network beyond file:// is needed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            pg = browser.new_page(viewport={"width": width, "height": height})
            yield pg
        finally:
            browser.close()


def screenshot(report: Path, out: Path, width: int = 1240) -> Path:
    """A full-page screenshot of ``report`` (opened from disk) at ``out``."""
    with page(width=width) as pg:
        pg.goto(report.resolve().as_uri())
        pg.screenshot(path=str(out), full_page=True)
    return out
