"""The image pipeline under a device budget smaller than it: where the loader puts its components
(``catalog/loaders.py``: the text encoder in pinned RAM from the start on CUDA) and a pipeline so
placed renders the same picture. Off CUDA nothing is kept apart, so the placing itself runs here
on the CPU through the same functions, named explicitly."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from cinesynth_batch.catalog.loaders import host_at, load_model, load_placement
from cinesynth_batch.catalog.shapes import SIZES
from cinesynth_batch.catalog.shapes.build import _home, build_shapes
from cinesynth_batch.errors import ModelError
from cinesynth_batch.runtime.placement import component_places, component_sizes, place_loaded
from cinesynth_batch.runtime.swap import HostCopy, model_nbytes
from cinesynth_batch.stages import image as image_stage
from cinesynth_batch.stages.base import StageContext

torch.set_num_threads(1)

GIB = 1 << 30
FLUX_9B = {c.name: c.nbytes("bfloat16") for c in SIZES["flux2-klein-9b"]}
PARAMS = {"prompt": "a lighthouse at dusk", "negative_prompt": "fog", "steps": 2, "guidance": 3.0,
          "width": 64, "height": 64, "seed": 7, "loras": []}


def test_the_loader_keeps_the_text_encoder_of_an_image_pipeline_over_its_room_in_pinned_ram():
    assert host_at("flux2-klein", FLUX_9B, "cuda:0", 24 * GIB) == ("text_encoder",)
    assert host_at("flux2-klein", FLUX_9B, "cuda", 40 * GIB) == ()          # fits whole: loaded whole
    assert host_at("flux2-klein", FLUX_9B, "cuda:0", None) == ()
    assert host_at("flux2-klein", FLUX_9B, "cpu", 24 * GIB) == ()           # host RAM is the device
    assert host_at("wan-i2v", {"text_encoder": 11 * GIB, "transformer": 28 * GIB}, "cuda:0", GIB) == ()


def test_the_loader_streams_a_video_pipeline_over_its_room_and_parks_only_the_encoder_of_an_image_one():
    i2v = {c.name: c.nbytes("bfloat16") for c in SIZES["wan2.2-i2v-a14b"]}
    assert load_placement("wan-i2v", i2v, "cuda:0", 24 * GIB) == (tuple(i2v), ())
    assert load_placement("wan-i2v", i2v, "cuda:0", 40 * GIB) == ((), ())     # its experts take turns
    assert load_placement("wan-i2v", i2v, "cpu", 24 * GIB) == ((), ())
    assert load_placement("flux2-klein", FLUX_9B, "cuda:0", 24 * GIB) == ((), ("text_encoder",))


def test_a_shapes_component_kept_off_the_gpu_is_built_in_ram_from_the_gpus_draws():
    assert _home("cuda:0", True) == ("cpu", "cuda:0")
    assert _home("cuda:0", False) == ("cuda:0", None)
    assert _home("cpu", True) == ("cpu", None) and _home("meta", True) == ("meta", None)
    with pytest.raises(ModelError, match="'wan2.2-animate-14b' builds every component on its device"):
        build_shapes("wan2.2-animate-14b", "meta", host=("text_encoder",))
    pipe = build_shapes("flux2-klein-9b", "meta", host=("text_encoder",))
    assert component_sizes(pipe) == FLUX_9B
    i2v = {c.name: c.nbytes("bfloat16") for c in SIZES["wan2.2-i2v-a14b"]}      # a pipeline loaded to stream
    assert component_sizes(build_shapes("wan2.2-i2v-a14b", "meta", host=tuple(i2v))) == i2v


def _render(pipe, out):
    class Models:
        budget = None

        def get(self, role):
            return pipe

    ctx = StageContext(models=Models(), resolve_lora=lambda n, f: None, device="cpu", dtype="float32")
    return image_stage.run(dict(PARAMS), {}, out, ctx)


def test_a_pipeline_placed_with_its_text_encoder_apart_renders_the_same_picture(tiny_root, tmp_path):
    folder = tiny_root / "flux2-klein"
    resident = load_model("flux2-klein", folder, "cpu", "float32", room=1)     # the CPU: nothing apart
    assert getattr(resident, "_cinesynth_host_copy", None) is None
    facts = _render(resident, tmp_path / "resident.png")
    assert facts["placement"]["moves"] == []

    placed = place_loaded(load_model("flux2-klein", folder, "cpu", "float32"), "cpu", ("text_encoder",))
    copy = placed._cinesynth_host_copy
    assert isinstance(copy, HostCopy) and copy.parked == {id(placed.text_encoder)}
    assert copy.pinned_bytes == model_nbytes(placed.text_encoder)          # only the encoder was copied
    assert set(component_places(placed).values()) == {"host"}
    _render(placed, tmp_path / "placed.png")
    assert (tmp_path / "placed.png").read_bytes() == (tmp_path / "resident.png").read_bytes()
