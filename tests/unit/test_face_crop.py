"""The face_crop stage: the seed's ``crop_face_head`` (SEED_REPO.md §1a "Preprocessing"), with real
MediaPipe detection (the BlazeFace short-range model of the mediapipe wheel) on photos made from
``skimage.data.astronaut()``: the rule's arithmetic, the three places a face is looked for, the
15 % rule, and images used as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cinesynth_batch.preprocess.face_crop import Face, Rule, crop_box, detector_identity
from cinesynth_batch.spec.params import FaceCropParams
from cinesynth_batch.stages import face_crop as stage
from cinesynth_batch.stages.base import StageContext, StageError

pytest.importorskip("mediapipe")
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the rule (S:3143)


def test_the_stage_keys_the_seeds_numbers():
    p = FaceCropParams(detector=detector_identity())
    assert (p.confidence, p.max_face_area, p.padding, p.above, p.below) == (0.4, 0.15, 2.5, 1.0, 1.5)
    assert Rule() == Rule(0.4, 0.15, 2.5, 1.0, 1.5)
    assert detector_identity() == "mediapipe-0.10.14:face_detection_short_range"


@pytest.mark.parametrize("size,face,box", [
    # centre (122, 58), half int(38 * 2.5 / 2) = 47: 47 left/right/above, int(47 * 1.5) = 70 below
    ((270, 480), (103, 39, 38, 38), (75, 11, 169, 128)),
    # the larger side sets the half (int(60 * 1.25) = 75), the centre uses floor halves (fw // 2)
    ((1000, 1000), (401, 300, 41, 60), (346, 255, 496, 442)),
    # clipped to the image on every side
    ((200, 160), (2, 3, 50, 50), (0, 0, 89, 121)),
])
def test_crop_box_follows_the_seed(size, face, box):
    assert crop_box(*size, Face(*face, 0.9, "original")) == box


def test_no_crop_for_a_face_over_15_percent_or_no_face():
    assert crop_box(100, 100, Face(10, 10, 39, 39, 0.9, "original")) is None         # 15.21 % > 15 %
    assert crop_box(100, 100, Face(10, 10, 30, 50, 0.9, "original")) is not None     # 15.0 %: not over it
    assert crop_box(100, 100, None) is None


# ---------------------------------------------------------------- detection on real photos


def _astronaut(side: int) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)


def _canvas(width: int, height: int, side: int, top: int) -> Image.Image:
    canvas = Image.new("RGB", (width, height), (60, 90, 60))
    canvas.paste(_astronaut(side), ((width - side) // 2, top))
    return canvas


def _run(tmp_path: Path, image: Image.Image, name: str = "in", fmt: str = "PNG", **save):
    src = tmp_path / f"{name}.{fmt.lower()}"
    image.save(src, format=fmt, **save)
    out = tmp_path / f"{name}-out.png"
    ctx = StageContext(models=None, resolve_lora=lambda n, f: Path(n))
    facts = stage.run(FaceCropParams(detector=detector_identity()).model_dump(), {"image": src}, out, ctx)
    with Image.open(out) as im:
        return facts, np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("canvas,found_by", [
    ((512, 512, 512, 0), "original"),         # the whole photo: found at once
    ((270, 480, 200, 10), "upper_half"),      # a portrait: the face is found in the top half
    ((200, 900, 200, 0), "upper_third"),      # a tall one: only the top third shows it large enough
])
def test_the_face_is_looked_for_whole_then_top_half_then_top_third(tmp_path, canvas, found_by):
    image = _canvas(*canvas)
    facts, out = _run(tmp_path, image)
    face = facts["face"]
    assert face["found_by"] == found_by and face["score"] >= 0.4 and facts["cropped"] is True
    expected = crop_box(image.width, image.height, Face(*face["box"], face["score"], found_by))
    assert facts["box"] == list(expected)
    assert np.array_equal(out, np.asarray(image.crop(expected)))           # the crop, pixel for pixel
    x, y, w, h = face["box"]                                               # the face is in the crop's top part
    assert expected[1] <= y and y + h <= expected[3] and (y - expected[1]) < (expected[3] - y - h)


def test_the_example_portrait_is_cropped_around_its_face(tmp_path):
    with Image.open(REPO / "specs/examples/assets/portrait.jpg") as im:
        image = im.convert("RGB")
    facts, out = _run(tmp_path, image, "portrait", "PNG")
    assert facts["face"]["found_by"] == "upper_half" and out.shape[:2] == (facts["height"], facts["width"])
    assert facts["face"]["area"] < 0.15 and facts["box"] == list(crop_box(270, 480, Face(
        *facts["face"]["box"], 0.9, "upper_half")))


def test_a_head_shot_and_a_photo_without_a_face_are_used_as_they_are(tmp_path):
    from skimage import data

    head = Image.fromarray(data.astronaut()).crop((150, 40, 310, 230))     # the face fills it (> 15 %)
    facts, out = _run(tmp_path, head, "head")
    assert facts["cropped"] is False and facts["face"]["area"] > 0.15
    assert np.array_equal(out, np.asarray(head))
    blank = Image.new("RGB", (200, 300), (128, 128, 128))
    facts, out = _run(tmp_path, blank, "blank")
    assert facts == {"width": 200, "height": 300, "cropped": False, "face": None}
    assert np.array_equal(out, np.asarray(blank))


def test_a_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    image = _canvas(270, 480, 200, 10)
    exif = Image.Exif()
    exif[0x0112] = 8                                           # "rotate 90 CW to view": stored turned
    turned = image.transpose(Image.Transpose.ROTATE_270)
    facts, out = _run(tmp_path, turned, "turned", "JPEG", exif=exif, quality=95)
    assert facts["face"]["found_by"] == "upper_half" and facts["cropped"] is True
    assert facts["box"][3] <= 240                              # the head is at the top of the upright photo


def test_not_an_image_is_a_stage_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    ctx = StageContext(models=None, resolve_lora=lambda n, f: Path(n))
    with pytest.raises(StageError, match="^face_crop: input 'image' is not a readable image: bad.png"):
        stage.run(FaceCropParams(detector="d").model_dump(), {"image": bad}, tmp_path / "o.png", ctx)
    assert not (tmp_path / "o.png").exists()
