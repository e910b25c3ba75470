"""media.audio and media.ffmpeg against the real ffmpeg binary and real files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cinesynth_batch.media.audio import audio_duration, probe_audio, read_audio, rms_db, write_tone
from cinesynth_batch.media.ffmpeg import (
    FFmpegError,
    ffmpeg_exe,
    measure_loudness,
    parse_ebur128_summary,
    parse_loudnorm_json,
    run_ffmpeg,
)

SINE_RMS_DB = 20 * math.log10(0.5 / math.sqrt(2))  # amplitude 0.5: -9.03 dBFS


def test_ffmpeg_exe_runs():
    proc = run_ffmpeg(["-version"], "asking the version")
    assert "ffmpeg version" in proc.stdout
    assert ffmpeg_exe() == ffmpeg_exe()


def test_write_tone_probe_and_duration(tmp_path):
    path = write_tone(tmp_path / "t.wav", 1.25, freq=440, rate=16000, channels=2)
    info = probe_audio(path)
    assert (info.codec, info.rate, info.channels, info.samples) == ("pcm_s16le", 16000, 2, 20000)
    assert audio_duration(path) == pytest.approx(1.25, abs=1e-9)
    again = write_tone(tmp_path / "u.wav", 1.25, freq=440, rate=16000, channels=2)
    assert path.read_bytes() == again.read_bytes()


def test_read_audio_resamples_and_remixes(tmp_path):
    path = write_tone(tmp_path / "t.wav", 1.0, freq=440, rate=16000, channels=1)
    mono = read_audio(path)
    assert mono.shape == (1, 16000) and mono.dtype == np.float32
    assert rms_db(mono) == pytest.approx(SINE_RMS_DB, abs=0.05)
    stereo = read_audio(path, rate=48000, channels=2)
    assert stereo.shape[0] == 2
    assert abs(stereo.shape[1] - 48000) <= 64
    assert rms_db(stereo[:, 1000:-1000]) == pytest.approx(SINE_RMS_DB, abs=0.2)
    np.testing.assert_allclose(stereo[0], stereo[1], atol=1e-6)
    back = read_audio(write_tone(tmp_path / "s.wav", 1.0, rate=16000, channels=2), channels=1)
    assert back.shape == (1, 16000)
    assert rms_db(back) == pytest.approx(SINE_RMS_DB, abs=0.05)


def test_silence_and_bad_audio(tmp_path):
    silent = write_tone(tmp_path / "s.wav", 0.5, amplitude=0.0)
    assert rms_db(read_audio(silent)) == float("-inf")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file at all" * 10)
    with pytest.raises(Exception):
        probe_audio(bad)


def test_run_ffmpeg_error_carries_stderr_tail(tmp_path):
    missing = tmp_path / "nothing-here.wav"
    with pytest.raises(FFmpegError) as err:
        run_ffmpeg(["-i", str(missing), "-f", "null", "-"], "reading a missing file")
    msg = str(err.value)
    assert "reading a missing file" in msg
    assert "nothing-here.wav" in msg
    assert err.value.returncode not in (0, None)


def test_run_ffmpeg_progress(tmp_path):
    seen: list[int] = []
    run_ffmpeg(
        ["-f", "lavfi", "-i", "testsrc2=size=32x32:rate=16:duration=1", "-f", "null", "-"],
        "counting frames",
        progress=seen.append,
    )
    assert seen and seen[-1] == 16


@pytest.mark.parametrize("level", [-23.0, -16.0])
def test_measure_loudness_of_reference_tone(tmp_path, level):
    # A stereo 1 kHz sine at L dBFS RMS-ish amplitude reads close to L LUFS (EBU Tech 3341).
    amp = 10 ** (level / 20)
    path = write_tone(tmp_path / "ref:tone.wav", 3.0, freq=1000, rate=48000, channels=2, amplitude=amp)
    m = measure_loudness(path)
    assert m["integrated"] == pytest.approx(level, abs=0.5)
    assert m["true_peak"] == pytest.approx(level, abs=0.5)
    assert m["lra"] >= 0.0


def test_measure_loudness_of_silence(tmp_path):
    path = write_tone(tmp_path / "s.wav", 2.0, amplitude=0.0, rate=48000)
    assert measure_loudness(path)["integrated"] <= -70.0


def test_parsers():
    text = """[Parsed_loudnorm_0 @ 0x1]
{
\t"input_i" : "-27.61",
\t"input_tp" : "-4.47",
\t"input_lra" : "18.06",
\t"input_thresh" : "-39.20",
\t"output_i" : "-16.58",
\t"output_tp" : "-1.50",
\t"output_lra" : "14.78",
\t"output_thresh" : "-27.71",
\t"normalization_type" : "dynamic",
\t"target_offset" : "0.58"
}
"""
    m = parse_loudnorm_json(text)
    assert m["input_i"] == -27.61 and m["normalization_type"] == "dynamic"
    assert parse_loudnorm_json(text.replace('"-27.61"', '"-inf"'))["input_i"] == float("-inf")
    with pytest.raises(ValueError):
        parse_loudnorm_json("nothing")
    summary = """[Parsed_ebur128_0 @ 0x2] Summary:

  Integrated loudness:
    I:         -19.2 LUFS
    Threshold: -29.4 LUFS

  Loudness range:
    LRA:         3.1 LU
    Threshold: -39.5 LUFS
    LRA low:   -21.0 LUFS
    LRA high:  -17.9 LUFS

  True peak:
    Peak:       -2.3 dBFS
"""
    assert parse_ebur128_summary(summary) == {
        "integrated": -19.2,
        "threshold": -29.4,
        "lra": 3.1,
        "true_peak": -2.3,
    }
