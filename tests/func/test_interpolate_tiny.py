"""Frame interpolation on real files: a 16 fps clip with sound becomes 32 and 64 fps through
ffmpeg's minterpolate and through the tiny RIFE and AMT models, same duration, the sound untouched."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from cinesynth_batch.catalog.tiny.amt import build_tiny_amt
from cinesynth_batch.catalog.tiny.rife import build_tiny_rife
from cinesynth_batch.media.ffmpeg import ffmpeg_path_arg, run_ffmpeg
from cinesynth_batch.media.interpolate import output_frames, positions
from cinesynth_batch.media.video_io import probe, read_frames, write_video
from cinesynth_batch.models.amt.runner import load_amt
from cinesynth_batch.models.rife import load_rife
from cinesynth_batch.stages import interpolate as stage
from cinesynth_batch.stages.base import StageContext, StageError

SRC_FRAMES = 33          # 2.0625 s at 16 fps


class _Models:
    """The model provider of one stage run: the tiny RIFE and AMT files, by the profiles' roles,
    loaded by the real loaders."""

    def __init__(self, rife: Path, amt: Path):
        self.paths = {"interpolate": (load_rife, rife), "interpolate_amt": (load_amt, amt)}
        self.loaded: list[str] = []

    def get(self, role: str):
        self.loaded.append(role)
        load, path = self.paths[role]
        return load(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """33 frames of a moving pattern at 16 fps with a 440 Hz tone (AAC) as long as the picture."""
    root = tmp_path_factory.mktemp("clip")
    silent = root / "silent.mp4"
    yy, xx = np.mgrid[0:64, 0:96]
    frames = np.stack([np.stack([(xx * 3 + 8 * k) % 256, (yy * 4) % 256, np.full_like(xx, 40 + 5 * k)], -1)
                       for k in range(SRC_FRAMES)]).astype(np.uint8)
    write_video(frames, silent, fps=16)
    out = root / "clip.mp4"
    run_ffmpeg(["-y", "-i", ffmpeg_path_arg(silent), "-f", "lavfi", "-i",
                f"sine=frequency=440:sample_rate=48000:duration={SRC_FRAMES / 16}",
                "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest",
                ffmpeg_path_arg(out)], "making the test clip")
    return out


@pytest.fixture(scope="module")
def rife_path(tmp_path_factory) -> Path:
    return build_tiny_rife(tmp_path_factory.mktemp("rife") / "rife.safetensors")


@pytest.fixture(scope="module")
def amt_path(tmp_path_factory) -> Path:
    return build_tiny_amt(tmp_path_factory.mktemp("amt") / "amt-g.safetensors")


@pytest.fixture
def models(rife_path, amt_path) -> _Models:
    return _Models(rife_path, amt_path)


@pytest.fixture(scope="module")
def interpolated(clip, rife_path, amt_path, tmp_path_factory):
    """``(backend, fps) -> (output, facts, roles loaded)``: each stage run once for the module."""
    runs: dict[tuple[str, int], tuple[Path, dict, list[str]]] = {}
    root = tmp_path_factory.mktemp("runs")

    def get(backend: str, fps: int):
        if (backend, fps) not in runs:
            models = _Models(rife_path, amt_path)
            out, facts = _run(clip, root, {"fps": fps, "backend": backend}, models)
            runs[backend, fps] = out, facts, models.loaded
        return runs[backend, fps]
    return get


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


def _audio_samples(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)


def _run(clip, tmp_path, params, models=None) -> tuple[Path, dict]:
    out = tmp_path / f"out-{params['backend']}-{params['fps']}.mp4"
    ctx = StageContext(models=models, resolve_lora=None, work_dir=tmp_path)
    facts = stage.run(params, {"clip": [clip]}, out, ctx)
    return out, facts


@pytest.mark.parametrize("backend,fps", [("minterpolate", 32), ("minterpolate", 64), ("rife", 32), ("rife", 64),
                                         ("amt", 32)])
def test_16_fps_becomes_32_and_64_with_its_sound(clip, interpolated, backend, fps):
    out, facts, loaded = interpolated(backend, fps)
    src, got = probe(clip), probe(out)
    assert (src.fps, src.frames) == (16.0, SRC_FRAMES)
    factor = fps // 16
    assert got.fps == fps
    assert got.frames == SRC_FRAMES * factor == facts["frames"]          # same duration, to the frame
    assert abs(got.frames / fps - SRC_FRAMES / 16) < 1 / fps
    assert (got.width, got.height) == (96, 64)
    assert loaded == {"minterpolate": [], "rife": ["interpolate"],          # minterpolate needs no weights
                             "amt": ["interpolate_amt"]}[backend]
    # the sound: present, the very packets of the source, so the same samples
    assert got.audio_codec == "aac" and got.audio_rate == 48000 and facts["audio"] is True
    assert _audio_packets(out) == _audio_packets(clip)
    np.testing.assert_array_equal(_audio_samples(out), _audio_samples(clip))
    # every factor-th frame is a source frame (the interpolated ones lie between)
    src_frames = read_frames(clip).astype(int)
    ours = read_frames(out).astype(int)
    kept = np.abs(ours[::factor][:SRC_FRAMES - 1] - src_frames[:SRC_FRAMES - 1]).mean()
    assert kept < 3.0, kept                                                # re-encoding only


@pytest.mark.parametrize("backend", ["rife", "amt"])
def test_frames_between_are_the_models(clip, models, tmp_path, backend):
    """The in-between frames are the network's output at their own times (x4: 1/4, 1/2, 3/4),
    not copies of a neighbour (on the clip's first 6 frames, silent)."""
    short = tmp_path / "short.mp4"
    write_video(read_frames(clip)[:6], short, fps=16)
    out, facts = _run(short, tmp_path, {"fps": 64, "backend": backend}, models)
    assert facts["frames"] == 24 and facts["audio"] is False
    src = read_frames(short)
    ours = read_frames(out)
    load, path = models.paths[{"rife": "interpolate", "amt": "interpolate_amt"}[backend]]
    expected = load(path).between(src[2:4], [(0, 0.25), (0, 0.5), (0, 0.75)]).astype(int)
    for k in range(3):
        assert np.abs(ours[9 + k].astype(int) - expected[k]).mean() < 3.0, k
    for neighbour in (src[2], src[3]):
        assert np.abs(ours[10].astype(int) - neighbour.astype(int)).mean() > 3.0
    assert not np.array_equal(expected[0], expected[2])                    # the time reaches the network


def test_segments_join_and_a_silent_clip_stays_silent(clip, tmp_path):
    """Two chained segments: the second's first frame is dropped before interpolating."""
    frames = read_frames(clip)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    write_video(frames[:17], a, fps=16)
    write_video(frames[16:], b, fps=16)                                     # starts on a's last frame
    out = tmp_path / "joined.mp4"
    ctx = StageContext(models=None, resolve_lora=None, work_dir=tmp_path)
    facts = stage.run({"fps": 48, "backend": "minterpolate"}, {"clip": [a, b]}, out, ctx)
    info = probe(out)
    assert info.frames == SRC_FRAMES * 3 == facts["frames"] and info.fps == 48
    assert info.audio_codec is None and facts["audio"] is False


def test_timing_rule():
    assert output_frames(33, Fraction(16), Fraction(64)) == 132
    assert output_frames(81, Fraction(16), Fraction(60)) == 304
    pos = list(positions(3, Fraction(16), Fraction(48)))
    assert pos == [(0, 0), (0, Fraction(1, 3)), (0, Fraction(2, 3)), (1, 0), (1, Fraction(1, 3)),
                   (1, Fraction(2, 3)), (2, 0), (2, 0), (2, 0)]


def test_bad_params_name_the_field(clip, tmp_path):
    ctx = StageContext(models=None, resolve_lora=None, work_dir=tmp_path)
    with pytest.raises(StageError, match="interpolate: backend"):
        stage.run({"fps": 32, "backend": "dain"}, {"clip": [clip]}, tmp_path / "x.mp4", ctx)
    with pytest.raises(StageError, match="scale 2.0 is not at most 1 for backend amt"):
        stage.run({"fps": 32, "backend": "amt", "scale": 2.0}, {"clip": [clip]}, tmp_path / "x.mp4", ctx)
