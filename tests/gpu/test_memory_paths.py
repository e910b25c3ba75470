"""fp8 weight storage and block swap (``runtime/memory.py``) on a real CUDA device, for the three
video models (the tiny I2V expert, S2V and Animate transformers, bf16) and through the video and
Animate stages' runtime calls (skipped without CUDA)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from test_memory import MODELS, build, forward  # noqa: E402  (the CPU tests' builders and inputs)

from cinesynth_batch.runtime import accel  # noqa: E402
from cinesynth_batch.runtime.memory import (  # noqa: E402
    FirstBlockPrefetch,
    GROUP_HOOK,
    fp8_targets,
    offload_blocks,
    store_fp8,
)


def _on_cuda(kind):
    model = build(kind).to("cuda", torch.bfloat16)
    return model


def _forward(kind, model):
    """The CPU tests' inputs, moved to the GPU in bf16 by a pre-hook on the model."""
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: (tuple(_to_cuda(a) for a in args), {k: _to_cuda(v) for k, v in kwargs.items()}),
        with_kwargs=True)
    try:
        return forward(kind, model).float().cpu()
    finally:
        handle.remove()


def _to_cuda(value):
    if isinstance(value, torch.Tensor):
        return value.to("cuda", torch.bfloat16 if value.is_floating_point() and value.dim() > 1 else value.dtype)
    return value


@pytest.mark.parametrize("kind", MODELS)
def test_fp8_storage_and_block_swap_on_cuda(kind):
    model = _on_cuda(kind)
    bf16 = _forward(kind, model)
    before = torch.cuda.memory_allocated()
    stored = store_fp8(model, torch.bfloat16)
    assert torch.cuda.memory_allocated() < before                 # the cast layers take 1 byte a weight
    targets = dict(fp8_targets(model))
    assert stored.layers == len(targets) > 0
    assert all(m.weight.dtype == torch.float8_e4m3fn and m.weight.is_cuda for m in targets.values())
    fp8 = _forward(kind, model)
    err = float((fp8 - bf16).norm() / bf16.norm())
    assert 0 < err < 0.1, err

    done = offload_blocks(model, "cuda", 1)
    assert done.blocks == [0]
    first = [p for p in model.blocks[0].parameters()]
    assert all(p.device.type == "cpu" and p.is_pinned() for p in first)          # waits in pinned RAM
    assert any(p.dtype == torch.float8_e4m3fn for p in first)                     # as fp8: half the copy
    assert all(p.is_cuda for p in model.blocks[1].parameters())
    assert isinstance(model._diffusers_hook.get_hook(GROUP_HOOK), FirstBlockPrefetch)
    assert torch.equal(_forward(kind, model), fp8)                # streaming is exact
    assert all(p.device.type == "cpu" for p in model.blocks[0].parameters())      # offloaded again after


def test_every_block_offloaded_leaves_only_the_rest_on_the_device_and_is_exact():
    model = _on_cuda("i2v")
    resident = _forward("i2v", model)
    offload_blocks(model, "cuda")                                 # count None: the VRAM-budget path
    in_blocks = {id(p) for p in model.blocks.parameters()}
    assert all(p.device.type == "cpu" and p.is_pinned() for p in model.blocks.parameters())
    assert all(p.is_cuda for p in model.parameters() if id(p) not in in_blocks)
    assert torch.equal(_forward("i2v", model), resident)


def test_prepare_transformer_applies_fp8_storage_and_block_swap_on_cuda():
    model = _on_cuda("i2v")
    settings = accel.SpeedSettings(attention="sdpa", compile="auto", quantize="fp8_e4m3fn", block_swap=1)
    report = accel.prepare_transformer(model, settings, "cuda")
    assert (report["quantize"], report["compile"], report["block_swap"], report["offloaded_blocks"]) == \
        ("fp8_e4m3fn", False, 1, 1)
    assert report["fp8_layers"] == len(fp8_targets(model)) and report["fallbacks"] == []
    assert accel.lossy_used(report) == {"quantize": "fp8_e4m3fn"}


def test_animate_runtime_uses_the_shared_paths_on_cuda(tmp_path):
    from cinesynth_batch.catalog.loaders import load_animate_pipeline
    from cinesynth_batch.catalog.tiny.animate import build_tiny_animate
    from cinesynth_batch.runtime import animate as am

    pipe = load_animate_pipeline(build_tiny_animate(tmp_path / "animate"), device="cuda", dtype="bfloat16")
    tr = pipe.transformer
    runtime = am.AnimateRuntime.of(pipe)
    report = am.prepare_animate_run(pipe, am.RuntimeSettings("bf16", quantize="fp8_e4m3fn"), [], device="cuda")
    assert report["fallbacks"] == [] and report["fp8_layers"] == len(fp8_targets(tr)) > 0
    fp8 = _forward("animate", tr)
    report = am.prepare_animate_run(pipe, am.RuntimeSettings("bf16", quantize="fp8_e4m3fn", block_swap=1), [],
                                    device="cuda")
    assert report["swapped_blocks"] == "0" and report["fallbacks"] == []
    assert all(p.device.type == "cpu" and p.is_pinned() for p in tr.blocks[0].parameters())
    assert torch.equal(_forward("animate", tr), fp8)
    runtime.release()
    assert all(p.device.type == "cpu" and p.dtype != torch.float8_e4m3fn for p in tr.parameters())


def test_animate_loras_fused_on_cuda_compute_the_unfused_output_and_leave_the_rest_copy(tmp_path):
    """The Change Character path on CUDA (fp8 storage, a swapped block): ``auto`` adds the LoRA into
    the working copy's weights; the output is the unfused one up to rounding, the swapped block is
    still pinned, and a run without the LoRA computes the base output exactly."""
    from cinesynth_batch.catalog.loaders import load_animate_pipeline
    from cinesynth_batch.catalog.tiny.animate import build_tiny_animate, write_tiny_animate_lora
    from cinesynth_batch.runtime import animate as am

    write_tiny_animate_lora(tmp_path / "mov" / "tiny" / "face.safetensors")
    lora = am.animate_lora_requests([{"name": "tiny/face", "weight": 0.8}],
                                    lambda n, f: tmp_path / f / f"{n}.safetensors")
    pipe = load_animate_pipeline(build_tiny_animate(tmp_path / "animate"), device="cuda", dtype="bfloat16")
    tr = pipe.transformer
    settings = am.RuntimeSettings("bf16", quantize="fp8_e4m3fn", block_swap=1)
    am.prepare_animate_run(pipe, settings, [], device="cuda")
    base = _forward("animate", tr)
    report = am.prepare_animate_run(pipe, settings, lora, device="cuda", lora_fuse="off")
    assert report["lora_fuse"]["fused"] is False
    unfused = _forward("animate", tr)
    report = am.prepare_animate_run(pipe, settings, lora, device="cuda")
    assert report["lora_fuse"]["fused"] is True and report["fused_layers"] > 0
    assert all(p.device.type == "cpu" and p.is_pinned() for p in tr.blocks[0].parameters())
    fused = _forward("animate", tr)
    err = float((fused - unfused).norm() / unfused.norm())
    assert err < 0.1 and float((fused - base).norm() / base.norm()) > 5 * err
    am.prepare_animate_run(pipe, settings, [], device="cuda")
    assert torch.equal(_forward("animate", tr), base)
    am.release_animate_runtime(pipe)


def test_video_stage_block_swap_gives_the_frames_of_the_resident_run(tmp_path):
    from PIL import Image

    from cinesynth_batch.catalog.loaders import load_model
    from cinesynth_batch.catalog.tiny.build import _write_wan_i2v

    folder = tmp_path / "wan-i2v"
    _write_wan_i2v(folder)

    def frames(params):
        models = SimpleNamespace(get=lambda role: load_model("wan-i2v", folder, "cuda", "bfloat16"), budget=None)
        pipe, report = accel.prepared_pipeline(SimpleNamespace(models=models, device="cuda"), "video", params)
        with torch.no_grad():
            out = pipe(image=Image.new("RGB", (64, 48), (100, 50, 20)), prompt="a cat", height=48, width=64,
                       num_frames=9, num_inference_steps=3, guidance_scale=3.0, output_type="np",
                       generator=torch.Generator("cpu").manual_seed(0)).frames
        return out, report

    base = {"attention": "sdpa", "compile": "off", "quantize": "fp8_e4m3fn"}
    want, _ = frames(base)
    got, report = frames({**base, "block_swap": 1})
    assert report["transformer"]["offloaded_blocks"] == 1 and report["transformer_2"]["offloaded_blocks"] == 1
    assert (got == want).all()


from test_stage_animate import BASE as ANIMATE_BASE, inputs_for, media  # noqa: E402,F401  (fixture)


def test_the_animate_stage_keeps_the_text_encoder_off_the_gpu_while_it_denoises(tmp_path, media, monkeypatch):
    """On CUDA the Change Character stage encodes the prompt with UMT5 on the device, then parks it
    in pinned host RAM before it builds the transformer's working copy; the next run brings it
    back to encode."""
    from cinesynth_batch.catalog.loaders import load_animate_pipeline
    from cinesynth_batch.catalog.tiny.animate import build_tiny_animate
    from cinesynth_batch.runtime import animate as am
    from cinesynth_batch.stages import animate as stage
    from cinesynth_batch.stages.base import StageContext

    pipe = load_animate_pipeline(build_tiny_animate(tmp_path / "animate"), device="cuda", dtype="bfloat16")
    where, built = [], []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a: where.append(next(pipe.text_encoder.parameters()).device.type))
    materialize = am.AnimateRuntime._materialize

    def spy(self, *args, **kwargs):
        built.append(next(pipe.text_encoder.parameters()).device.type)
        return materialize(self, *args, **kwargs)

    monkeypatch.setattr(am.AnimateRuntime, "_materialize", spy)
    ctx = StageContext(models=SimpleNamespace(get=lambda role: pipe), resolve_lora=lambda n, f: None,
                       device="cuda", dtype="bfloat16")
    params = {**ANIMATE_BASE, "precision": "bf16"}
    first = stage.run(params, inputs_for(media, 17), tmp_path / "a.mp4", ctx)
    assert where and set(where) == {"cpu"} and built == ["cpu"]
    assert [(m["at"], m["component"], m["to"]) for m in first["placement"]["moves"]] == [
        ("encoded", "text_encoder", "host")]
    assert all(p.is_pinned() for p in pipe.text_encoder.parameters())
    where.clear()
    second = stage.run(params, inputs_for(media, 17), tmp_path / "b.mp4", ctx)
    assert where and set(where) == {"cpu"}
    assert [(m["at"], m["component"], m["to"]) for m in second["placement"]["moves"]] == [
        ("encode", "text_encoder", "device"), ("encoded", "text_encoder", "host")]
    size = sum(p.numel() * p.element_size() for p in pipe.text_encoder.parameters())
    assert second["placement"]["bytes_moved"] == 2 * size


def test_the_animate_stage_streams_more_blocks_when_a_window_needs_the_room(tmp_path, media):
    """Under a device budget that the spec's block_swap would overrun with one window's work, the
    stage streams more blocks (``runtime/animate_room.py``), says so in its facts, and makes the
    frames the unbudgeted run makes."""
    import numpy as np

    from cinesynth_batch.catalog.loaders import load_animate_pipeline
    from cinesynth_batch.catalog.tiny.animate import build_tiny_animate
    from cinesynth_batch.media.video_io import read_frames
    from cinesynth_batch.stages import animate as stage
    from cinesynth_batch.stages.base import StageContext

    pipe = load_animate_pipeline(build_tiny_animate(tmp_path / "animate"), device="cuda", dtype="bfloat16")
    params = {**ANIMATE_BASE, "precision": "bf16", "quantize": "fp8_e4m3fn", "block_swap": 0}

    def render(name, budget):
        models = SimpleNamespace(get=lambda role: pipe, budget=budget, used=0)
        ctx = StageContext(models=models, resolve_lora=lambda n, f: None, device="cuda", dtype="bfloat16")
        facts = stage.run(params, inputs_for(media, 17), tmp_path / name, ctx)
        return facts, read_frames(tmp_path / name)

    roomy, frames = render("roomy.mp4", 1 << 50)
    asked = roomy["block_swap_for_room"]
    assert (asked["chosen"], asked["fits"], roomy["runtime"]["block_swap"]) == (0, True, 0)
    tight, tight_frames = render("tight.mp4", asked["need_bytes"] - 1)
    # two blocks: streaming one would add two in flight, so only streaming both comes close
    blocks = len(pipe.transformer.blocks)
    assert tight["block_swap_for_room"]["chosen"] == blocks == tight["runtime"]["block_swap"] == 2
    assert tight["block_swap_for_room"]["room_bytes"] == asked["need_bytes"] - 1
    assert np.array_equal(frames, tight_frames)
