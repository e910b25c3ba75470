"""Many specs in one session on the tiny profile: real renders through the CLI."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cinesynth_batch.cli import app
from projects import new_project

pytestmark = pytest.mark.slow

SPEC = """
project: {project}
defaults: {{resolution: 64x64, seed: 3}}
scenes:
  - id: a
    image: {{prompt: "a lighthouse at dusk", steps: 2}}
{more}"""
SECOND_SCENE = """  - id: b
    image: {prompt: "a boat in fog", steps: 2}
"""
BROKEN_MUSIC = """assemble:
  music: {file: assets/broken.wav}
"""


def write_specs(root: Path) -> None:
    """alpha and beta share scene a's image stage; beta has a scene of its own; broken shares it
    too but its assembly reads a music file that is not audio; zz_invalid has a YAML error."""
    new_project(root, "alpha.yaml", SPEC.format(project="alpha", more=""))
    (root / "beta.yaml").write_text(SPEC.format(project="beta", more=SECOND_SCENE))
    (root / "broken.yaml").write_text(SPEC.format(project="broken", more=BROKEN_MUSIC))
    (root / "assets" / "broken.wav").write_text("not audio")
    (root / "zz_invalid.yaml").write_text("project: bad\nscenes:\n  - id: a\n    image: {prompt: x\n")


def cli(*args: str):
    return CliRunner().invoke(app, ["render", *args, "--no-progress"])


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch") / "p"
    write_specs(root)
    summary = root / "summary.json"
    result = cli(str(root), "--keep-going", "--summary", str(summary), "--events", str(root / "events.jsonl"))
    return root, result, json.loads(summary.read_text())


def test_folder_renders_every_spec_with_shared_stage_run_once(batch):
    root, result, summary = batch
    rows = {Path(r["spec"]).name: r for r in summary["specs"]}
    assert list(rows) == ["alpha.yaml", "beta.yaml", "broken.yaml", "zz_invalid.yaml"]   # sorted
    assert {n: r["status"] for n, r in rows.items()} == {
        "alpha.yaml": "rendered", "beta.yaml": "rendered", "broken.yaml": "failed",
        "zz_invalid.yaml": "invalid"}
    # a.image is one key for all three specs: alpha runs it, beta and broken find it cached
    assert (rows["alpha.yaml"]["ran"], rows["alpha.yaml"]["cached"]) == (2, 0)
    assert (rows["beta.yaml"]["ran"], rows["beta.yaml"]["cached"]) == (2, 1)
    assert (rows["broken.yaml"]["ran"], rows["broken.yaml"]["cached"]) == (0, 1)
    beta = json.loads((root / "outputs/beta/manifest.json").read_text())
    assert {s["id"]: s["status"] for s in beta["stages"]} == {
        "a.image": "cached", "b.image": "ran", "assemble.final": "ran"}
    # the image model was loaded once for the whole session: beta's own image ran on it
    assert summary["model_loads"] == {"image": 1}
    assert beta["model_loads"] == {}
    alpha = json.loads((root / "outputs/alpha/manifest.json").read_text())
    assert alpha["model_loads"] == {"image": 1}
    assert "model loads: image 1" in result.stdout


def test_invalid_spec_exits_2_with_its_place_and_the_valid_ones_render(batch):
    root, result, summary = batch
    assert result.exit_code == 2 and summary["exit_code"] == 2
    (row,) = [r for r in summary["specs"] if r["status"] == "invalid"]
    assert row["project"] is None
    assert row["error"].startswith(f"{root / 'zz_invalid.yaml'}:5:")
    assert "YAML syntax error" in row["error"]
    assert f"{root / 'zz_invalid.yaml'}: invalid" in result.stdout
    for project in ("alpha", "beta"):
        assert (root / "outputs" / project / "final.mp4").is_file()


def test_failed_spec_is_named_and_the_rest_still_renders(batch):
    root, result, summary = batch
    (row,) = [r for r in summary["specs"] if r["status"] == "failed"]
    assert Path(row["spec"]).name == "broken.yaml" and row["project"] == "broken"
    assert "assemble.final" in row["error"]
    assert f"{root / 'broken.yaml'}: failed" in result.stdout
    assert not (root / "outputs/broken/final.mp4").exists()
    assert result.stdout.splitlines()[-1] == "2 rendered, 1 failed, 1 invalid spec(s)"


def test_the_index_page_lists_each_spec_with_its_status_and_a_link_to_its_report(batch):
    root, result, _ = batch
    index = root / "outputs" / "index.html"
    assert f"index: {os.path.relpath(index)}" in result.stdout
    page = index.read_text()
    lines = re.findall(r'<tr class="spec" data-spec="([^"]*)" data-status="([^"]*)">(.*?)</tr>', page, re.S)
    assert [(Path(spec).name, status) for spec, status, _ in lines] == [
        ("alpha.yaml", "ok"), ("beta.yaml", "ok"), ("broken.yaml", "partial"), ("zz_invalid.yaml", "failed")]
    links = [re.findall(r'href="([^"]*)"', cells) for _, _, cells in lines]
    assert links == [["alpha/report.html"], ["beta/report.html"], ["broken/report.html"], []]
    cells = [re.findall(r'<td class="num">([^<]*)</td>', c) for _, _, c in lines]
    assert [c[1:] for c in cells] == [["2", "0", "0"], ["2", "1", "0"], ["0", "1", "1"], ["0", "0", "0"]]
    assert "invalid spec: " in lines[3][2] and "YAML syntax error" in lines[3][2]


def test_each_lock_is_the_one_a_single_render_writes(batch, tmp_path):
    root, _, _ = batch
    alone = tmp_path / "p"
    write_specs(alone)
    for project in ("alpha", "beta"):
        single = cli(str(alone / f"{project}.yaml"))
        assert single.exit_code == 0, single.output
        assert (alone / "outputs" / project / "render.lock").read_bytes() == \
            (root / "outputs" / project / "render.lock").read_bytes()


def test_some_failed_exits_1_and_a_second_session_runs_nothing(batch, tmp_path):
    root, _, _ = batch
    copy = tmp_path / "p"
    shutil.copytree(root, copy)
    summary = copy / "again.json"
    result = cli(str(copy / "alpha.yaml"), str(copy / "broken.yaml"), str(copy / "beta.yaml"),
                 "--keep-going", "--summary", str(summary))
    assert result.exit_code == 1, result.output
    rows = json.loads(summary.read_text())["specs"]
    assert [(r["project"], r["status"]) for r in rows] == [
        ("alpha", "rendered"), ("broken", "failed"), ("beta", "rendered")]
    assert [r["ran"] for r in rows] == [0, 0, 0]
    assert json.loads(summary.read_text())["model_loads"] == {}


def test_stage_shared_by_key_runs_once_in_the_batch_dag(batch):
    root, _, summary = batch
    lines = [json.loads(x) for x in (root / "events.jsonl").read_text().splitlines()]
    started = [e["stage"] for e in lines if e["event"] == "stage_started"]
    # a.image is one node of the batch: made once (for alpha, first), taken by beta and broken
    assert sorted(started) == ["a.image", "assemble.final", "assemble.final", "assemble.final", "b.image"]
    shared = [e for e in lines if e["event"] == "stage_cached" and e.get("reason")]
    assert [(e["stage"], e["reason"]) for e in shared] == [("a.image", "made by another spec of the batch")] * 2
    statuses = {p: {s["id"]: s["status"] for s in json.loads(
        (root / "outputs" / p / "manifest.json").read_text())["stages"]} for p in ("alpha", "beta")}
    assert statuses == {"alpha": {"a.image": "ran", "assemble.final": "ran"},
                        "beta": {"a.image": "cached", "b.image": "ran", "assemble.final": "ran"}}
    # broken's own assembly failed; its manifest was written from the batch (no output published)
    broken = json.loads((root / "outputs/broken/manifest.json").read_text())
    assert {s["id"]: s["status"] for s in broken["stages"]} == {"a.image": "cached", "assemble.final": "failed"}


STOPS = """
project: stops
defaults: {resolution: 64x64, seed: 3}
scenes:
  - id: a
    image: {prompt: "a lighthouse at dusk", steps: 2}
  - id: c
    image: {prompt: "a quiet harbour", steps: 2}
    audio: {tts: {text: "  ", language: en, backend: espeak}}
"""


def test_without_keep_going_a_failed_spec_stops_and_its_shared_stage_runs_for_the_others(tmp_path):
    root = tmp_path / "p"
    new_project(root, "alpha.yaml", SPEC.format(project="alpha", more=""))
    (root / "stops.yaml").write_text(STOPS)
    summary = root / "s.json"
    # stops is first: a.image would be made for it, but its speech fails first (speech goes
    # before pictures) and, without --keep-going, it starts nothing more
    result = cli(str(root / "stops.yaml"), str(root / "alpha.yaml"), "--summary", str(summary))
    assert result.exit_code == 1, result.output
    rows = json.loads(summary.read_text())["specs"]
    assert [(r["project"], r["status"], r["ran"], r["cached"]) for r in rows] == [
        ("stops", "failed", 0, 0), ("alpha", "rendered", 2, 0)]
    assert "c.tts" in rows[0]["error"] and "the text is empty" in rows[0]["error"]
    stops = json.loads((root / "outputs/stops/manifest.json").read_text())
    assert {s["id"]: s["status"] for s in stops["stages"]} == {
        "c.tts": "failed", "a.image": "run", "c.image": "run", "assemble.final.srt": "run",
        "assemble.final": "run"}
    alpha = json.loads((root / "outputs/alpha/manifest.json").read_text())
    assert {s["id"]: s["status"] for s in alpha["stages"]} == {"a.image": "ran", "assemble.final": "ran"}
