"""Change Character end to end on the tiny profile with the production preset: real mediapipe
detection on a real photo, the tiny Wan2.2-Animate through diffusers' WanAnimatePipeline."""

import shutil

import numpy as np
import pytest

from cinesynth_batch.execute.render import render
from cinesynth_batch.execute.session import Session
from cinesynth_batch.media.audio import read_audio
from cinesynth_batch.media.video_io import probe
from cinesynth_batch.preprocess.frames import animate_frame_count, video_duration
from projects import new_project

pytestmark = pytest.mark.slow

PREP = {"swap.pose", "swap.face", "swap.mask", "swap.background", "mimic.pose", "mimic.face"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    spec = new_project(tmp_path_factory.mktemp("animate") / "p", "change_character.yaml", presets=True)
    return spec.parent, render(spec, progress=False)


def test_both_modes_render_with_the_frame_rule(rendered):
    root, result = rendered
    assert set(result.outcome.ran) | set(result.outcome.cached) == PREP | {
        "swap.animate", "mimic.animate", "assemble.final"}
    # the pose and face videos of both scenes are the same content: made once, found once
    assert {"mimic.pose", "mimic.face"} <= set(result.outcome.cached)
    n = animate_frame_count(video_duration(root / "assets/dance.mp4"), 16, 601)
    assert n == 41
    for scene in ("swap", "mimic"):
        info = probe(root / f"outputs/change_character/scenes/{scene}.mp4")
        assert (info.frames, info.width, info.height, info.audio_codec) == (n, 64, 64, "aac")
    facts = result.outcome.meta["swap.animate"]
    assert facts["windows"] == 3 and facts["mode"] == "replace"
    used = facts["runtime"]
    assert {f["setting"] for f in used["fallbacks"]} >= {"attention", "block_swap"}
    # the preset's fp8 weight storage runs on the CPU too (it falls back only where it cannot run)
    assert "quantize" not in {f["setting"] for f in used["fallbacks"]}
    assert used["quantization"] == "fp8_e4m3fn" and used["fp8_layers"] > 0


def test_output_keeps_the_reference_audio(rendered):
    root, _ = rendered
    ours = read_audio(root / "outputs/change_character/scenes/swap.mp4", rate=16000, channels=1)[0]
    ref = read_audio(root / "assets/dance.mp4", rate=16000, channels=1)[0]
    n = min(len(ours), len(ref)) - 1024
    assert np.corrcoef(ours[:n], ref[:n])[0, 1] > 0.99


def test_new_character_reruns_only_the_animate_stage(rendered, tmp_path):
    root, _ = rendered
    work = tmp_path / "p"
    shutil.copytree(root, work)
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 200, 30)).save(work / "assets" / "other.png")
    spec = work / "change_character.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("      character: assets/avatar.png\n      mode: replace",
                                 "      character: assets/other.png\n      mode: replace"))
    plan = Session.open(spec).plan()
    to_run = {st.id for st in plan.to_run()}
    assert to_run == {"swap.animate", "assemble.final"}
    assert str(plan.stages["swap.animate"].reason) == "input changed: character (assets/other.png)"
    assert all(plan.stages[n].status == "cached" for n in PREP)
