"""The assemble stage end to end: real segments, stills and tones through the real ffmpeg."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from PIL import Image

from cinesynth_batch.media.audio import read_audio, rms_db, write_tone
from cinesynth_batch.media.ffmpeg import measure_loudness, run_ffmpeg
from cinesynth_batch.media.video_io import probe, read_frames, write_video
from cinesynth_batch.stages import assemble
from cinesynth_batch.stages.base import StageError

FPS = 16
W, H = 64, 48
RATE = 48000
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
TONE_DB = 20 * math.log10(0.5 / math.sqrt(2))  # write_tone's default amplitude: -9.03 dBFS


def _solid(n: int, h: int, w: int, colour, first=None) -> np.ndarray:
    frames = np.empty((n, h, w, 3), np.uint8)
    frames[:] = colour
    if first is not None:
        frames[0] = first
    return frames


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("assets")
    write_video(_solid(9, 32, 48, RED), d / "seg1.mp4", FPS)
    # The second segment's first frame stands for the shared frame the chain drops.
    write_video(_solid(17, 64, 64, GREEN, first=BLUE), d / "seg2.mp4", FPS)
    write_video(_solid(12, 32, 48, BLUE), d / "seg24.mp4", 24)
    Image.new("RGB", (100, 50), YELLOW).save(d / "still.png")
    write_tone(d / "tone.wav", 1.3, freq=440, rate=16000, channels=1)
    write_tone(d / "music.wav", 0.7, freq=220, rate=22050, channels=2)
    write_tone(d / "long.wav", 3.0, freq=330, rate=44100, channels=2)
    return {p.stem: p for p in d.iterdir()}


def _params(**over) -> dict:
    params = {
        "fps": FPS,
        "width": W,
        "height": H,
        "audio_rate": RATE,
        "scenes": [
            {"id": "intro", "visual": "v0", "kind": "video", "duration": None, "audio": None},
            {"id": "talk", "visual": "img", "kind": "still", "duration": None, "audio": "a0",
             "audio_gain_db": 0.0},
            {"id": "outro", "visual": "img", "kind": "still", "duration": 1.0, "audio": None},
        ],
        "music": None,
        "loudness": None,
        "crf": 18,
    }
    params.update(over)
    return params


def _inputs(assets) -> dict:
    return {
        "v0": [str(assets["seg1"]), str(assets["seg2"])],
        "img": str(assets["still"]),
        "a0": str(assets["tone"]),
        "music": str(assets["music"]),
    }


# intro: 9 + (17 - 1) = 25 frames; talk: ceil(1.3 s * 16) = 21; outro: 16.
SPANS = {"intro": (0, 25), "talk": (25, 46), "outro": (46, 62)}
TOTAL = 62


def _span_db(audio: np.ndarray, scene: str, margin: int = 2048) -> float:
    a, b = SPANS[scene]
    lo = round(a * RATE / FPS) + margin
    hi = round(b * RATE / FPS) - margin
    return rms_db(audio[:, lo:hi])


@pytest.fixture(scope="module")
def basic(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("basic") / "final.mp4"
    calls: list[tuple[int, int]] = []
    ctx = SimpleNamespace(progress=lambda i, n: calls.append((i, n)), work_dir=None)
    result = assemble.run(_params(), _inputs(assets), out, ctx)
    return out, result, calls


def test_stage_constants():
    assert (assemble.KIND, assemble.OUTPUT_EXT, assemble.MODEL_ROLE) == ("assemble", ".mp4", None)


def test_result_describes_scenes(basic):
    _, result, calls = basic
    assert result["frames"] == TOTAL
    assert result["duration"] == TOTAL / FPS
    assert (result["width"], result["height"], result["fps"]) == (W, H, FPS)
    assert result["scenes"] == [
        {"id": "intro", "start": 0.0, "frames": 25, "duration": 25 / FPS},
        {"id": "talk", "start": 25 / FPS, "frames": 21, "duration": 21 / FPS},
        {"id": "outro", "start": 46 / FPS, "frames": 16, "duration": 1.0},
    ]
    assert result["loudness"] is None
    assert calls and calls[-1] == (TOTAL, TOTAL)


def test_output_streams(basic):
    out, _, _ = basic
    info = probe(out)
    assert (info.width, info.height, info.frames, info.fps) == (W, H, TOTAL, FPS)
    assert (info.video_codec, info.audio_codec, info.audio_rate, info.audio_channels) == ("h264", "aac", RATE, 2)
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.pix_fmt == "yuv420p"
        assert float(v.duration * v.time_base) == TOTAL / FPS
        audio_seconds = float(a.duration * a.time_base)
    assert abs(audio_seconds - TOTAL / FPS) <= 1024 / RATE
    decoded = read_audio(out)
    assert decoded.shape[0] == 2
    assert 0 <= decoded.shape[1] - round(TOTAL * RATE / FPS) < 1024
    # faststart: the moov box comes before mdat
    head = out.read_bytes()
    assert head.index(b"moov") < head.index(b"mdat")


def test_frames_order_padding_and_first_frame_drop(basic):
    out, _, _ = basic
    frames = read_frames(out).astype(int)
    assert frames.shape == (TOTAL, H, W, 3)
    centre = frames[:, H // 2, W // 2]

    def close(px, colour):
        return np.abs(px - np.array(colour)).max() <= 12

    assert all(close(centre[i], RED) for i in range(0, 9))
    assert all(close(centre[i], GREEN) for i in range(9, 25))  # the blue first frame is gone
    assert not any(close(centre[i], BLUE) for i in range(TOTAL))
    assert all(close(centre[i], YELLOW) for i in range(25, TOTAL))
    # 48x32 into 64x48: letterboxed (black rows at the top); 64x64: pillarboxed (black columns).
    assert frames[0, 0, W // 2].max() <= 20 and close(frames[0, H // 2, 0], RED)
    assert frames[12, H // 2, 0].max() <= 20 and close(frames[12, 0, W // 2], GREEN)
    # 100x50 still into 64x48: 64x32 with black bands above and below.
    assert frames[30, 2, W // 2].max() <= 20 and close(frames[30, H // 2, 2], YELLOW)


def test_audio_follows_scenes(basic):
    out, _, _ = basic
    audio = read_audio(out)
    assert _span_db(audio, "intro") < -60
    assert _span_db(audio, "talk") == pytest.approx(TONE_DB, abs=0.5)
    assert _span_db(audio, "outro") < -60


def test_music_bed_is_looped_gained_and_mixed_under(assets, tmp_path):
    inputs = _inputs(assets)
    quiet = assemble.run(_params(music={"input": "music", "gain_db": -12.0}), inputs, tmp_path / "q.mp4")
    loud = assemble.run(_params(music={"input": "music", "gain_db": 0.0}), inputs, tmp_path / "l.mp4")
    assert quiet["frames"] == loud["frames"] == TOTAL
    q, lo = read_audio(tmp_path / "q.mp4"), read_audio(tmp_path / "l.mp4")
    # Scene without speech: only the music, 12 dB down; the 0.7 s bed loops to the very end.
    assert _span_db(lo, "intro") == pytest.approx(TONE_DB, abs=0.7)
    assert _span_db(q, "intro") == pytest.approx(TONE_DB - 12.0, abs=0.7)
    assert _span_db(q, "outro") == pytest.approx(TONE_DB - 12.0, abs=0.7)
    # Speech keeps its level under the bed (no amix normalisation): power sum of both.
    expected = 10 * math.log10(10 ** (TONE_DB / 10) + 10 ** ((TONE_DB - 12.0) / 10))
    assert _span_db(q, "talk") == pytest.approx(expected, abs=0.5)


@pytest.mark.parametrize("target", [-14.0, -16.0, -23.0])
def test_loudness_normalisation(assets, tmp_path, target):
    out = tmp_path / "n.mp4"
    result = assemble.run(
        _params(music={"input": "music", "gain_db": -18.0}, loudness=target), _inputs(assets), out
    )
    assert result["frames"] == TOTAL
    assert result["loudness"]["target"] == target
    assert result["loudness"]["mode"] in ("linear", "dynamic")
    measured = measure_loudness(out)
    assert measured["integrated"] == pytest.approx(target, abs=1.0)
    info = probe(out)
    assert (info.audio_rate, info.audio_channels) == (RATE, 2)


def test_loudness_on_silence_keeps_silence(assets, tmp_path):
    params = _params(loudness=-14.0)
    params["scenes"] = [{"id": "quiet", "visual": "img", "kind": "still", "duration": 1.0, "audio": None}]
    result = assemble.run(params, _inputs(assets), tmp_path / "s.mp4")
    assert result["loudness"]["mode"] == "silent"
    assert rms_db(read_audio(tmp_path / "s.mp4")) < -80


def test_identical_inputs_give_identical_bytes(assets, tmp_path):
    params = _params(music={"input": "music", "gain_db": -18.0}, loudness=-16.0)
    a = tmp_path / "a" / "final.mp4"
    b = tmp_path / "b" / "other-name.mp4"
    assemble.run(params, _inputs(assets), a)
    assemble.run(params, _inputs(assets), b)
    assert a.read_bytes() == b.read_bytes()
    assert b"Lavf" not in a.read_bytes()  # bitexact muxing: no library version tag


def test_other_rates_channels_and_formats(assets, tmp_path):
    mp3 = tmp_path / "speech.mp3"
    flac6 = tmp_path / "surround.flac"
    run_ffmpeg(["-y", "-i", str(assets["long"]), "-c:a", "libmp3lame", str(mp3)], "making mp3")
    run_ffmpeg(["-y", "-i", str(assets["long"]), "-ac", "6", "-c:a", "flac", str(flac6)], "making flac")
    params = _params(
        fps=FPS,
        width=48,
        height=32,
        audio_rate=44100,
        scenes=[
            # 12 frames at 24 fps become round(12 * 16 / 24) = 8 frames at 16 fps.
            {"id": "fast", "visual": "v24", "kind": "video", "audio": "mp3"},
            # no duration, no audio: 2 s.
            {"id": "still", "visual": "img", "kind": "still", "duration": None, "audio": None},
            {"id": "six", "visual": "v1", "kind": "video", "audio": "flac", "audio_gain_db": -6.0},
        ],
    )
    inputs = {"v24": [str(assets["seg24"])], "img": str(assets["still"]), "v1": [str(assets["seg1"])],
              "mp3": str(mp3), "flac": str(flac6)}
    result = assemble.run(params, inputs, tmp_path / "o.mp4")
    assert [s["frames"] for s in result["scenes"]] == [8, 32, 9]
    info = probe(tmp_path / "o.mp4")
    assert (info.frames, info.width, info.height, info.audio_rate) == (49, 48, 32, 44100)
    audio = read_audio(tmp_path / "o.mp4")
    start_six = round(40 * 44100 / FPS)
    assert rms_db(audio[:, 1024:round(8 * 44100 / FPS) - 1024]) == pytest.approx(TONE_DB, abs=1.0)
    assert rms_db(audio[:, round(8 * 44100 / FPS) + 2048:start_six - 2048]) < -60
    assert rms_db(audio[:, start_six + 2048:-2048]) == pytest.approx(TONE_DB - 6.0, abs=1.0)


def test_missing_segment_names_file_and_scene(assets, tmp_path):
    inputs = _inputs(assets)
    inputs["v0"] = [str(assets["seg1"]), str(tmp_path / "gone.mp4")]
    with pytest.raises(StageError) as err:
        assemble.run(_params(), inputs, tmp_path / "x.mp4")
    assert "intro" in err.value.message and "gone.mp4" in err.value.message
    assert not (tmp_path / "x.mp4").exists()


def test_undecodable_inputs_name_file_and_scene(assets, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    inputs = _inputs(assets)
    inputs["v0"] = [str(junk)]
    with pytest.raises(StageError) as err:
        assemble.run(_params(), inputs, tmp_path / "x.mp4")
    assert "intro" in err.value.message and "junk.mp4" in err.value.message

    bad_audio = tmp_path / "speech.wav"
    bad_audio.write_bytes(b"RIFF....WAVEjunk" * 10)
    inputs = _inputs(assets)
    inputs["a0"] = str(bad_audio)
    with pytest.raises(StageError) as err:
        assemble.run(_params(), inputs, tmp_path / "x.mp4")
    assert "talk" in err.value.message and "speech.wav" in err.value.message

    inputs = _inputs(assets)
    inputs["img"] = str(tmp_path / "no-image.png")
    with pytest.raises(StageError) as err:
        assemble.run(_params(), inputs, tmp_path / "x.mp4")
    assert "talk" in err.value.message and "no-image.png" in err.value.message


def test_bad_params(assets, tmp_path):
    with pytest.raises(StageError):
        assemble.run(_params(width=63), _inputs(assets), tmp_path / "x.mp4")
    with pytest.raises(StageError):
        assemble.run(_params(scenes=[]), _inputs(assets), tmp_path / "x.mp4")
    inputs = _inputs(assets)
    del inputs["a0"]
    with pytest.raises(StageError) as err:
        assemble.run(_params(), inputs, tmp_path / "x.mp4")
    assert "talk" in err.value.message


def test_ffmpeg_failure_becomes_stage_error(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(assemble, "_fit", lambda w, h: "no_such_filter,")
    with pytest.raises(StageError) as err:
        assemble.run(_params(), _inputs(assets), tmp_path / "x.mp4")
    assert "no_such_filter" in err.value.message
    graph = assemble._Graph()
    graph.add_input(assets["tone"], "talk")
    graph.add_input(assets["seg1"], "intro")
    tail = f"Input #0, wav, from '{assets['tone']}':\n[in#1 @ 0x1] Error reading {assets['seg1']}: I/O error"
    assert graph.blame(tail) == f"scene 'intro' ({assets['seg1']})"


def test_still_with_percent_in_name(assets, tmp_path):
    odd = tmp_path / "shot_%03d:odd.png"
    odd.write_bytes(assets["still"].read_bytes())
    params = _params(scenes=[{"id": "odd", "visual": "img", "kind": "still", "duration": 0.5, "audio": None}])
    result = assemble.run(params, {"img": str(odd)}, tmp_path / "o.mp4")
    assert result["frames"] == 8
    frame = read_frames(tmp_path / "o.mp4")[0].astype(int)
    assert np.abs(frame[H // 2, W // 2] - np.array(YELLOW)).max() <= 12


def test_burning_needs_a_font_input_and_refuses_one_without_the_glyphs(assets, tmp_path):
    from cinesynth_batch.media.fonts import bundled_font

    srt = tmp_path / "cues.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\n明天北京晴天。\n", encoding="utf-8")
    inputs = {**_inputs(assets), "subs": str(srt), "font": str(bundled_font())}
    with pytest.raises(StageError, match=r"burning subtitles needs a font input \(params 'subtitle_font'\)"):
        assemble.run(_params(subtitles="subs"), inputs, tmp_path / "x.mp4")
    with pytest.raises(StageError) as err:
        assemble.run(_params(subtitles="subs", subtitle_font="font"), inputs, tmp_path / "x.mp4")
    assert err.value.message == ("assemble: the subtitle font DejaVuSans.ttf has no glyph for the CJK symbols, Han "
                                 "characters of the subtitles (。 京 北 天 明 晴)")
    assert "apt-get install fonts-noto-cjk" in err.value.hint
    assert not (tmp_path / "x.mp4").exists()
