"""TTS end to end on the tiny profile: espeak (ko, en, zh) and the qwen3-tts worker, lip-sync,
subtitles, edits and bad lines."""

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from cinesynth_batch.errors import RenderError
from cinesynth_batch.execute.render import render
from cinesynth_batch.media.audio import read_audio
from cinesynth_batch.media.subtitles import parse_srt
from cinesynth_batch.media.video_io import probe, read_frames
from projects import new_project

pytestmark = pytest.mark.slow

FPS = 16
SPEAKING = ("hello", "news", "weather", "qwen")
ALL = {"hello.tts", "news.tts", "weather.tts", "qwen.tts", "weather.image", "hello.lipsync",
       "news.lipsync", "qwen.lipsync", "assemble.final.srt", "assemble.final"}


def _worker_env():
    from cinesynth_batch.errors import ModelError
    from cinesynth_batch.tts.qwen_client import worker_python

    try:
        return worker_python()
    except ModelError as exc:
        pytest.skip(f"{exc.message}: `make test` creates it (make tts-env)")


def make_project(root: Path) -> Path:
    new_project(root, "tts_lipsync.yaml")
    return root


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    _worker_env()
    root = make_project(tmp_path_factory.mktemp("tts") / "p")
    return root, render(root / "tts_lipsync.yaml", progress=False)


@pytest.fixture
def clone(rendered, tmp_path):
    root, _ = rendered
    work = tmp_path / "p"
    shutil.copytree(root, work)
    return work


def wav_facts(path: Path):
    """Duration and where the sound starts, read with the standard library (not our code)."""
    with wave.open(str(path), "rb") as w:
        rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    loud = np.nonzero(np.abs(pcm) > 0.02 * np.abs(pcm).max())[0]
    return len(pcm) / rate, loud[0] / rate, (loud[-1] + 1) / rate


def test_renders_every_stage_with_one_tts_model_load(rendered):
    root, result = rendered
    assert set(result.outcome.ran) == ALL
    assert result.outcome.model_loads.get("tts") == 1
    out = root / "outputs/tts_lipsync"
    for sid in SPEAKING:
        meta = result.outcome.meta[f"{sid}.tts"]
        assert meta["sample_rate"] == (24000 if sid == "qwen" else 22050)
        assert (out / f"scenes/{sid}.tts.wav").is_file()
    final = probe(out / "final.mp4")
    scenes = result.outcome.meta["assemble.final"]["scenes"]
    assert final.frames == sum(s["frames"] for s in scenes)
    assert (out / "final.srt").is_file()


def test_speech_in_the_final_video_is_the_tts_audio(rendered):
    root, result = rendered
    out = root / "outputs/tts_lipsync"
    mix = read_audio(out / "final.mp4", rate=16000, channels=1)[0]
    for scene in result.outcome.meta["assemble.final"]["scenes"]:
        tts = read_audio(out / f"scenes/{scene['id']}.tts.wav", rate=16000, channels=1)[0]
        start = round(scene["start"] * 16000)
        n = min(len(tts), round(scene["duration"] * 16000)) - 1024
        best = max(np.corrcoef(mix[start + lag:start + lag + n], tts[:n])[0, 1] for lag in range(0, 1024, 8))
        assert best > 0.95, scene["id"]


def test_srt_cues_follow_scene_starts_and_speech(rendered):
    root, result = rendered
    out = root / "outputs/tts_lipsync"
    cues = parse_srt((out / "final.srt").read_text(encoding="utf-8"))
    texts = [c.text for c in cues]
    assert texts == ["안녕하세요, 오늘의 뉴스입니다.", "Good evening.", "Here is the news.", "明天北京晴天。",
                     "See you tomorrow."]
    scenes = {s["id"]: s for s in result.outcome.meta["assemble.final"]["scenes"]}
    by_scene = {"hello": cues[0:1], "news": cues[1:3], "weather": cues[3:4], "qwen": cues[4:5]}
    frame = 1 / FPS
    for sid, mine in by_scene.items():
        seconds, first, last = wav_facts(out / f"scenes/{sid}.tts.wav")
        start, end = scenes[sid]["start"], scenes[sid]["start"] + scenes[sid]["duration"]
        assert abs(mine[0].start - (start + first)) <= frame, sid
        assert abs(mine[-1].end - min(end, start + last)) <= frame, sid
        assert start - 1e-3 <= mine[0].start and mine[-1].end <= end + 1e-3
    # the two sentences of "news" share its speech in proportion to their length (12 : 14 chars)
    a, b = by_scene["news"]
    assert abs((a.end - a.start) / (b.end - a.start) - 12 / 26) < 0.01
    # a lip-synced scene lasts as long as its speech (within one frame)
    for sid in ("hello", "news", "qwen"):
        seconds, _, _ = wav_facts(out / f"scenes/{sid}.tts.wav")
        assert abs(scenes[sid]["duration"] - seconds) <= frame


def test_changing_a_line_reruns_that_tts_its_lipsync_and_the_assembly(clone):
    spec = clone / "tts_lipsync.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace("Here is the news.", "Here is the weather."),
                    encoding="utf-8")
    result = render(spec, progress=False)
    assert set(result.outcome.ran) == {"news.tts", "news.lipsync", "assemble.final", "assemble.final.srt"}
    assert "Here is the weather." in (clone / "outputs/tts_lipsync/final.srt").read_text(encoding="utf-8")


def test_second_render_runs_nothing(clone):
    result = render(clone / "tts_lipsync.yaml", progress=False)
    assert result.outcome.ran == [] and len(result.outcome.cached) == len(ALL)


@pytest.mark.parametrize("old,new,stage,expected", [
    ('language: ko, voice: f3', 'language: xx, voice: f3', "hello.tts",
     "scene 'hello': lipsync.audio.tts.language: language 'xx' is not one eSpeak NG speaks (use one of ko, en"),
    ('text: "Good evening. Here is the news."', 'text: "  "', "news.tts",
     "scene 'news': lipsync.audio.tts.text: the text is empty"),
    ('text: "明天北京晴天。", language: zh', 'text: "明天北京晴天。", language: zh, voice: nobody', "weather.tts",
     "scene 'weather': audio.tts.voice: voice 'nobody' is not an eSpeak NG variant"),
    ('language: en, backend: qwen3-tts', 'language: klingon, backend: qwen3-tts', "qwen.tts",
     "scene 'qwen': lipsync.audio.tts.language: language 'klingon' is not one this Qwen3-TTS model speaks"),
])
def test_bad_line_fails_its_tts_stage_and_keeps_the_rest(clone, old, new, stage, expected):
    spec = clone / "tts_lipsync.yaml"
    text = spec.read_text(encoding="utf-8")
    assert old in text
    spec.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(RenderError) as exc:
        render(spec, progress=False, keep_going=True)
    assert stage in exc.value.message and expected in exc.value.message
    outcome = exc.value.result.outcome
    assert set(outcome.failed) == {stage}
    scene = stage.split(".")[0]
    kept = {n for n in ALL if not n.startswith(scene + ".") and not n.startswith("assemble.")}
    assert kept <= set(outcome.cached)                    # the other scenes' results are kept
    for other in SPEAKING:
        if other != scene:
            assert (clone / f"outputs/tts_lipsync/scenes/{other}.tts.wav").is_file()


def test_burnt_in_subtitles_are_drawn_where_the_cue_is(tmp_path):
    root = new_project(tmp_path / "p")
    body = """
project: burn
defaults: {resolution: 128x128, fps: 8, seed: 3}
scenes:
  - id: quiet
    image: {prompt: a wall, steps: 1}
    duration: 1.0
  - id: talk
    image: {prompt: a wall, steps: 1}
    audio: {tts: {text: "Hello world, this is a subtitle.", language: en}}
assemble: {subtitles: SUBS}
"""
    frames = {}
    for subs in ("srt", "burn"):
        spec = root / f"{subs}.yaml"
        spec.write_text(body.replace("SUBS", subs).replace("project: burn", f"project: {subs}"))
        result = render(spec, progress=False)
        assert (root / f"outputs/{subs}/final.srt").is_file()
        frames[subs] = read_frames(root / f"outputs/{subs}/final.mp4").astype(np.int16)
        scenes = result.outcome.meta["assemble.final"]["scenes"]
    talk = scenes[1]["start"] * 8 + 4                      # a frame inside the cue
    bottom = np.abs(frames["burn"][int(talk), 96:] - frames["srt"][int(talk), 96:]).mean()
    top = np.abs(frames["burn"][int(talk), :64] - frames["srt"][int(talk), :64]).mean()
    before = np.abs(frames["burn"][2] - frames["srt"][2]).mean()
    assert bottom > 8 * max(top, 0.5)                      # glyphs at the bottom, nothing above
    assert before < 1.0                                    # no cue, no text


@pytest.mark.parametrize("stage", ["news.tts", "qwen.tts"])
def test_remade_speech_is_identical_so_nothing_below_reruns(clone, stage):
    import yaml

    lock = yaml.safe_load((clone / "outputs/tts_lipsync/render.lock").read_text(encoding="utf-8"))
    key = lock["stages"][stage]["key"]
    (clone / ".cinesynth/cache/keys" / key[:2] / f"{key}.json").unlink()
    result = render(clone / "tts_lipsync.yaml", progress=False)
    assert result.outcome.ran == [stage]
    assert {f"{stage.split('.')[0]}.lipsync", "assemble.final", "assemble.final.srt"} <= set(result.outcome.cached)
