"""The report people open after a render, checked in a real browser (headless Chromium driven
by Playwright): a three-scene render whose middle scene cannot run shows every scene's row with
its pictures loaded, a poster for every clip, the failure at the top with the command that
resumes, and one timeline bar per stage that ran. A screenshot is kept with the test's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import browser
from cinesynth_batch.errors import RenderError
from cinesynth_batch.execute.render import render
from projects import new_project

SPEC = """project: morning
profile: tiny
defaults: {resolution: 64x48, fps: 8, seed: 5}
scenes:
  - id: dawn
    image: {prompt: "a harbour at dawn", steps: 2, upscale: x2}
    video: {prompt: "boats rock", frames: 5, steps: 1}
  - id: noon
    image: {prompt: "a market at noon", steps: 2}
    video: {image: assets/broken.png, prompt: "people walk", frames: 5, steps: 1}
  - id: dusk
    image: {prompt: "a lighthouse at dusk", steps: 2}
    video: {prompt: "the light turns", frames: 5, steps: 1, segments: 2}
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    why = browser.missing()
    if why:
        pytest.skip(f"browser test skipped: {why}")
    root = tmp_path_factory.mktemp("report")
    spec = new_project(root, "morning.yaml", SPEC)
    (root / "assets" / "broken.png").write_text("not an image")
    with pytest.raises(RenderError):
        render(spec, progress=False, keep_going=True)
    return root / "outputs/morning/report.html"


@pytest.mark.slow
def test_report_in_a_browser(report, tmp_path):
    manifest = json.loads((report.parent / "manifest.json").read_text())
    stages = {r["id"]: r for r in manifest["stages"]}
    assert stages["noon.video"]["status"] == "failed"
    assert stages["assemble.final"]["status"] == "blocked"
    ran = {nid for nid, r in stages.items() if r["status"] in ("ran", "failed")}
    clips = sorted(rel for rel in manifest["files"] if rel.endswith(".mp4"))
    assert clips == ["scenes/dawn.mp4", "scenes/dusk.1.mp4", "scenes/dusk.2.mp4"]

    requests: list[str] = []
    with browser.page() as page:
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.resolve().as_uri())
        rows = page.eval_on_selector_all(
            "tr.scene", "rows => rows.map(r => [r.dataset.scene, r.dataset.status])")
        images = page.eval_on_selector_all(
            "tr.scene img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth, i.className])")
        posters = page.eval_on_selector_all(
            "figure.clip", "figs => figs.map(f => [f.querySelector('a').getAttribute('href'),"
                           " f.querySelector('img.poster') ? f.querySelector('img.poster').naturalWidth : 0])")
        first_section = page.evaluate(
            "() => { const f = document.querySelector('section.failures'),"
            " t = document.querySelector('table.scenes');"
            " return [f.compareDocumentPosition(t) & Node.DOCUMENT_POSITION_FOLLOWING,"
            " f.querySelector('.failure').dataset.stage, f.querySelector('pre.resume').textContent,"
            " f.getBoundingClientRect().top < t.getBoundingClientRect().top] }")
        bars = page.eval_on_selector_all("svg.timeline rect.bar", "bs => bs.map(b => b.dataset.stage)")
        failed_bars = page.eval_on_selector_all("svg.timeline rect.bar.failed", "bs => bs.map(b => b.dataset.stage)")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
    print(f"report screenshot: {shot}")

    assert rows == [["dawn", "made now"], ["noon", "failed"], ["dusk", "made now"]]
    # stills of all three scenes, dawn's upscaled still, a poster and a strip for each clip
    assert len(images) == 3 + 1 + 2 * len(clips)
    assert all(width > 0 for _, width, _ in images), images
    assert all(src.startswith("thumbs/") and src.endswith(".webp") for src, _, _ in images)
    assert sorted(href for href, _ in posters) == clips and all(w > 0 for _, w in posters), posters
    follows, failed_stage, resume, above = first_section
    assert follows and above and failed_stage == "noon.video"
    assert resume.startswith("cinesynth render ") and "morning.yaml --profile tiny --keep-going" in resume
    assert sorted(bars) == sorted(ran) and len(bars) == len(ran)
    assert failed_bars == ["noon.video"]
    assert all(url.startswith("file://") for url in requests), requests
    assert shot.stat().st_size > 10_000
