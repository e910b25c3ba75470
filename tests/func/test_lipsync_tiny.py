"""Lip-sync end to end on the tiny profile (tiny Wan2.2-S2V in the official folder layout)."""

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from cinesynth_batch.errors import RenderError
from cinesynth_batch.execute.render import render
from cinesynth_batch.media.audio import read_audio
from cinesynth_batch.media.video_io import probe
from projects import new_project

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    spec = new_project(tmp_path_factory.mktemp("lipsync") / "p", "lipsync.yaml")
    return spec.parent, render(spec, progress=False)


def test_clip_lasts_as_long_as_the_speech(rendered):
    root, result = rendered
    assert set(result.outcome.ran) == {"anchor.image", "anchor.lipsync", "guest.lipsync", "assemble.final"}
    speech = 1.2                                          # assets/line1.wav
    for scene in ("anchor", "guest"):
        info = probe(root / f"outputs/lipsync/scenes/{scene}.mp4")
        assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 64, 64)
        assert abs(info.frames / 16 - speech) <= 1 / 16
    final = probe(root / "outputs/lipsync/final.mp4")
    assert final.frames == 2 * round(speech * 16)


def test_audio_in_the_clip_is_the_speech(rendered):
    root, _ = rendered
    ours = read_audio(root / "outputs/lipsync/scenes/anchor.mp4", rate=16000, channels=1)[0]
    src = read_audio(root / "assets/line1.wav", rate=16000, channels=1)[0]
    n = min(len(ours), len(src)) - 2048
    best = max(np.corrcoef(ours[lag:lag + n], src[:n])[0, 1] for lag in range(0, 2048, 16))
    assert best > 0.95


def test_teacache_stats_are_in_the_manifest(rendered):
    import json

    root, result = rendered
    meta = result.outcome.meta["guest.lipsync"]
    stats = meta["cache"]["s2v"]
    assert stats["computed"] + stats["skipped"] == meta["segments"] * 2 * 4
    assert result.outcome.meta["anchor.lipsync"]["cache"] is None
    manifest = json.loads((root / "outputs/lipsync/manifest.json").read_text())
    assert manifest["files"]["scenes/guest.mp4"]["frames"] == 19


def write_silence(path: Path, seconds: float = 1.0) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))


@pytest.mark.parametrize("case,field,expected", [
    ("unreadable", "audio", "lipsync.audio:"),
    ("silent", "audio", "lipsync.audio:"),
    ("not_image", "avatar", "lipsync.avatar: bad.png is not an image"),
])
def test_bad_inputs_name_scene_and_field_and_lose_nothing(rendered, tmp_path, case, field, expected):
    root, _ = rendered
    work = tmp_path / "p"
    shutil.copytree(root, work)
    bad = {"unreadable": "bad.wav", "silent": "bad.wav", "not_image": "bad.png"}[case]
    if case == "silent":
        write_silence(work / "assets" / bad)
    else:
        (work / "assets" / bad).write_text("this is not media")
    spec = work / "lipsync.yaml"
    text = spec.read_text()
    old = "      avatar: assets/avatar.png\n      audio: assets/line1.wav\n"
    new = {"audio": f"      avatar: assets/avatar.png\n      audio: assets/{bad}\n",
           "avatar": f"      avatar: assets/{bad}\n      audio: assets/line1.wav\n"}[field]
    spec.write_text(text.replace(old, new))
    with pytest.raises(RenderError) as exc:
        render(spec, progress=False, keep_going=True)
    assert "guest.lipsync" in exc.value.message and expected in exc.value.message
    result = exc.value.result
    assert "anchor.lipsync" in result.outcome.cached          # the other scene is kept
    assert (work / "outputs/lipsync/scenes/anchor.mp4").is_file()
