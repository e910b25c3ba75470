"""Expected seconds before a render: from earlier manifests (with the lock written beside them),
else the defaults table; longest first among ready stages; what `cinesynth plan` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cinesynth_batch.cache.lock import Lock, LockEntry
from cinesynth_batch.cli import app
from cinesynth_batch.execute.schedule import Schedule
from cinesynth_batch.execute.session import Session
from cinesynth_batch.plan.batch import merge_plans
from cinesynth_batch.plan.cost import TINY_DEFAULTS, History, model_label, plan_costs, work
from projects import new_project

SPEC = """\
project: {project}
profile: tiny
defaults: {{resolution: 64x48, seed: 3}}
scenes:
  - id: a
    image: {{prompt: "a lighthouse at dusk", steps: 2}}
    video: {{prompt: waves, frames: 9, steps: 3}}
{more}"""
MORE = """  - id: b
    image: {prompt: "a boat in fog", steps: 4}
"""


def spec_at(root: Path, project: str, more: str = "") -> Path:
    if not (root / "cinesynth.toml").exists():
        new_project(root)
    path = root / f"{project}.yaml"
    path.write_text(SPEC.format(project=project, more=more))
    return path


def craft_history(folder: Path, image_model: str, rows: list[dict], lock: dict[str, LockEntry]) -> None:
    """An earlier render's manifest.json and render.lock, as publish writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"project": "x", "stages": rows}))
    Lock(project="x", profile="tiny", stages=lock).write(folder / "render.lock")


def entry(kind: str, params: dict) -> LockEntry:
    return LockEntry(kind=kind, key="k-" + kind, model=None, params=params, inputs={}, output={})


def test_work_is_steps_frames_pixels():
    assert work("image", {"steps": 4, "width": 64, "height": 48, "frames": 99}) == 4 * 64 * 48
    assert work("video", {"steps": 3, "frames": 9, "width": 64, "height": 48}) == 3 * 9 * 64 * 48
    assert work("lipsync", {"steps": 2, "infer_frames": 16, "width": 32, "height": 32}, 3) == 2 * 16 * 1024 * 3
    assert work("assemble", {"width": 640, "height": 480}) == 1.0


def test_estimates_come_from_the_earlier_manifest_then_the_table(tmp_path):
    spec = spec_at(tmp_path, "alpha", MORE)
    plan = Session.open(spec).plan()
    image = plan.stages["a.image"]
    label = model_label(image)
    # an earlier render: b.image (4 steps, 64x48 = 12288 units) took 6.144 s, x.image (a.image's
    # very key: 2 steps, 6144 units) 0.7 s; the image rate is the median (mean of the two) of
    # 6.144 / 12288 and 0.7 / 6144 s per unit; the assembly took 0.25 s and 0.35 s (median 0.3)
    rows = [{"id": "b.image", "kind": "image", "status": "ran", "key": "old", "seconds": 6.144,
             "model": label},
            {"id": "x.image", "kind": "image", "status": "ran", "key": image.key, "seconds": 0.7,
             "model": label},
            {"id": "assemble.final", "kind": "assemble", "status": "ran", "key": "k1", "seconds": 0.25},
            {"id": "assemble.other", "kind": "assemble", "status": "cached", "key": "k2", "seconds": 0.35},
            {"id": "a.video", "kind": "video", "status": "ran", "key": "k3", "seconds": float("nan"),
             "model": "whatever"}]
    lock = {"b.image": entry("image", {"steps": 4, "width": 64, "height": 48}),
            "x.image": entry("image", {"steps": 2, "width": 64, "height": 48}),
            "assemble.final": entry("assemble", {}), "assemble.other": entry("assemble", {})}
    craft_history(plan.loaded.output_dir, label, rows, lock)

    costs = plan_costs(plan)
    assert {k: v.source for k, v in costs.items()} == {
        "a.image": "measured", "b.image": "earlier runs", "a.video": "table",
        "assemble.final": "earlier runs"}
    assert costs["a.image"].seconds == 0.7
    assert costs["b.image"].seconds == pytest.approx((6.144 / 12288 + 0.7 / 6144) / 2 * 12288)
    assert costs["b.image"].seconds == pytest.approx(3.772)
    assert costs["assemble.final"].seconds == pytest.approx(0.3)
    video = TINY_DEFAULTS["video"]
    assert costs["a.video"].seconds == pytest.approx(video.per_unit * 3 * 9 * 64 * 48 + video.fixed)


def test_a_damaged_or_huge_manifest_adds_nothing(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json")
    assert History.from_folders([folder]).rates == {}
    (folder / "manifest.json").write_text(json.dumps({"stages": [{"id": "a", "kind": "image",
                                                                  "status": "ran", "seconds": -3}]}))
    assert History.from_folders([folder]).by_key == {}


def test_ready_stages_go_longest_first_after_those_whose_model_is_loaded():
    up = {s: [] for s in ("i1", "i2", "v1", "v2", "mix")}
    slots = {"i1": "image", "i2": "image", "v1": "video", "v2": "video", "mix": None}
    cost = {"i1": 1.0, "i2": 3.0, "v1": 20.0, "v2": 50.0, "mix": 5.0}
    s = Schedule(order=["i1", "i2", "v1", "v2", "mix"], upstream=up, available=set(), world=1,
                 slots=slots, cost=cost.__getitem__)
    handed = []
    while s.pending:
        (a,) = s.assign()
        handed.append(a.stage)
        s.release(0)
        s.done(a.stage, ok=True)
    # nothing loaded: the longest (v2); then the other video (loaded); then longest first
    assert handed == ["v2", "v1", "mix", "i2", "i1"]
    # without costs: plan order, still keeping the loaded model
    s = Schedule(order=["i1", "v1", "i2"], upstream={"i1": [], "v1": [], "i2": []}, available=set(),
                 world=1, slots=slots)
    s.held[0] = "image"
    assert [s.by_priority(s.ready(), [0])] == [["i1", "i2", "v1"]]


def test_shared_stage_by_key_is_one_node(tmp_path):
    alpha = Session.open(spec_at(tmp_path, "alpha")).plan()
    beta = Session.open(spec_at(tmp_path, "beta", MORE)).plan()
    graph = merge_plans([alpha, beta])
    assert graph.nodes["0:a.image"].members == [(0, "a.image"), (1, "a.image")]
    assert sorted(graph.nodes) == ["0:a.image", "0:a.video", "0:assemble.final", "1:a.video",
                                   "1:assemble.final", "1:b.image"]
    assert graph.upstream["1:a.video"] == ["0:a.image"]       # below the shared node, in beta
    assert graph.order[:2] == ["0:a.image", "1:b.image"]       # images of the batch first


def test_plan_prints_estimates_per_stage_spec_and_batch(tmp_path):
    a, b = spec_at(tmp_path, "alpha"), spec_at(tmp_path, "beta", MORE)
    result = CliRunner().invoke(app, ["plan", str(a), str(b)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    image, video = TINY_DEFAULTS["image"], TINY_DEFAULTS["video"]
    a_img = image.per_unit * 2 * 64 * 48 + image.fixed                      # 0.124 s
    b_img = image.per_unit * 4 * 64 * 48 + image.fixed                      # 0.197 s
    vid = video.per_unit * 3 * 9 * 64 * 48 + video.fixed                    # 0.465 s
    assert f"== {a} (alpha) ==" in lines and f"== {b} (beta) ==" in lines
    row = next(line for line in lines if line.startswith("a.image"))
    assert row.split()[:4] == ["a.image", "image", "run", "0.12"]
    assert lines.count("estimated GPU time: 1.59 s (3 from the defaults table)") == 1   # alpha
    assert "estimated GPU time: 1.79 s (4 from the defaults table)" in lines              # beta
    assert round(a_img + vid + 1.0, 2) == 1.59 and round(a_img + b_img + vid + 1.0, 2) == 1.79
    # the batch counts the shared a.image once, for alpha
    assert lines[-4:] == ["estimated GPU time of the batch: 3.25 s",
                          "  alpha  1.59 s",
                          "  beta   1.66 s",
                          "shared by key, run once: a.image (alpha, beta)"]
