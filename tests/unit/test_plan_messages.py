"""What `plan` and a render tell the user: segment counts, per-segment progress, rerun reasons
named by spec field, and which stages an edit re-runs (subtitles ignore a new picture).

One tiny render (a TTS still, a 2-segment chained video, a lip-sync) serves the slow tests; each
edit is made on a copy of the rendered project and only planned.
"""

from __future__ import annotations

import io
import json
import shutil
import wave
from pathlib import Path

import pytest

from cinesynth_batch.execute.events import Event
from cinesynth_batch.execute.progress import PlainProgress
from cinesynth_batch.execute.render import render
from cinesynth_batch.execute.session import Session
from cinesynth_batch.plan.show import as_json, as_mermaid, as_table
from projects import new_project

SPEC = """\
project: msgs
profile: tiny
defaults: {resolution: 64x64, fps: 16, seed: 3}
scenes:
  - id: talk
    image: {prompt: "a desk", steps: 1}
    audio: {tts: {text: "Good evening. Here is the news.", language: en, backend: espeak}}
  - id: walk
    image: {prompt: "a fox", steps: 1}
    video: {prompt: walk, frames: 5, steps: 2, segments: 2}
  - id: sing
    lipsync: {avatar: assets/avatar.png, audio: assets/line1.wav, infer_frames: 16, steps: 2}
assemble: {subtitles: srt}
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    spec = new_project(tmp_path_factory.mktemp("msgs") / "p", "msgs.yaml", SPEC)
    events = spec.parent / "events.jsonl"
    shown = io.StringIO()
    display = PlainProgress(0, stream=shown)
    result = render(spec, progress=False, events=events, sinks=[display])
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    return spec, result, lines, shown.getvalue()


def copy_of(rendered, tmp_path: Path) -> Path:
    spec = rendered[0]
    shutil.copytree(spec.parent, tmp_path / "p")
    return tmp_path / "p" / spec.name


def runs(spec: Path) -> dict[str, str]:
    plan = Session.open(spec).plan()
    return {st.id: str(st.reason) for st in plan.to_run()}


# --- segments in plan ---------------------------------------------------------------------------

@pytest.mark.slow
def test_plan_counts_segments_as_the_render_made_them(rendered, tmp_path):
    spec, result, _, _ = rendered
    made = result.outcome.meta["sing.lipsync"]["segments"]
    assert made == 2                                  # 1.2 s of speech, 16 frames a segment
    fresh = copy_of(rendered, tmp_path)
    shutil.rmtree(fresh.parent / ".cinesynth")        # nothing cached: counted from the speech
    for source in (fresh, spec):                      # and from the cached lip-sync's facts
        plan = Session.open(source).plan()
        stages = {s["id"]: s for s in as_json(plan)["stages"]}
        assert stages["sing.lipsync"]["segments"] == made
        assert (stages["walk.video.1"]["segment"], stages["walk.video.2"]["segment"]) == (1, 2)
        assert stages["walk.video.2"]["segments"] == 2
        assert "segments" not in stages["talk.image"] and "segments" not in stages["assemble.final"]
    table = {row.split()[0]: row for row in as_table(plan).splitlines()}
    assert table["stage"].split() == ["stage", "kind", "status", "segments", "key", "reason"]
    assert table["sing.lipsync"].split()[2:5] == ["cached", "2", "segments"]
    assert table["walk.video.2"].split()[2:5] == ["cached", "segment", "2/2"]
    assert 'n_sing_lipsync["sing.lipsync<br/>lipsync · cached · 2 segments"]' in as_mermaid(plan)


@pytest.mark.slow
def test_longer_speech_gives_more_segments_in_plan(rendered, tmp_path):
    spec = copy_of(rendered, tmp_path)
    wav = spec.parent / "assets/line1.wav"
    with wave.open(str(wav)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    with wave.open(str(wav), "wb") as w:               # three times as long: 3.6 s, 58 frames
        w.setparams(params)
        w.writeframes(frames * 3)
    plan = Session.open(spec).plan()
    stages = {s["id"]: s for s in as_json(plan)["stages"]}
    assert stages["sing.lipsync"]["segments"] == 4


# --- progress per segment -----------------------------------------------------------------------

@pytest.mark.slow
def test_progress_events_carry_the_segment(rendered):
    _, _, lines, shown = rendered
    progress = [e for e in lines if e["event"] == "stage_progress"]
    lip = [(e["segment"], e["segments"], e["segment_step"], e["segment_steps"], e["step"], e["total"])
           for e in progress if e["stage"] == "sing.lipsync"]
    assert lip == [(1, 2, 0, 2, 0, 4), (1, 2, 1, 2, 1, 4), (1, 2, 2, 2, 2, 4),
                   (2, 2, 0, 2, 2, 4), (2, 2, 1, 2, 3, 4), (2, 2, 2, 2, 4, 4)]
    for k in (1, 2):
        chain = [(e["segment"], e["segments"], e["segment_step"], e["step"])
                 for e in progress if e["stage"] == f"walk.video.{k}"]
        assert chain == [(k, 2, 0, 0), (k, 2, 1, 1), (k, 2, 2, 2)]
    assert not any("segment" in e for e in progress if e["stage"] == "talk.image")
    assert "  sing.lipsync segment 1/2\n" in shown and "  sing.lipsync segment 2/2\n" in shown
    assert "  walk.video.2 segment 2/2\n" in shown


def test_event_json_leaves_out_segment_fields_it_does_not_have():
    assert json.loads(Event("stage_progress", stage="a.image", step=1, total=2, time=0).to_json()) == {
        "event": "stage_progress", "stage": "a.image", "step": 1, "total": 2, "rank": 0, "time": 0}


# --- rerun reasons name the spec field ----------------------------------------------------------

@pytest.mark.slow
def test_edited_speech_is_named_by_its_field(rendered, tmp_path):
    spec = copy_of(rendered, tmp_path)
    with open(spec.parent / "assets/line1.wav", "r+b") as f:   # one sample changed
        f.seek(2000)
        byte = f.read(1)
        f.seek(2000)
        f.write(bytes([byte[0] ^ 1]))
    assert runs(spec) == {
        "sing.lipsync": "input changed: audio (assets/line1.wav)",
        "assemble.final": "input changed: sing.lipsync.audio (assets/line1.wav); upstream runs: sing.lipsync",
        "assemble.final.srt": "input changed: sing.lipsync.audio (assets/line1.wav)",
    }


@pytest.mark.slow
def test_edited_avatar_is_named_by_its_field(rendered, tmp_path):
    spec = copy_of(rendered, tmp_path)
    shutil.copy(spec.parent / "assets/avatar.png", spec.parent / "assets/other.png")
    from PIL import Image

    with Image.open(spec.parent / "assets/avatar.png") as im:
        im.convert("RGB").rotate(90).save(spec.parent / "assets/avatar.png")
    assert runs(spec) == {"sing.lipsync": "input changed: avatar (assets/avatar.png)",
                          "assemble.final": "upstream runs: sing.lipsync"}


# --- subtitles follow their text and timings only -----------------------------------------------

@pytest.mark.slow
def test_new_picture_reruns_its_stages_not_the_subtitles(rendered, tmp_path):
    spec = copy_of(rendered, tmp_path)
    spec.write_text(SPEC.replace("a fox", "a wolf"))
    assert runs(spec) == {"walk.image": "parameters changed: prompt",
                          "walk.video.1": "upstream runs: walk.image",
                          "walk.video.2": "upstream runs: walk.video.1",
                          "assemble.final": "upstream runs: walk.video.1, walk.video.2"}
    spec.write_text(SPEC.replace("a desk", "a chair"))
    assert set(runs(spec)) == {"talk.image", "assemble.final"}


@pytest.mark.slow
def test_new_timing_reruns_the_subtitles(rendered, tmp_path):
    spec = copy_of(rendered, tmp_path)
    spec.write_text(SPEC.replace("frames: 5", "frames: 9"))
    assert set(runs(spec)) == {"walk.video.1", "walk.video.2", "assemble.final", "assemble.final.srt"}
    assert runs(spec)["assemble.final.srt"] == "parameters changed: scenes"


@pytest.mark.slow
def test_subtitle_times_match_the_assembled_scenes(rendered):
    from cinesynth_batch.stages.subtitles import scene_times

    spec, result, _, _ = rendered
    plan = Session.open(spec).plan()
    node = plan.graph["assemble.final.srt"]
    assert set(node.inputs) == {"a0", "a2"}          # the sounds: no picture, no clip of fixed length
    out = spec.parent / "outputs/msgs"
    paths = {name: out / plan.graph[value.node].publish if hasattr(value, "node") else value.path
             for name, value in node.inputs.items()}
    times = scene_times(node.params, paths)
    made = {s["id"]: (s["start"], s["start"] + s["duration"]) for s in result.outcome.meta["assemble.final"]["scenes"]}
    assert times.keys() == made.keys()
    for sid in made:
        assert times[sid] == pytest.approx(made[sid], abs=1e-3)


LABELS = """\
project: labels
profile: tiny
defaults: {resolution: 64x64, fps: 16, seed: 3}
scenes:
  - id: talk
    image: {prompt: "a desk", steps: 1, upscale: x2}
    audio: assets/line1.wav
  - id: walk
    image: {prompt: "a fox", steps: 1}
    video: {prompt: walk, frames: 5, steps: 2, segments: 2}
  - id: sing
    lipsync: {avatar: assets/avatar.png, audio: assets/line1.wav, infer_frames: 16, steps: 2}
  - id: move
    animate: {reference_video: assets/dance.mp4, character: assets/avatar.png, mode: animate}
assemble: {music: {file: assets/bed.wav}}
"""


def test_every_input_is_labelled_by_its_spec_field(tmp_path):
    from cinesynth_batch.plan.planner import input_labels

    graph = Session.open(new_project(tmp_path / "p", "labels.yaml", LABELS)).plan().graph
    assert input_labels(graph["assemble.final"]) == {
        "v0": "talk.image (talk.upscale)", "a0": "talk.audio (assets/line1.wav)",
        "v1": "walk.video (walk.video.1, walk.video.2)",
        "v2": "sing.lipsync", "a2": "sing.lipsync.audio (assets/line1.wav)",
        "v3": "move.animate", "a3": "move.animate.reference_video (assets/dance.mp4)",
        "music": "music (assets/bed.wav)"}
    assert input_labels(graph["sing.lipsync"]) == {"avatar": "avatar (assets/avatar.png)",
                                                   "audio": "audio (assets/line1.wav)"}
    assert input_labels(graph["move.animate"])["reference"] == "reference_video (assets/dance.mp4)"
    assert input_labels(graph["move.pose"]) == {"video": "reference_video (assets/dance.mp4)"}
    assert input_labels(graph["walk.video.2"]) == {"prev": "prev (walk.video.1)"}


def test_plan_counts_lipsync_segments_without_torch(tmp_path):
    from fresh import light_cli

    spec = new_project(tmp_path / "p", "labels.yaml", LABELS)
    out = light_cli("plan", str(spec), "-f", "json")
    assert out.returncode == 0, out.stderr
    stages = {s["id"]: s for s in json.loads(out.stdout)["stages"]}
    assert stages["sing.lipsync"]["segments"] == 2


def test_terminal_bar_names_the_segment():
    from cinesynth_batch.execute.progress import RichProgress

    bar = RichProgress(1)
    try:
        bar(Event("stage_started", stage="sing.lipsync", kind="lipsync", reason="new"))
        bar(Event("stage_progress", stage="sing.lipsync", kind="lipsync", step=7, total=12,
                  segment=2, segments=3, segment_step=3, segment_steps=4))
        steps = bar._p.tasks[1]
        assert (steps.description, steps.completed, steps.total) == ("  lipsync segment 2/3 steps", 3, 4)
        bar(Event("stage_progress", stage="a.image", kind="image", step=1, total=2))
        assert (steps.completed, steps.total) == (1, 2)
    finally:
        bar.close()
