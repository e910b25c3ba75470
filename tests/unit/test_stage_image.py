"""The image stage on the tiny FLUX.2-klein pipeline, loaded through the real load path."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from cinesynth_batch.catalog.tiny.build import IMAGE_PRESET_LORAS
from cinesynth_batch.media.inpaint_crop import CropSettings, blend_region, crop
from cinesynth_batch.stages import image as image_stage
from cinesynth_batch.stages.base import StageContext, StageError
from projects import EXAMPLES

torch.set_flush_denormal(True)
torch.set_num_threads(1)


BASE = {
    "prompt": "a lighthouse at dusk",
    "negative_prompt": None,
    "steps": 2,
    "guidance": 1.0,
    "width": 64,
    "height": 64,
    "seed": 7,
    "loras": [],
}


def render(ctx, tmp_path, name="out", **over) -> tuple[dict, bytes, np.ndarray]:
    out = tmp_path / f"{name}.png"
    facts = image_stage.run({**BASE, **over}, {}, out, ctx)
    data = out.read_bytes()
    with Image.open(out) as im:
        pixels = np.asarray(im.convert("RGB")).astype(np.int16)
    return facts, data, pixels


def test_constants():
    assert image_stage.KIND == "image"
    assert image_stage.OUTPUT_EXT == ".png"
    assert image_stage.MODEL_ROLE == "image"


def test_writes_png_of_requested_size_and_reports_progress(ctx, tmp_path):
    facts, data, pixels = render(ctx, tmp_path, width=64, height=32, steps=3)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert facts == {"width": 64, "height": 32,
                     "placement": {"moves": [], "swap_experts": False, "bytes_moved": 0,
                                   "kept": ["on the CPU every component is in RAM already"]}}
    assert pixels.shape == (32, 64, 3)
    assert pixels.std() > 1  # not a flat image
    assert ctx.extra["progress_calls"] == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_same_seed_same_bytes_other_seed_differs(ctx, tmp_path):
    _, a, pa = render(ctx, tmp_path, "a", seed=11)
    _, b, _ = render(ctx, tmp_path, "b", seed=11)
    _, c, pc = render(ctx, tmp_path, "c", seed=12)
    assert a == b
    assert a != c and np.abs(pa - pc).max() > 0


def test_lora_weight_zero_equals_base_and_one_differs(ctx, provider, tmp_path):
    _, base, pb = render(ctx, tmp_path, "base")
    _, zero, _ = render(ctx, tmp_path, "zero", loras=[{"name": "tiny/style", "weight": 0.0}])
    _, one, p1 = render(ctx, tmp_path, "one", loras=[{"name": "tiny/style", "weight": 1.0}])
    _, half, ph = render(ctx, tmp_path, "half", loras=[{"name": "tiny/style", "weight": 0.5}])
    _, again, _ = render(ctx, tmp_path, "again")
    assert zero == base
    assert np.abs(p1 - pb).mean() > 1.0  # visibly different pixels
    assert np.abs(ph - p1).max() > 0
    assert again == base  # the LoRA does not leak into a later run without LoRA
    # the file was loaded once and kept for later runs
    adapters = provider.get("image").get_list_adapters()
    assert len(adapters["transformer"]) == 1


def test_repeated_lora_entries_add_their_weights(ctx, tmp_path):
    _, one, _ = render(ctx, tmp_path, "one", loras=[{"name": "tiny/style", "weight": 1.0}])
    _, two_halves, _ = render(
        ctx, tmp_path, "halves", loras=[{"name": "tiny/style", "weight": 0.5}, {"name": "tiny/style", "weight": 0.5}]
    )
    assert one == two_halves


def test_negative_prompt_used_only_with_guidance_on_the_base_model(ctx, tmp_path):
    _, plain, _ = render(ctx, tmp_path, "p", guidance=1.0, model="base")
    _, neg, _ = render(ctx, tmp_path, "n", guidance=1.0, negative_prompt="fog, blur", model="base")
    assert plain == neg  # no CFG: nothing to apply it to
    _, cfg, _ = render(ctx, tmp_path, "c", guidance=4.0, model="base")
    _, cfg_neg, _ = render(ctx, tmp_path, "cn", guidance=4.0, negative_prompt="fog, blur", model="base")
    _, cfg_empty, _ = render(ctx, tmp_path, "ce", guidance=4.0, negative_prompt="")
    assert cfg != plain
    assert cfg_neg != cfg
    assert cfg_empty != cfg  # the distilled model (the default) is another network


def test_the_distilled_model_ignores_guidance_and_the_base_model_is_another_network(ctx, provider, tmp_path):
    """FLUX.2-klein-9B is step-distilled (``is_distilled``: the pipeline runs no CFG whatever the
    guidance); FLUX.2-klein-base-9B is not, and has weights of its own."""
    _, one, _ = render(ctx, tmp_path, "d1", guidance=1.0)
    _, four, _ = render(ctx, tmp_path, "d4", guidance=4.0, negative_prompt="fog, blur")
    assert one == four
    assert provider.get("image").config.is_distilled is True
    assert provider.get("image_base").config.is_distilled is False
    _, base, _ = render(ctx, tmp_path, "b1", guidance=1.0, model="base")
    assert base != one


def test_refuses_non_safetensors_lora(provider, tmp_path):
    bad = tmp_path / "style.pt"
    bad.write_bytes(b"not a lora")
    c = StageContext(models=provider, resolve_lora=lambda name, family: bad)
    with pytest.raises(StageError, match="safetensors"):
        image_stage.run({**BASE, "loras": [{"name": "style", "weight": 1.0}]}, {}, tmp_path / "x.png", c)
    assert not (tmp_path / "x.png").exists()


def test_missing_lora_and_bad_sizes_raise_stage_error(ctx, tmp_path):
    with pytest.raises(StageError, match="not found"):
        render(ctx, tmp_path, loras=[{"name": "tiny/nope", "weight": 1.0}])
    with pytest.raises(StageError, match="^image: width: 72 is not a multiple of 16$") as err:
        render(ctx, tmp_path, width=72)
    assert err.value.hint == "try 64"
    with pytest.raises(StageError, match="^image: seed: -1 is not a seed$") as err:
        render(ctx, tmp_path, seed=-1)
    assert err.value.hint == "use 0..4294967295"


# --------------------------------------------------------------------------- references (edits)


def _solid(tmp_path, name, size, colour):
    path = tmp_path / f"{name}.png"
    Image.new("RGB", size, colour).save(path)
    return path


def test_references_reach_the_pipeline_in_order(ctx, provider, tmp_path, monkeypatch):
    """The stage hands ``image=[...]`` to the pipeline in the order of its ``references`` input:
    the latents it encodes are the first reference's, then the second's (told apart by size and
    colour), and the facts list their digests in that order."""
    import hashlib

    red = _solid(tmp_path, "red", (128, 64), (220, 20, 20))
    blue = _solid(tmp_path, "blue", (64, 96), (20, 20, 220))
    pipe = provider.get("image_base")
    seen = []
    real = pipe.prepare_image_latents

    def spy(images, *args, **kwargs):
        seen.append([(tuple(im.shape[-2:]), im[0].mean(dim=(1, 2)).tolist()) for im in images])
        return real(images, *args, **kwargs)

    monkeypatch.setattr(pipe, "prepare_image_latents", spy)
    params = {**BASE, "width": None, "height": None, "model": "base", "guidance": 4.0}
    out = tmp_path / "edit.png"
    facts = image_stage.run(params, {"references": [red, blue]}, out, ctx)
    (size1, rgb1), (size2, rgb2) = seen[0]
    assert (size1, size2) == ((64, 128), (96, 64))              # (height, width) of each, in order
    assert rgb1[0] > 0.5 > rgb1[2] and rgb2[2] > 0.5 > rgb2[0]   # red first, then blue (in [-1, 1])
    assert [r["sha256"] for r in facts["references"]] == [hashlib.sha256(p.read_bytes()).hexdigest()
                                                          for p in (red, blue)]
    assert (facts["width"], facts["height"]) == (128, 64)        # the first reference's size
    with Image.open(out) as im:
        assert im.size == (128, 64)


def test_reference_order_and_content_change_the_edit(ctx, tmp_path):
    red = _solid(tmp_path, "red", (64, 64), (220, 20, 20))
    blue = _solid(tmp_path, "blue", (64, 64), (20, 20, 220))
    params = {**BASE, "width": None, "height": None}
    outs = {}
    for name, refs in (("rb", [red, blue]), ("br", [blue, red]), ("rb2", [red, blue]), ("r", [red])):
        image_stage.run(params, {"references": refs}, tmp_path / f"{name}.png", ctx)
        outs[name] = (tmp_path / f"{name}.png").read_bytes()
    assert outs["rb"] == outs["rb2"]
    assert len({outs["rb"], outs["br"], outs["r"]}) == 3
    plain, _, _ = render(ctx, tmp_path, "t2i")
    assert plain["width"] == 64 and (tmp_path / "t2i.png").read_bytes() != outs["rb"]


def test_an_edit_with_a_size_resizes_and_a_tiny_reference_is_refused(ctx, tmp_path):
    red = _solid(tmp_path, "red", (96, 64), (220, 20, 20))
    facts = image_stage.run({**BASE, "width": 32, "height": 48}, {"references": [red]}, tmp_path / "o.png", ctx)
    assert (facts["width"], facts["height"]) == (32, 48)
    small = _solid(tmp_path, "small", (40, 30), (0, 200, 0))        # under the pipeline's 64 a side
    facts = image_stage.run({**BASE, "width": None, "height": None}, {"references": [small]}, tmp_path / "s.png", ctx)
    assert facts["references"][0]["size"] == [40, 30] and facts["references"][0]["enlarged_to"] == [85, 64]
    assert (facts["width"], facts["height"]) == (80, 64)             # 85x64, cropped to multiples of 16
    strip = _solid(tmp_path, "strip", (600, 70), (0, 0, 0))
    with pytest.raises(StageError, match=r"^image: reference 2 is 600x70, longer than 8:1$"):
        image_stage.run({**BASE, "width": None, "height": None}, {"references": [red, strip]}, tmp_path / "x.png", ctx)
    with pytest.raises(StageError, match="width and height are needed without references"):
        image_stage.run({**BASE, "width": None, "height": None}, {}, tmp_path / "y.png", ctx)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(StageError, match="^image: reference 1 is not a readable image: bad.png"):
        image_stage.run({**BASE, "width": None, "height": None}, {"references": [bad]}, tmp_path / "z.png", ctx)


# --- masked edits (stages/masked_edit.py) ------------------------------------------------------

SOURCE = EXAMPLES / "assets" / "model.png"
INPAINT = {"size": 64, "padding": 32, "context": 1.2, "expand": 10, "blend": 16, "fill_holes": True,
           "hipass": 0.1, "strength": 1.0, "reference_megapixels": 0.01}
EDIT = {**BASE, "width": 64, "height": 64, "inpaint": INPAINT}


def shirt_mask(tmp_path, box=(50, 80, 110, 160), size=(160, 288)):
    mask = np.zeros(size[::-1], np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    return path, mask.astype(np.float32) / 255.0


def edit(ctx, tmp_path, name="edit", inputs=None, **over):
    out = tmp_path / f"{name}.png"
    facts = image_stage.run({**EDIT, **over}, inputs, out, ctx)
    with Image.open(out) as im:
        return facts, np.asarray(im.convert("RGB"))


def test_a_masked_edit_keeps_the_sources_size_and_every_pixel_outside_the_blend(ctx, tmp_path):
    mask_file, mask = shirt_mask(tmp_path)
    src = np.asarray(Image.open(SOURCE).convert("RGB"))
    facts, out = edit(ctx, tmp_path, inputs={"source": SOURCE, "mask": mask_file})
    assert out.shape == src.shape
    settings = CropSettings(**{k: v for k, v in INPAINT.items() if k not in ("strength", "reference_megapixels")})
    region = blend_region(crop(src, mask, settings))
    assert 0.2 < (region > 0).mean() < 0.8
    assert np.array_equal(out[region == 0], src[region == 0])
    assert (out[mask > 0] != src[mask > 0]).any(axis=-1).mean() > 0.9
    c = crop(src, mask, settings)
    assert facts["crop"] == [c.context.x - c.origin[0], c.context.y - c.origin[1], c.context.w, c.context.h]
    assert facts["crop_size"] == 64 and facts["width"] == 160 and facts["height"] == 288
    assert ctx.extra["progress_calls"][-1] == (2, 2)


def test_a_masked_edit_follows_its_seed_prompt_and_reference(ctx, tmp_path):
    mask_file, _ = shirt_mask(tmp_path)
    inputs = {"source": SOURCE, "mask": mask_file}
    _, a = edit(ctx, tmp_path, "a", inputs)
    _, again = edit(ctx, tmp_path, "again", inputs)
    _, seed = edit(ctx, tmp_path, "seed", inputs, seed=8)
    _, ref = edit(ctx, tmp_path, "ref", {**inputs, "references": [EXAMPLES / "assets" / "avatar.png"]})
    assert np.array_equal(a, again)
    assert not np.array_equal(a, seed) and not np.array_equal(a, ref)
    with pytest.raises(StageError, match="one reference picture"):
        edit(ctx, tmp_path, "two", {**inputs, "references": [SOURCE, SOURCE]})


def test_a_masked_edits_reference_is_image_2_scaled_to_its_megapixels(ctx, tmp_path, monkeypatch):
    """The crop is encoded as reference 1; the clothing picture follows as reference 2, first scaled
    to ``reference_megapixels`` x 1024 x 1024 pixels (300x200 at 0.01 MP: 125x84), then cropped by
    the pipeline to multiples of 16 (112x80)."""
    from diffusers import Flux2KleinInpaintPipeline

    mask_file, _ = shirt_mask(tmp_path)
    clothing = _solid(tmp_path, "clothing", (300, 200), (220, 20, 20))
    seen = []
    real = Flux2KleinInpaintPipeline.prepare_image_latents

    def spy(self, images, *args, **kwargs):
        seen.append([tuple(im.shape[1:]) for im in images] + [images[-1][0].mean(dim=(1, 2)).tolist()])
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Flux2KleinInpaintPipeline, "prepare_image_latents", spy)
    facts, _ = edit(ctx, tmp_path, inputs={"source": SOURCE, "mask": mask_file, "references": [clothing]},
                    model="base")
    (crop_latent, reference, rgb), = seen
    assert crop_latent[0] != 3 and reference == (3, 80, 112)
    assert rgb[0] > 0.5 > rgb[2]                                         # the red picture, in [-1, 1]
    assert facts["reference_scaled_to"] == [125, 84]
    assert facts["references"][0]["size"] == [300, 200] and "enlarged_to" not in facts["references"][0]


def test_scaling_to_megapixels_is_comfyuis_nearest_exact():
    """ImageScaleToTotalPixels: sides round(side x sqrt(MP x 1024^2 / (w x h))), each output pixel
    the source pixel under its centre."""
    from cinesynth_batch.stages.masked_edit import scale_to_megapixels

    src = np.random.default_rng(3).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    out = np.asarray(scale_to_megapixels(Image.fromarray(src), 0.001))      # 1048.576 pixels
    assert out.shape == (26, 41, 3)                                          # 37x23 x 1.110
    rows = np.minimum(np.floor((np.arange(26) + 0.5) * 23 / 26).astype(int), 22)
    cols = np.minimum(np.floor((np.arange(41) + 0.5) * 37 / 41).astype(int), 36)
    assert np.array_equal(out, src[rows][:, cols])
    small = np.asarray(scale_to_megapixels(Image.fromarray(src), 0.0001))   # shrinks as well: x 0.351
    assert small.shape == (8, 13, 3)


def test_the_try_on_lora_stand_in_changes_the_edit(ctx, tmp_path):
    assert "KleinBase9B_TryOn" in IMAGE_PRESET_LORAS
    mask_file, _ = shirt_mask(tmp_path)
    inputs = {"source": SOURCE, "mask": mask_file}
    _, plain = edit(ctx, tmp_path, "plain", inputs)
    _, zero = edit(ctx, tmp_path, "zero", inputs, loras=[{"name": "KleinBase9B_TryOn", "weight": 0.0}])
    _, tryon = edit(ctx, tmp_path, "tryon", inputs, loras=[{"name": "KleinBase9B_TryOn", "weight": 1.5}])
    assert np.array_equal(plain, zero) and not np.array_equal(plain, tryon)


def test_a_masked_edit_refuses_an_empty_or_mismatched_mask(ctx, tmp_path):
    empty, _ = shirt_mask(tmp_path, box=(0, 0, 0, 0))
    with pytest.raises(StageError, match="^image: the mask is empty, there is nothing to repaint$"):
        edit(ctx, tmp_path, inputs={"source": SOURCE, "mask": empty})
    small, _ = shirt_mask(tmp_path, size=(64, 64), box=(0, 0, 10, 10))
    with pytest.raises(StageError, match="^image: the mask is 64x64, its picture 160x288$"):
        edit(ctx, tmp_path, inputs={"source": SOURCE, "mask": small})
    with pytest.raises(StageError, match="needs the 'mask' input"):
        edit(ctx, tmp_path, inputs={"source": SOURCE})
