"""Crop-and-stitch of masked edits (media/inpaint_crop.py): the node's mask rules, the context box,
and the paste-back that leaves every pixel outside the blend region as it was."""

from __future__ import annotations

import numpy as np
import pytest

from cinesynth_batch.media import inpaint_crop as ic
from cinesynth_batch.media.inpaint_crop import Box, CropSettings, blend_region, crop, stitch

PLAIN = CropSettings(size=64, padding=0, context=1.0, expand=0, blend=0, fill_holes=False, hipass=0.0)


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def block(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[y0:y1, x0:x1] = 1.0
    return m


def test_the_defaults_are_the_seeds_inpaint_crop_values():
    # SEED_REPO.md §1c, InpaintCropImproved FC#106:88
    s = CropSettings()
    assert (s.size, s.padding, s.context, s.expand, s.blend, s.fill_holes, s.hipass) == \
        (1024, 32, 1.2, 10, 64, True, 0.1)
    assert (ic.DOWNSCALE, ic.UPSCALE) == (ic.Image.Resampling.BILINEAR, ic.Image.Resampling.BICUBIC)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixels_outside_the_blend_region_are_the_sources(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(90, 260)), int(rng.integers(90, 260))
    src = picture(h, w, seed)
    y0, x0 = int(rng.integers(10, h // 2)), int(rng.integers(10, w // 2))
    mask = block(h, w, y0, y0 + int(rng.integers(5, h // 3)), x0, x0 + int(rng.integers(5, w // 3)))
    c = crop(src, mask, CropSettings(size=128))
    painted = picture(128, 128, seed + 10)                # whatever the model returns
    out = stitch(c, painted)
    region = blend_region(c)
    assert out.shape == src.shape and out.dtype == np.uint8
    assert 0.0 < (region > 0).mean() < 1.0
    assert np.array_equal(out[region == 0], src[region == 0])
    assert (out[mask > 0] != src[mask > 0]).any(axis=-1).mean() > 0.9     # the mask itself is repainted
    assert np.all(region[mask > 0] > 0.5)                                 # mostly the new picture


def test_a_result_of_another_size_is_resized_back():
    src = picture(100, 80)
    c = crop(src, block(100, 80, 40, 60, 20, 50), CropSettings(size=64, blend=8))
    out = stitch(c, picture(48, 48, 3))
    region = blend_region(c)
    assert out.shape == src.shape
    assert np.array_equal(out[region == 0], src[region == 0])


def test_the_context_is_the_masks_box_grown_then_made_square_inside_the_picture():
    mask = block(300, 200, 100, 140, 60, 80)             # 20 wide, 40 tall
    s = CropSettings(size=64, padding=0, context=1.5, expand=0, blend=0, fill_holes=False, hipass=0.0)
    grown = ic.grow(ic.mask_box(mask), 1.5, 300, 200)
    assert grown == Box(55, 90, 30, 60)                  # +round(20*0.25)=5 and +round(40*0.25)=10 each side
    box = ic.context_box(mask, s)
    assert box == Box(40, 90, 60, 60)                    # widened to 60 around the same centre
    c = crop(picture(300, 200), mask, s)
    assert c.origin == (0, 0) and c.context == box and c.image.shape == (64, 64, 3)


def test_a_box_at_the_edge_is_shifted_back_inside():
    mask = block(200, 200, 80, 120, 0, 10)               # against the left edge
    box = ic.context_box(mask, PLAIN)
    assert box.x == 0 and box.w == box.h == 40


def test_a_context_wider_than_the_picture_extends_it_with_its_edges():
    src = picture(200, 60)
    mask = block(200, 60, 20, 180, 10, 50)               # a square of 160 does not fit 60 across
    c = crop(src, mask, PLAIN)
    assert c.context.w == c.context.h == 160
    left, top = c.origin
    assert (left, top) == (50, 0) and c.canvas.shape == (200, 160, 3)
    assert np.array_equal(c.canvas[:, :left], np.repeat(src[:, :1], left, axis=1))   # edge columns copied
    assert np.array_equal(c.canvas[:, left:left + 60], src)
    assert np.array_equal(stitch(c, c.image)[blend_region(c) == 0], src[blend_region(c) == 0])


def test_the_size_is_rounded_up_to_the_padding():
    c = crop(picture(120, 120), block(120, 120, 50, 70, 50, 70), CropSettings(size=80, padding=32, blend=0))
    assert c.image.shape == (96, 96, 3) and c.mask.shape == (96, 96)


def test_an_empty_mask_takes_the_whole_picture_as_context():
    assert ic.context_box(np.zeros((50, 80), np.float32), PLAIN) == Box(0, -15, 80, 80)


def test_expand_is_a_square_dilation_of_side_ceil_one_and_a_half_quarter_plus_one():
    m = np.zeros((21, 21), np.float32)
    m[10, 10] = 1.0
    grown = ic.expand(m, 10)                             # ceil(10 / 4 * 1.5 + 1) = 5
    assert ic.mask_box(grown) == Box(8, 8, 5, 5) and grown.sum() == 25
    assert ic.mask_box(ic.expand(m, 64)) == Box(0, 0, 21, 21)    # side 25


def test_holes_are_filled_and_small_values_dropped():
    ring = block(30, 30, 5, 25, 5, 25)
    ring[10:20, 10:20] = 0.0
    filled = ic.prepare_mask(ring, CropSettings(expand=0, blend=0, hipass=0.0))
    assert filled[15, 15] == 1.0 and filled[2, 2] == 0.0
    faint = np.full((10, 10), 0.05, np.float32)
    faint[4, 4] = 0.5
    kept = ic.prepare_mask(faint, CropSettings(expand=0, blend=0, fill_holes=False, hipass=0.1))
    assert np.count_nonzero(kept) == 1


def test_the_blend_widens_and_softens_the_mask():
    m = block(200, 200, 90, 110, 90, 110)
    soft = ic.prepare_mask(m, CropSettings(expand=0, blend=64, fill_holes=False, hipass=0.0))
    assert soft[100, 100] > 0.95                          # grown by 12 px (a square of 25), blurred by sigma 8
    assert 0.0 < soft[100, 130] < 0.9 and soft[100, 175] == 0.0


def test_a_mask_of_another_size_is_refused():
    with pytest.raises(ValueError, match="the mask is 10x20, the picture 30x40"):
        crop(picture(40, 30), np.zeros((20, 10), np.float32))
