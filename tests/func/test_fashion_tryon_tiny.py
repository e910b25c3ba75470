"""Fashion Change with a clothing picture (specs/examples/fashion_change_tryon.yaml, preset
fashion_change_tryon) renders on the tiny profile: the clothing picture reaches the masked edit as
its reference (image 2), by digest, scaled to the set megapixels; the edits run on the base model
with the Try-On LoRA; changing the clothing re-runs exactly the stages that depend on it."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from cinesynth_batch.execute.render import render
from cinesynth_batch.execute.session import Session
from cinesynth_batch.plan.graph import NodeInput
from projects import edited_copy, file_sha256, render_example, rgb_pixels, to_run

OUT = "outputs/fashion_tryon/scenes"
TRYON_PREFIX = "attach the outfit in Image 2 to the woman in Image 1. "


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render_example(tmp_path_factory, "fashion_change_tryon")


def test_the_clothing_picture_is_the_edits_reference(rendered):
    spec, result = rendered
    root = spec.parent
    assert set(result.outcome.ran) == {"dress.detect", "dress.segment", "dress.image", "jacket.image",
                                       "jacket-on.image"}
    meta = result.outcome.meta
    assert [r["sha256"] for r in meta["dress.image"]["references"]] == [file_sha256(root / "assets/outfit.png")]
    assert [r["sha256"] for r in meta["jacket-on.image"]["references"]] == [file_sha256(root / OUT / "jacket.png")]
    # 120x160 at 0.05 MP: x sqrt(0.05 x 1024^2 / 19200) = x 1.652; 96x128 the same factor x 1.25
    assert meta["dress.image"]["reference_scaled_to"] == [198, 264]
    assert meta["jacket-on.image"]["reference_scaled_to"] == [198, 264]
    source = rgb_pixels(root / "assets/model.png")
    for scene in ("dress", "jacket-on"):
        edited = rgb_pixels(root / OUT / f"{scene}.png")
        assert edited.shape == source.shape and not np.array_equal(edited, source)
    assert not np.array_equal(rgb_pixels(root / OUT / "dress.png"), rgb_pixels(root / OUT / "jacket-on.png"))


def test_the_try_on_edits_share_one_mask_and_run_on_the_base_model_with_the_lora(rendered):
    spec, _ = rendered
    graph = Session.open(spec).plan().graph
    for scene in ("dress", "jacket-on"):
        node = graph[f"{scene}.image"]
        assert node.inputs["mask"] == NodeInput("dress.segment")
        assert node.model_role == "image_base" and node.params["model"] == "base"
        assert node.params["loras"] == [{"name": "KleinBase9B_TryOn", "weight": 1.5}]
        assert node.params["prompt"].startswith(TRYON_PREFIX)
    assert graph["jacket-on.image"].inputs["references"] == (NodeInput("jacket.image"),)


@pytest.mark.parametrize("old,new,expected", [
    # the clothing file: the edit that takes it, not the mask
    ("references: [assets/outfit.png]", "references: [assets/outfit2.png]", {"dress.image"}),
    # the scene that draws the clothing: it and the edit that takes it
    ("a denim jacket on a white background", "a leather jacket on a white background",
     {"jacket.image", "jacket-on.image"}),
    # how the clothing is scaled: that edit only
    ("inpaint: {size: 128, reference_megapixels: 0.05}   #", "inpaint: {size: 128, reference_megapixels: 0.04}   #",
     {"dress.image"}),
    # the plain preset (no Try-On LoRA, no prefix) with the same clothing: that edit only
    ("      preset: fashion_change_tryon\n      mask: {segment: {source: assets/model.png}}\n"
     "      references: [assets/outfit.png]",
     "      preset: fashion_change\n      mask: {segment: {source: assets/model.png}}\n"
     "      references: [assets/outfit.png]", {"dress.image"}),
])
def test_changing_the_clothing_reruns_exactly_the_dependent_stages(rendered, tmp_path, old, new, expected):
    spec, _ = rendered
    with Image.open(spec.parent / "assets/outfit.png") as im:
        im.convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(spec.parent / "assets/outfit2.png")
    assert to_run(edited_copy(spec, tmp_path, old, new)) == expected


def test_a_new_clothing_picture_gives_a_new_edit(rendered, tmp_path):
    spec, _ = rendered
    with Image.open(spec.parent / "assets/outfit.png") as im:
        im.convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(spec.parent / "assets/outfit2.png")
    edited = edited_copy(spec, tmp_path, "references: [assets/outfit.png]", "references: [assets/outfit2.png]")
    again = render(edited, progress=False)
    assert set(again.outcome.ran) == {"dress.image"}
    assert again.outcome.meta["dress.image"]["references"][0]["sha256"] == file_sha256(edited.parent / "assets/outfit2.png")
    assert not np.array_equal(rgb_pixels(edited.parent / OUT / "dress.png"), rgb_pixels(spec.parent / OUT / "dress.png"))
    assert np.array_equal(rgb_pixels(edited.parent / OUT / "dress.mask.png"), rgb_pixels(spec.parent / OUT / "dress.mask.png"))
