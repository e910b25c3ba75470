"""Scene transitions (xfade / acrossfade) and music ducking in the assemble stage, through
the real ffmpeg: frame counts, durations, sound levels and loudness of the final mix."""

from __future__ import annotations

import numpy as np
import pytest

from cinesynth_batch.media.audio import read_audio
from cinesynth_batch.media.ffmpeg import measure_loudness
from cinesynth_batch.media.video_io import probe, read_frames
from cinesynth_batch.stages import assemble
from cinesynth_batch.stages.base import StageError

from test_assemble import FPS, RATE, SPANS, TOTAL, _inputs, _params, assets  # noqa: F401


def _with_transitions(into_talk, into_outro, **over) -> dict:
    params = _params(**over)
    if into_talk:
        params["scenes"][1]["transition"] = into_talk
    if into_outro:
        params["scenes"][2]["transition"] = into_outro
    return params


def _tone_db(audio: np.ndarray, freq: float, a: int, b: int, margin: int = 4800) -> float:
    """Level of one tone in frames [a, b) of the programme (a Hann-windowed FFT peak)."""
    seg = audio.mean(0)[round(a * RATE / FPS) + margin: round(b * RATE / FPS) - margin]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    k = int(np.argmin(np.abs(np.fft.rfftfreq(len(seg), 1 / RATE) - freq)))
    return float(20 * np.log10(spec[k - 3:k + 4].max()))


def test_crossfades_shorten_the_programme_by_their_overlap(assets, tmp_path):
    out = tmp_path / "x.mp4"
    result = assemble.run(_with_transitions({"crossfade": 0.5}, {"crossfade": 0.25}), _inputs(assets), out)
    overlap = round(0.5 * FPS) + round(0.25 * FPS)                # 8 + 4 frames
    assert result["frames"] == TOTAL - overlap == 50
    info = probe(out)
    assert info.frames == 50 and info.fps == FPS
    assert result["duration"] == pytest.approx(50 / FPS)
    starts = {s["id"]: s["start"] for s in result["scenes"]}
    assert starts == {"intro": 0.0, "talk": (25 - 8) / FPS, "outro": (25 - 8 + 21 - 4) / FPS}
    audio = read_audio(out, rate=RATE)
    assert abs(audio.shape[1] - 50 * RATE / FPS) < 2048            # AAC framing only


def test_crossfade_dissolves_the_picture(assets, tmp_path):
    out = tmp_path / "y.mp4"
    assemble.run(_with_transitions({"crossfade": 0.5}, None), _inputs(assets), out)
    frames = read_frames(out).astype(float)
    green, yellow = frames[16, 24, 32], frames[25, 24, 32]      # intro's last frames are green
    middle = frames[17 + 4, 24, 32]                              # half way through the 8-frame fade
    assert green[1] > 200 and green[0] < 60 and yellow[0] > 200
    assert 80 < middle[0] < 190                                   # red channel between green and yellow


def test_cut_is_the_default_and_keeps_every_frame(assets, tmp_path):
    result = assemble.run(_with_transitions("cut", None), _inputs(assets), tmp_path / "c.mp4")
    assert result["frames"] == TOTAL


def test_crossfade_longer_than_a_scene_is_an_error(assets, tmp_path):
    with pytest.raises(StageError, match="crossfade of 32 frames"):
        assemble.run(_with_transitions(None, {"crossfade": 2.0}), _inputs(assets), tmp_path / "e.mp4")


@pytest.fixture(scope="module")
def ducked(assets, tmp_path_factory):
    d = tmp_path_factory.mktemp("duck")
    out = {}
    for depth in (None, 6.0, 12.0):
        music = {"input": "music", "gain_db": -18.0, **({"duck_db": depth} if depth else {})}
        path = d / f"{depth}.mp4"
        assemble.run(_params(music=music), _inputs(assets), path)
        out[depth] = read_audio(path, rate=RATE)
    return out


@pytest.mark.parametrize("depth", [6.0, 12.0])
def test_music_ducks_under_speech_by_its_depth(ducked, depth):
    a, b = SPANS["talk"]                    # 440 Hz speech over the 220 Hz bed
    drop = _tone_db(ducked[None], 220, a, b) - _tone_db(ducked[depth], 220, a, b)
    assert depth - 1.0 <= drop <= depth + 0.5
    # the speech itself is untouched, and the music is not lowered where nobody speaks
    assert _tone_db(ducked[depth], 440, a, b) == pytest.approx(_tone_db(ducked[None], 440, a, b), abs=0.3)
    a, b = SPANS["intro"]
    assert _tone_db(ducked[depth], 220, a, b) == pytest.approx(_tone_db(ducked[None], 220, a, b), abs=0.5)


@pytest.mark.parametrize("transition", [None, {"crossfade": 0.5}])
def test_loudness_of_ducked_mix_meets_target(assets, tmp_path, transition):
    out = tmp_path / "l.mp4"
    params = _with_transitions(transition, None, loudness=-14.0,
                               music={"input": "music", "gain_db": -18.0, "duck_db": 12.0})
    result = assemble.run(params, _inputs(assets), out)
    assert result["loudness"]["target"] == -14.0
    assert measure_loudness(out)["integrated"] == pytest.approx(-14.0, abs=1.0)   # ebur128
