"""``video.keyframes`` (one first-last-frame clip per pair, ``loop``, ``lengths``) and
``video.two_pass`` as the spec takes them and the planner expands them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cinesynth_batch.errors import SpecError
from cinesynth_batch.execute.session import Session


def session(project: Path, video: str, extra_scene: str = "") -> Session:
    for name in ("a", "b", "c"):
        (project / f"{name}.png").write_bytes(name.encode())
    (project / "spec.yaml").write_text(textwrap.dedent("""
        project: p
        defaults: {resolution: 80x48, seed: 7}
        scenes:
          - id: s
        """) + textwrap.indent(textwrap.dedent(extra_scene), "    ")
        + "    video:\n" + textwrap.indent(textwrap.dedent(video), " " * 6))
    return Session.open(project / "spec.yaml")


def clips(plan) -> dict[str, dict]:
    return {n: plan.graph[n] for n in plan.order if plan.graph[n].kind == "video"}


def inputs_of(node) -> tuple[str, str]:
    return tuple(Path(node.inputs[k].path).stem for k in ("image", "last_image"))


def test_a_loop_makes_one_clip_per_keyframe_back_to_the_first(project):
    plan = session(project, "keyframes: [a.png, b.png, c.png]\nloop: true\nlengths: [9, 13, 17]\n").plan()
    got = clips(plan)
    assert list(got) == ["s.video.1", "s.video.2", "s.video.3"]
    assert [inputs_of(n) for n in got.values()] == [("a", "b"), ("b", "c"), ("c", "a")]
    assert [n.params["frames"] for n in got.values()] == [9, 13, 17]
    assert [n.params["seed"] for n in got.values()] == [7, 8, 9]
    assert [n.runtime["segment"] for n in got.values()] == [1, 2, 3]
    assert [n.publish for n in got.values()] == ["scenes/s.1.mp4", "scenes/s.2.mp4", "scenes/s.3.mp4"]
    assert plan.graph["assemble.final"].inputs["v0"] == tuple(
        type(plan.graph["assemble.final"].inputs["v0"][0])(n) for n in got)


def test_an_open_chain_makes_n_minus_1_clips_and_one_length_serves_all(project):
    plan = session(project, "keyframes: [a.png, b.png, c.png]\nlengths: 13\n").plan()
    got = clips(plan)
    assert [inputs_of(n) for n in got.values()] == [("a", "b"), ("b", "c")]
    assert [n.params["frames"] for n in got.values()] == [13, 13]


def test_the_frames_default_and_a_keyframe_from_a_video(project):
    plan = session(project, "keyframes: [a.png, {frame: {source: a.png, at: last}}]\nframes: 17\n").plan()
    got = clips(plan)
    assert [n.params["frames"] for n in got.values()] == [17]
    assert set(got["s.video.1"].upstream()) == {"s.keyframes_2_frame"}


def test_a_keyframe_edit_changes_only_the_keys_of_its_clips(project):
    spec = "keyframes: [a.png, b.png, c.png]\nloop: true\nframes: 9\n"
    before = {n: st.key for n, st in session(project, spec).plan().stages.items()}
    (project / "d.png").write_bytes(b"d")
    after = {n: st.key for n, st in session(project, spec.replace("b.png", "d.png")).plan().stages.items()}
    assert before["s.video.3"] is not None and before["assemble.final"] is None   # its clips are not made yet
    assert {n for n in before if before[n] != after[n]} == {"s.video.1", "s.video.2"}


def test_two_pass_is_keyed_only_when_set(project):
    plain = clips(session(project, "keyframes: [a.png, b.png]\nframes: 9\nscheduler: euler\n").plan())
    assert "two_pass" not in plain["s.video.1"].params
    two = clips(session(project, "keyframes: [a.png, b.png]\nframes: 9\nscheduler: euler\nsteps: 8\n"
                                 "two_pass: {scale: 2.5}\n").plan())
    assert two["s.video.1"].params["two_pass"] == {"base_width": 32, "base_height": 16, "high_steps": 4}
    both = clips(session(project, "image: a.png\nframes: 9\nscheduler: euler\nsteps: 8\nresolution: 720x1280\n"
                                  "two_pass: {base_width: 288, scale: 2.5, high_steps: 3}\n").plan())
    assert both["s.video"].params["two_pass"] == {"base_width": 288, "base_height": 512, "high_steps": 3}


@pytest.mark.parametrize("video, message", [
    ("keyframes: [a.png, b.png]\nimage: a.png\n", "keyframes make the clips; remove image"),
    ("keyframes: [a.png, b.png]\nsegments: 2\n", "keyframes make the clips; remove segments"),
    ("keyframes: [a.png]\n", "at least 2 items"),
    ("keyframes: [a.png, b.png, c.png]\nloop: true\nlengths: [9, 9]\n",
     "lengths has 2 values for 3 clips (3 keyframes, loop true): give one number or 3"),
    ("keyframes: [a.png, b.png]\nlengths: [10]\n", "10 is not 4k+1 (try 9)"),
    ("image: a.png\nlengths: [9]\n", "lengths and loop belong to keyframes"),
    ("image: a.png\ntwo_pass: {scale: 2.5}\n", "two_pass runs the flow-match Euler sampler: set scheduler: euler"),
    ("image: a.png\nscheduler: euler\ntwo_pass: {}\n", "give base_width (e.g. 288) or scale (e.g. 2.5)"),
    ("image: a.png\nscheduler: euler\nsteps: 4\ntwo_pass: {scale: 2, high_steps: 4}\n",
     "two_pass.high_steps 4 leaves no step for the low-noise expert (steps is 4)"),
    ("keyframes: [a.png, nope.png]\n", "keyframe 'nope.png' not found"),
])
def test_bad_keyframe_and_two_pass_specs_are_named(project, video, message):
    with pytest.raises(SpecError) as exc:
        session(project, video).plan()
    assert message in exc.value.render()


@pytest.mark.parametrize("two_pass, message", [
    ("{base_width: 288, scale: 2.5}", "two_pass: base_width 288 x scale 2.5 is 720, not the clip's width 80"),
    ("{base_width: 96}", "two_pass: the base size 96x64 is not smaller than the clip's 80x48"),
])
def test_two_pass_sizes_are_checked_against_the_clip_at_their_line(project, two_pass, message):
    with pytest.raises(SpecError) as exc:
        session(project, f"image: a.png\nscheduler: euler\ntwo_pass: {two_pass}\n").plan()
    text = exc.value.render()
    assert message in text and "spec.yaml:" in text and "two_pass" in text
