"""Speech from text and audio from a URL in one spec, on the tiny profile: a lip-sync scene
sings the vocals separated from a clip served over HTTP, a still scene speaks a tts line and
crossfades in, a third scene plays sound extracted from the same URL; subtitles are burnt in
and their times follow the crossfade."""

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from cinesynth_batch.execute.render import render
from cinesynth_batch.media.audio import probe_audio
from cinesynth_batch.media.ffmpeg import run_ffmpeg
from cinesynth_batch.media.subtitles import parse_srt
from cinesynth_batch.media.video_io import probe, read_frames
from media_server import MediaServer
from projects import new_project

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "specs" / "examples" / "assets"
FPS = 16
XFADE = 4                      # 0.25 s at 16 fps
SPEC = """\
project: voices
profile: tiny
defaults: {{resolution: 64x64, fps: 16, seed: 7}}
allow_hosts: [127.0.0.1]
scenes:
  - id: cover
    lipsync:
      avatar: assets/avatar.png
      audio: {{separate: {{source: "{url}", stem: vocals}}}}
      infer_frames: 16
      steps: 2
  - id: hello
    image: {{prompt: a red fox, steps: 2}}
    audio: {{tts: {{text: "Good evening. Here is the news.", language: en}}}}
  - id: line
    transition: cut
    image: {{prompt: a blue car, steps: 2}}
    audio: {{extract: {{source: "{url}", start: 0.25, end: 1.0}}}}
assemble:
  music: {{file: assets/bed.wav, gain_db: -18, duck_under_speech: true}}
  transition: {{crossfade: 0.25}}
  subtitles: burn
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    base = tmp_path_factory.mktemp("voices")
    served = base / "served"
    served.mkdir()
    run_ffmpeg(["-y", "-i", str(ASSETS / "dance.mp4"), "-t", "1.25", "-vf", "scale=64:64",
                "-c:v", "libx264", "-c:a", "aac", str(served / "clip.mp4")], "making the served clip")
    server = MediaServer(served)
    spec = new_project(base / "p", "s.yaml", SPEC.format(url=server.url("clip.mp4")))
    (base / "p" / "cinesynth.toml").write_text('[trust]\nallow_hosts = ["127.0.0.1"]\n')  # the operator allows it
    try:
        yield spec, render(spec, progress=False)
    finally:
        server.close()


def speech_start(path: Path) -> float:
    """Where the sound of a WAV starts, read with the standard library (not our code)."""
    with wave.open(str(path), "rb") as w:
        rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    loud = np.nonzero(np.abs(pcm) > 0.02 * np.abs(pcm).max())[0]
    return loud[0] / rate


def test_all_audio_sources_render_in_one_assembly(rendered):
    spec, result = rendered
    downloads = [n for n in result.outcome.ran if n.startswith("download.")]
    assert len(downloads) == 1                                  # one download serves both uses
    assert set(result.outcome.ran) == {*downloads, "cover.separate", "cover.lipsync", "hello.image",
                                       "hello.tts", "line.image", "line.extract_audio",
                                       "assemble.final.srt", "assemble.final"}
    out = spec.parent / "outputs" / "voices"
    cover = probe(out / "scenes/cover.mp4")
    vocals = probe_audio(out / "scenes/cover.vocals.wav")
    assert abs(cover.frames / FPS - vocals.duration) <= 1 / FPS
    tts = probe_audio(out / "scenes/hello.tts.wav")
    scenes = {s["id"]: s for s in result.outcome.meta["assemble.final"]["scenes"]}
    assert scenes["cover"]["frames"] == cover.frames
    assert scenes["hello"]["frames"] == int(np.ceil(tts.duration * FPS))    # a still lasts its speech
    assert scenes["line"]["frames"] == round(0.75 * FPS)                    # the extracted 0.25-1.0 s
    final = probe(out / "final.mp4")
    assert final.frames == sum(s["frames"] for s in scenes.values()) - XFADE


def test_subtitle_times_move_back_by_the_crossfade(rendered):
    spec, result = rendered
    out = spec.parent / "outputs" / "voices"
    scenes = {s["id"]: s for s in result.outcome.meta["assemble.final"]["scenes"]}
    start = scenes["hello"]["start"]
    assert start == (scenes["cover"]["frames"] - XFADE) / FPS                # shifted, not the cut start
    assert scenes["line"]["start"] == start + scenes["hello"]["duration"]  # a cut into `line`
    cues = parse_srt((out / "final.srt").read_text(encoding="utf-8"))
    assert [c.text for c in cues] == ["Good evening.", "Here is the news."]
    first = speech_start(out / "scenes/hello.tts.wav")
    assert abs(cues[0].start - (start + first)) <= 1 / FPS
    assert abs(cues[0].start - (scenes["cover"]["frames"] / FPS + first)) > 3 / FPS
    assert cues[-1].end <= start + scenes["hello"]["duration"] + 1e-3


def test_burnt_subtitles_mark_only_the_frames_under_a_cue(rendered, tmp_path):
    spec, result = rendered
    work = tmp_path / "p"
    shutil.copytree(spec.parent, work)
    plain = work / "s.yaml"
    plain.write_text(spec.read_text().replace("subtitles: burn", "subtitles: none"))
    again = render(plain, progress=False)
    assert again.outcome.ran == ["assemble.final"]
    burnt = read_frames(spec.parent / "outputs/voices/final.mp4").astype(np.int16)
    clean = read_frames(work / "outputs/voices/final.mp4").astype(np.int16)
    diff = np.abs(burnt - clean).reshape(len(burnt), -1).mean(axis=1)
    cues = parse_srt((spec.parent / "outputs/voices/final.srt").read_text(encoding="utf-8"))
    inside = [i for i in range(len(diff)) if cues[0].start + 0.1 <= i / FPS <= cues[-1].end - 0.1]
    before = range(0, int(cues[0].start * FPS) - 1)
    assert inside and min(diff[i] for i in inside) > 1.0
    assert max(diff[i] for i in before) < 1.0
