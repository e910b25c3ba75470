"""Fashion Change (specs/examples/fashion_change.yaml, preset fashion_change) renders on the tiny
profile: every avatar in every style, the clothing mask found once per avatar; an edit re-runs
exactly the stages that depend on it, and an edit leaves the picture outside its mask untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cinesynth_batch.execute.render import render
from cinesynth_batch.media.inpaint_crop import CropSettings, blend_region, crop
from projects import edited_copy, render_example, rgb_pixels, to_run

pytestmark = pytest.mark.slow

OUT = "outputs/fashion_change"
AVATARS = {"model": "assets/model.png", "face": "assets/avatar.png"}
STYLES = ["1", "2", "4", "5", "6", "101", "151", "201"]
MASKS = {f"{a}-1.{kind}" for a in AVATARS for kind in ("detect", "segment")}
EDITS = {f"{a}-{s}.image" for a in AVATARS for s in STYLES}
# the preset's crop-and-stitch at the example's crop size
SETTINGS = CropSettings(size=128, padding=32, context=1.2, expand=10, blend=64, fill_holes=True, hipass=0.1)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render_example(tmp_path_factory, "fashion_change")


def test_every_avatar_is_edited_in_every_style_with_one_mask_each(rendered):
    spec, result = rendered
    root = spec.parent
    assert set(result.outcome.ran) == MASKS | EDITS | {"model-drawn.image"}
    for avatar, file in AVATARS.items():
        source = rgb_pixels(root / file)
        assert (root / OUT / f"scenes/{avatar}-1.mask.png").is_file()
        assert (root / OUT / f"scenes/{avatar}-1.boxes.json").is_file()
        edits = [rgb_pixels(root / OUT / f"scenes/{avatar}-{s}.png") for s in STYLES]
        assert all(e.shape == source.shape for e in edits)                 # the source's size
        assert all(not np.array_equal(e, source) for e in edits)
        assert len({e.tobytes() for e in edits}) == len(STYLES)            # each style its own picture


def test_a_drawn_mask_repaints_inside_it_and_nothing_outside_the_blend(rendered):
    spec, _ = rendered
    root = spec.parent
    source = rgb_pixels(root / "assets/model.png")
    with Image.open(root / "assets/model_shirt.png") as im:
        mask = np.asarray(im.convert("L")).astype(np.float32) / 255.0
    out = rgb_pixels(root / OUT / "scenes/model-drawn.png")
    region = blend_region(crop(source, mask, SETTINGS))
    assert out.shape == source.shape
    assert 0.2 < (region > 0).mean() < 0.8                                 # the blend leaves most of it alone
    assert np.array_equal(out[region == 0], source[region == 0])
    assert (out[mask > 0] != source[mask > 0]).any(axis=-1).mean() > 0.9


@pytest.mark.parametrize("old,new,expected", [
    # the threshold and the phrase: both masks and every edit that uses them
    ('mask: {segment: {source: "{{ avatar.file }}"}}',
     'mask: {segment: {source: "{{ avatar.file }}", threshold: 0.7}}', MASKS | EDITS),
    ('mask: {segment: {source: "{{ avatar.file }}"}}',
     'mask: {segment: {source: "{{ avatar.file }}", text: "shirt, skirt"}}', MASKS | EDITS),
    # one avatar's picture: its mask and its edits
    ("{name: face, file: assets/avatar.png}", "{name: face, file: assets/avatar2.png}",
     {"face-1.detect", "face-1.segment"} | {f"face-{s}.image" for s in STYLES}),
    # the crop: the edits only
    ("      inpaint: {size: 128}      #", "      inpaint: {size: 160}      #", EDITS),
    # the drawn mask: its scene only
    ("mask: assets/model_shirt.png", "mask: assets/model_shirt2.png", {"model-drawn.image"}),
])
def test_an_edit_reruns_exactly_the_stages_that_depend_on_it(rendered, tmp_path, old, new, expected):
    spec, _ = rendered
    with Image.open(spec.parent / "assets/avatar.png") as im:
        im.convert("RGB").rotate(90).save(spec.parent / "assets/avatar2.png")
    with Image.open(spec.parent / "assets/model_shirt.png") as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(spec.parent / "assets/model_shirt2.png")
    assert to_run(edited_copy(spec, tmp_path, old, new)) == expected


def test_a_new_style_row_is_one_new_edit_per_avatar(rendered, tmp_path):
    spec, _ = rendered
    edited = edited_copy(spec, tmp_path, "assets/avatar.png}", "assets/avatar.png}")
    styles = edited.parent / "assets/fashion_styles.yaml"
    styles.write_text(styles.read_text().replace('English_Prompt: "Floral chiffon', 'English_Prompt: "Linen'))
    assert to_run(edited) == {"model-4.image", "face-4.image"}


def test_a_new_threshold_renders_a_new_mask_and_the_edit_again(rendered, tmp_path):
    spec, _ = rendered
    edited = edited_copy(spec, tmp_path, 'mask: {segment: {source: "{{ avatar.file }}"}}',
                         'mask: {segment: {source: "{{ avatar.file }}", threshold: 0.7}}')
    again = render(edited, only=["model-2.image"], progress=False)
    assert set(again.outcome.ran) == {"model-1.detect", "model-1.segment", "model-2.image"}
    scenes = edited.parent / OUT / "scenes"
    assert len(json.loads((scenes / "model-1.boxes.json").read_text())["boxes"]) < \
        len(json.loads((spec.parent / OUT / "scenes/model-1.boxes.json").read_text())["boxes"])   # fewer boxes
    new_mask, old_mask = rgb_pixels(scenes / "model-1.mask.png"), rgb_pixels(spec.parent / OUT / "scenes/model-1.mask.png")
    assert not np.array_equal(new_mask, old_mask)                          # so the edit ran again on it
