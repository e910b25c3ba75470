"""A video or lip-sync pipeline that needs more than its VRAM room is loaded to stream its blocks
(``catalog/loaders.py``, ``runtime/placement.py`` ``stream_at_load``): it never sits on the GPU
whole, not even while it loads (skipped without CUDA)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from cinesynth_batch.catalog.loaders import load_model  # noqa: E402
from cinesynth_batch.runtime.accel import prepared_pipeline  # noqa: E402
from cinesynth_batch.runtime.placement import component_sizes, loaded_to_stream  # noqa: E402

GIB = 1 << 30


class _Models:
    """The residency's side of ``prepared_pipeline``: one pipeline loaded with ``room``."""

    def __init__(self, kind, source, budget, room):
        self.kind, self.source, self.budget, self.room, self.pipe = kind, source, budget, room, None

    def get(self, role):
        if self.pipe is None:
            self.pipe = load_model(self.kind, self.source, "cuda", "bfloat16", room=self.room)
        return self.pipe


def _devices(module):
    return {p.device.type for p in module.parameters()}


def _clip(pipe):
    from PIL import Image

    with torch.no_grad():
        return pipe(image=Image.new("RGB", (64, 48), (100, 50, 20)), prompt="a cat", height=48, width=64,
                    num_frames=9, num_inference_steps=3, guidance_scale=3.0, output_type="np",
                    generator=torch.Generator("cpu").manual_seed(0)).frames


def test_a_tiny_i2v_folder_over_its_room_streams_from_the_load_and_gives_the_resident_frames(tmp_path):
    from cinesynth_batch.catalog.tiny.build import _write_wan_i2v

    folder = tmp_path / "wan-i2v"
    _write_wan_i2v(folder)
    settings = {"attention": "sdpa", "compile": "off"}
    whole = _Models("wan-i2v", folder, budget=1 << 40, room=1 << 40)
    pipe, report = prepared_pipeline(SimpleNamespace(models=whole, device="cuda"), "video", settings)
    assert not loaded_to_stream(pipe) and report["offload"] is None
    want = _clip(pipe)
    size = sum(component_sizes(pipe).values())
    del pipe, whole
    torch.cuda.empty_cache()

    small = _Models("wan-i2v", folder, budget=size // 4, room=size // 4)
    loaded = small.get("video")
    assert loaded_to_stream(loaded)
    assert all(_devices(m) == {"cpu"} for m in (loaded.transformer, loaded.transformer_2, loaded.text_encoder))
    pipe, report = prepared_pipeline(SimpleNamespace(models=small, device="cuda"), "video", settings)
    assert report["offload"] == "blocks"
    assert all(p.is_pinned() for b in pipe.transformer.blocks for p in b.parameters())
    got = _clip(pipe)
    assert abs(got.astype("float32") - want.astype("float32")).max() < 1e-2


def test_a_tiny_s2v_folder_over_its_room_keeps_the_transformer_and_the_text_encoder_in_ram(tmp_path):
    from cinesynth_batch.catalog.tiny.build import _write_wan_s2v

    folder = tmp_path / "wan-s2v"
    with torch.no_grad():                       # as the tiny profile's builder writes it
        _write_wan_s2v(folder)
    pipe = load_model("wan-s2v", folder, "cuda", "bfloat16", room=1)
    assert loaded_to_stream(pipe) and pipe.device.type == "cuda"
    assert _devices(pipe.transformer) == {"cpu"}
    assert _devices(pipe.text_encoder) == {"cpu"} and all(p.is_pinned() for p in pipe.text_encoder.parameters())
    assert _devices(pipe.vae) == {"cuda"} and _devices(pipe.audio_model) == {"cuda"}
    whole = load_model("wan-s2v", folder, "cuda", "bfloat16", room=None)
    assert not loaded_to_stream(whole) and _devices(whole.transformer) == {"cuda"}


def test_the_full_size_i2v_pipeline_under_24_gib_never_holds_its_experts_on_the_gpu():
    """The 57 GB of experts and UMT5-XXL are drawn on the GPU one tensor at a time and kept in host
    RAM; after the stage's offloading, what stays on the GPU is the pipeline less its blocks."""
    from cinesynth_batch.catalog.registry import SHAPES_REVISION
    from cinesynth_batch.catalog.shapes import ShapesSource

    import time

    from cinesynth_batch.runtime.memory import offloaded

    source = ShapesSource("wan2.2-i2v-a14b", "wan-i2v", SHAPES_REVISION)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    models = _Models("wan-i2v", source, budget=24 * GIB, room=24 * GIB)
    start = time.perf_counter()
    pipe = models.get("video")
    load_s = time.perf_counter() - start
    load_peak = torch.cuda.max_memory_allocated() - base
    assert loaded_to_stream(pipe)
    # made in page-locked arenas: the offloading below pins nothing again
    assert all(p.is_pinned() for m in (pipe.transformer, pipe.transformer_2, pipe.text_encoder)
               for p in m.parameters())
    assert load_peak < 5 * GIB      # the largest tensor drawn: UMT5-XXL's 2.1 GB embedding and its draw
    assert torch.cuda.memory_allocated() - base < GIB // 4
    start = time.perf_counter()
    _, report = prepared_pipeline(SimpleNamespace(models=models, device="cuda"), "video",
                                  {"attention": "sdpa", "compile": "off"})
    setup_s = time.perf_counter() - start
    assert report["offload"] == "blocks"
    assert report["transformer"]["offloaded_blocks"] == report["transformer_2"]["offloaded_blocks"] == 40
    assert offloaded(pipe.transformer).arenas == [] and offloaded(pipe.transformer_2).arenas == []
    on_gpu = torch.cuda.memory_allocated() - base
    print(f"load {load_s:.2f} s, peak {load_peak / GIB:.2f} GiB; offloading {setup_s:.2f} s, "
          f"on the GPU after it {on_gpu / GIB:.2f} GiB")
    assert on_gpu < 4 * GIB
    assert torch.cuda.max_memory_allocated() - base < 4 * GIB
    del pipe, models


def test_a_module_made_in_pinned_ram_is_its_own_host_copy():
    """``HostCopy`` takes a tensor already page-locked in host RAM as its pinned copy: nothing is
    copied or pinned twice, and a round trip to the GPU comes back to the same buffers."""
    from transformers import UMT5EncoderModel

    from cinesynth_batch.catalog.shapes.materialize import empty_model, materialize
    from cinesynth_batch.models.s2v.components import UMT5Arch, umt5_config
    from cinesynth_batch.runtime.swap import HostCopy

    arch = UMT5Arch(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2, num_buckets=8)
    m = empty_model(lambda: UMT5EncoderModel(umt5_config(arch)))
    m.set_input_embeddings(m.shared)
    m = materialize(m, "cpu", torch.bfloat16, 7, draw_on="cuda")
    params = list(m.parameters())
    assert all(p.is_pinned() for p in params)
    where = [p.data_ptr() for p in params]
    copy = HostCopy([m])
    assert copy.to_host() == 0
    assert copy.arenas == [] and copy.pinned_bytes == sum(p.numel() * p.element_size() for p in params)
    copy.to_device("cuda")
    assert {p.device.type for p in m.parameters()} == {"cuda"}
    copy.to_host()
    assert copy.arenas == [] and [p.data_ptr() for p in m.parameters()] == where
