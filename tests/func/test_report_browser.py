"""The report people open after a render, checked in a real browser (headless Chromium driven
by Playwright). One session renders a batch: a three-scene spec whose middle scene cannot run, a
spec with a lip-synced line of speech, and a spec that is not valid (its name hostile). The
first spec's report shows every scene's row with its pictures loaded, a poster for every clip,
the failure at the top with the command that resumes, and one timeline bar per stage that ran;
the second's shows the waveform of its speech; the batch's index page lists the three specs
and its links open their reports. Screenshots are kept with the test's files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import browser
from cinesynth_batch.cli import app
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

TALK = """project: evening
profile: tiny
defaults: {resolution: 64x48, fps: 8, seed: 5}
scenes:
  - id: hello
    lipsync:
      avatar: assets/avatar.png
      audio: {tts: {text: "Good evening. Here is the news.", language: en, backend: espeak}}
      infer_frames: 16
      steps: 1
"""

HOSTILE = 'x<img src=y onerror=alert(1)>&"q".yaml'


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    why = browser.missing()
    if why:
        pytest.skip(f"browser test skipped: {why}")
    root = tmp_path_factory.mktemp("report")
    spec = new_project(root, "morning.yaml", SPEC)
    (root / "assets" / "broken.png").write_text("not an image")
    (root / "evening.yaml").write_text(TALK)
    (root / HOSTILE).write_text("project: bad\nscenes: [\n")
    done = CliRunner().invoke(app, ["render", str(spec), str(root / "evening.yaml"), str(root / HOSTILE),
                                    "--keep-going", "--no-progress"])
    assert done.exit_code == 2, done.output            # one spec is invalid, the others rendered
    return root


@pytest.fixture(scope="module")
def report(batch) -> Path:
    return batch / "outputs/morning/report.html"


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


@pytest.mark.slow
def test_batch_index_and_a_waveform_in_a_browser(batch, tmp_path):
    index = batch / "outputs" / "index.html"
    requests: list[str] = []
    with browser.page() as page:
        page.on("request", lambda r: requests.append(r.url))
        page.goto(index.resolve().as_uri())
        lines = page.eval_on_selector_all(
            "tr.spec", "rows => rows.map(r => [r.dataset.spec, r.dataset.status,"
                       " r.querySelector('a.report') ? r.querySelector('a.report').getAttribute('href') : null])")
        injected = page.evaluate("() => document.querySelectorAll('tr.spec img').length")
        page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
        opened = {}
        for spec, _, href in lines:
            if href:
                page.goto(index.resolve().as_uri())
                page.click(f'tr.spec[data-spec="{spec}"] a.report')
                page.wait_for_load_state()
                opened[Path(spec).name] = (page.url, page.eval_on_selector("h1", "h => h.textContent"))
        page.goto((batch / "outputs/evening/report.html").resolve().as_uri())
        talk = page.eval_on_selector_all(
            'tr.scene[data-scene="hello"] img', "imgs => imgs.map(i => [i.className, i.naturalWidth])")
        page.screenshot(path=str(tmp_path / "evening.png"), full_page=True)
    print(f"index screenshot: {tmp_path / 'index.png'}")

    assert [(Path(s).name, st, h) for s, st, h in lines] == [
        ("morning.yaml", "partial", "morning/report.html"), ("evening.yaml", "ok", "evening/report.html"),
        (HOSTILE, "failed", None)]
    assert injected == 0                                  # the hostile name is text, not markup
    assert opened == {"morning.yaml": ((batch / "outputs/morning/report.html").resolve().as_uri(), "morning"),
                      "evening.yaml": ((batch / "outputs/evening/report.html").resolve().as_uri(), "evening")}
    # the lip-synced scene: a poster and a strip of its clip, and the waveform of its speech
    assert sorted(c for c, _ in talk) == ["poster", "strip", "wave"] and all(w > 0 for _, w in talk), talk
    assert all(url.startswith("file://") for url in requests), requests
    text = index.read_text()
    assert re.search(r"1 ok, 1 partial, 1 failed", text) and "&lt;img src=y onerror=alert(1)&gt;" in text
    manifest = json.loads((batch / "outputs/evening/manifest.json").read_text())
    assert manifest["files"]["scenes/hello.mp4"]["audio_digest"] == manifest["files"]["scenes/hello.tts.wav"]["digest"]
