"""The floor shadow: the seed's two layers on a drawn mask, then the stage on a real dancer
(MediaPipe selfie segmentation on the example video), sound kept."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from cinesynth_batch.media.video_io import probe, read_frames
from cinesynth_batch.preprocess.shadow import Light, composite, read_light, shadow_alpha
from cinesynth_batch.stages import shadow as stage
from cinesynth_batch.stages.base import StageContext

DANCE = Path(__file__).resolve().parents[2] / "specs" / "examples" / "assets" / "dance.mp4"


def _person(h=256, w=192, box=(60, 180, 70, 120)) -> np.ndarray:
    y0, y1, x0, x1 = box
    mask = np.zeros((h, w), dtype=np.float32)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def test_shadow_lies_at_the_feet_not_on_the_person():
    mask = _person()
    alpha = shadow_alpha(mask, 0.45, Light(lean=0.0, tint=(0, 0, 0)))
    assert alpha.max() <= 0.45 + 1e-6
    assert np.all(alpha[mask > 0.5] == 0)                       # none on the person
    assert alpha[:60].max() < 1e-3                              # none above their head
    below = alpha[180:200, 70:120]
    assert below.mean() > 0.05                                  # the contact shadow under the feet
    assert alpha[180:200, 70:120].mean() > alpha[180:200, :20].mean()


def test_shadow_leans_away_from_the_light_and_scales_with_opacity():
    mask = _person()
    frame = np.full((256, 192, 3), 60, dtype=np.uint8)
    frame[:, :64] = 230                                         # light on the left third
    light = read_light(frame, mask)
    assert light.lean == pytest.approx(0.15)                    # the shadow goes right
    assert light.tint == (35, 35, 35)                           # 30 % of the bottom quarter's mean colour
    #                                                             ((64 * 230 + 128 * 60) / 192 = 116.7)
    right = shadow_alpha(mask, 0.45, light)
    left = shadow_alpha(mask, 0.45, Light(-0.15, light.tint))
    cols = np.arange(192)
    assert (right.sum(0) * cols).sum() / right.sum() > (left.sum(0) * cols).sum() / left.sum()
    half = shadow_alpha(mask, 0.225, light)
    assert half.sum() == pytest.approx(right.sum() / 2, rel=0.02)


def test_no_person_no_shadow():
    assert not shadow_alpha(np.zeros((64, 64), np.float32), 0.45, Light(0.0, (0, 0, 0))).any()
    tiny = _person(64, 64, (10, 15, 10, 15))                    # under 10 px: nothing
    assert not shadow_alpha(tiny, 0.45, Light(0.0, (0, 0, 0))).any()
    frame = np.full((4, 4, 3), 200, np.uint8)
    assert np.array_equal(composite(frame, np.zeros((4, 4), np.float32), (0, 0, 0)), frame)


def test_stage_shadows_a_real_dancer_and_keeps_the_sound(tmp_path):
    out = tmp_path / "shadow.mp4"
    facts = stage.run({"opacity": 0.45}, {"clip": [DANCE]}, out, StageContext(models=None, resolve_lora=None))
    src, got = probe(DANCE), probe(out)
    assert (got.frames, got.fps, got.width, got.height) == (src.frames, src.fps, src.width, src.height)
    assert facts["shaded_frames"] > src.frames // 2             # the dancer is found in most frames
    with av.open(str(out)) as a, av.open(str(DANCE)) as b:
        assert [bytes(p) for p in a.demux(audio=0) if p.size] == [bytes(p) for p in b.demux(audio=0) if p.size]
    before, after = read_frames(DANCE).astype(int), read_frames(out).astype(int)
    assert (after <= before + 4).mean() > 0.99                  # a shadow only darkens (tint is dark)
    assert (before - after).clip(0).sum() > 1000
