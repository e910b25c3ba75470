"""The fit stage: the seed's avatar rule (SEED_REPO.md §1b, /api/register-avatar S:2212): 9:16 by
a centred crop when the aspect differs by more than 0.02, a too tall image keeping its top, then
a LANCZOS resize to exactly the size asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cinesynth_batch.preprocess.stills import fit_box
from cinesynth_batch.spec.params import FitParams
from cinesynth_batch.stages import fit as stage
from cinesynth_batch.stages.base import StageContext


@pytest.mark.parametrize("size,box", [
    ((1920, 1080), (656, 0, 1263, 1080)),   # too wide: new_w = int(1080 * 9 / 16) = 607, from (1920 - 607) // 2
    ((256, 480), (0, 0, 256, 455)),         # too tall: new_h = int(256 * 16 / 9) = 455, the top kept
    ((540, 950), (0, 0, 540, 950)),         # 0.5684 is within 0.02 of 0.5625: kept whole
    ((1080, 1920), (0, 0, 1080, 1920)),
    ((100, 100), (22, 0, 78, 100)),         # square: new_w = 56, from 22
])
def test_fit_box_is_the_seeds(size, box):
    assert fit_box(*size, 1080, 1920) == box


def _run(tmp_path: Path, image: Image.Image, width=1080, height=1920):
    src = tmp_path / "in.png"
    image.save(src)
    out = tmp_path / "out.png"
    facts = stage.run(FitParams(width=width, height=height).model_dump(), {"image": src}, out,
                      StageContext(models=None, resolve_lora=lambda n, f: Path(n)))
    with Image.open(out) as im:
        return facts, im.convert("RGB")


def test_a_tall_image_loses_its_bottom_and_is_resized_with_lanczos(tmp_path):
    rows = np.zeros((480, 256, 3), np.uint8)
    rows[:, :, 0] = np.arange(480)[:, None] // 2          # red grows down the image
    rows[455:] = (0, 0, 255)                              # the part the rule cuts away
    image = Image.fromarray(rows)
    facts, out = _run(tmp_path, image)
    assert out.size == (1080, 1920) and facts == {"width": 1080, "height": 1920, "source": [256, 480],
                                                  "kept": [0, 0, 256, 455]}
    expected = image.crop((0, 0, 256, 455)).resize((1080, 1920), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert np.asarray(out)[-1, :, 2].max() < 8            # no blue: the bottom is gone, the top kept


def test_a_wide_image_is_cropped_in_the_middle(tmp_path):
    cols = np.zeros((108, 192, 3), np.uint8)
    cols[:, :66] = (255, 0, 0)                            # left and right margins the crop removes
    cols[:, 126:] = (0, 0, 255)
    cols[:, 66:126] = (0, 255, 0)
    facts, out = _run(tmp_path, Image.fromarray(cols), 90, 160)
    assert facts["kept"] == [66, 0, 126, 108] and out.size == (90, 160)
    assert (np.asarray(out)[:, :, 1] > 240).all()
