"""Fashion Change on another scene's image (specs/examples/avatar_outfit.yaml): the masked edit's
``source`` and its segment's ``source`` are ``{scene: avatar}``, an avatar made by the
``avatar_prepare`` preset. The edit keeps the avatar's size, the avatar's digest reaches the mask
and the edit, and a new photo re-runs exactly the avatar's stages, the mask's and the edit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cinesynth_batch.execute.session import Session
from projects import edited_copy, file_sha256, render_example, rgb_pixels, to_run

OUT = "outputs/avatar_outfit/scenes"
AVATAR = {"avatar.prepare_1", "avatar.prepare_2", "avatar.image", "avatar.fit"}
MASK = {"outfit.detect", "outfit.segment"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render_example(tmp_path_factory, "avatar_outfit")


def test_the_outfit_is_edited_on_the_prepared_avatar_at_its_size(rendered):
    spec, result = rendered
    out = spec.parent / OUT
    assert set(result.outcome.ran) == AVATAR | MASK | {"outfit.image"}
    avatar, edited = rgb_pixels(out / "avatar_1080x1920.png"), rgb_pixels(out / "outfit.png")
    assert avatar.shape == edited.shape == (1920, 1080, 3)
    assert not np.array_equal(edited, avatar)
    with Image.open(out / "outfit.mask.png") as im:
        assert im.size == (1080, 1920)                                     # found in the avatar itself
    found = json.loads((out / "outfit.boxes.json").read_text())
    assert (found["width"], found["height"]) == (1080, 1920) and found["boxes"]


def test_the_avatar_reaches_the_mask_and_the_edit_by_its_digest(rendered):
    spec, _ = rendered
    plan = Session.open(spec).plan()
    assert {st.id for st in plan.to_run()} == set()
    digest = file_sha256(spec.parent / OUT / "avatar_1080x1920.png")
    assert plan.stages["outfit.detect"].inputs["image"] == digest          # the mask is looked for in it
    assert plan.stages["outfit.segment"].inputs["image"] == digest
    assert plan.stages["outfit.image"].inputs["source"] == digest          # and it is what is repainted


@pytest.mark.parametrize("old,new,expected", [
    # a new photo: the avatar, then the mask found in it and the edit made on it
    ("references: [assets/portrait.jpg]", "references: [assets/other.jpg]", AVATAR | MASK | {"outfit.image"}),
    # the outfit's own words: the edit only
    ('prompt: "red satin evening dress"', 'prompt: "green linen suit"', {"outfit.image"}),
])
def test_an_edit_reruns_exactly_the_stages_that_depend_on_it(rendered, tmp_path, old, new, expected):
    spec, _ = rendered
    with Image.open(spec.parent / "assets/portrait.jpg") as im:
        im.convert("RGB").rotate(180).save(spec.parent / "assets/other.jpg", quality=90)
    assert to_run(edited_copy(spec, tmp_path, old, new)) == expected
