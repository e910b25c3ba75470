"""fp8 weight storage and block offloading (``runtime/memory.py``) on the three tiny video models:
the Wan2.2 I2V expert (diffusers), S2V (ours) and Animate (diffusers), on the CPU."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from cinesynth_batch.errors import StageError
from cinesynth_batch.plan.keys import content_key
from cinesynth_batch.runtime import accel
from cinesynth_batch.runtime.memory import (
    ADAPTER_DTYPE_ATTR,
    CAST_HOOK,
    GROUP_HOOK,
    FirstBlockPrefetch,
    drop_fp8_storage,
    drop_offload,
    fp8_stored,
    fp8_targets,
    offload_blocks,
    offloaded,
    store_fp8,
)
from cinesynth_batch.stages.effective import effective_params

torch.set_flush_denormal(True)
torch.set_num_threads(1)

MODELS = ("i2v", "s2v", "animate")
#: per model: layers that must be stored in fp8, layers that must not (the skip patterns)
EXPECTED = {
    "i2v": (["blocks.0.attn1.to_q", "blocks.1.ffn.net.2"],
            ["proj_out", "patch_embedding", "condition_embedder.time_embedder.linear_1",
             "condition_embedder.text_embedder.linear_1"]),
    "s2v": (["blocks.0.self_attn.q", "blocks.1.ffn.0", "audio_injector.injector.0.q"],
            ["head.head", "patch_embedding", "text_embedding.0", "time_embedding.0", "time_projection.1",
             "trainable_cond_mask"]),
    "animate": (["blocks.0.attn1.to_q", "blocks.1.ffn.net.2", "face_adapter.0.to_q"],
                ["proj_out", "patch_embedding", "condition_embedder.time_embedder.linear_1"]),
}


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
    return model.eval()


def build(kind: str):
    """The tiny model of ``kind`` (the catalog's tiny builders) in float32."""
    if kind == "i2v":
        from cinesynth_batch.catalog.tiny.build import _wan_transformer

        return _wan_transformer(1001)
    if kind == "s2v":
        from cinesynth_batch.catalog.tiny.s2v import tiny_s2v_config
        from cinesynth_batch.models.s2v.transformer import WanS2VTransformer3DModel

        torch.manual_seed(0)
        return _randomize(WanS2VTransformer3DModel(**tiny_s2v_config()))   # the default init zeros the head
    from cinesynth_batch.catalog.tiny.animate import _transformer

    return _transformer()


def forward(kind: str, model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if kind == "i2v":
            x, text = torch.randn(1, 36, 2, 8, 8, generator=g), torch.randn(1, 5, 16, generator=g)
            return model(x, torch.tensor([500.0]), text, return_dict=False)[0].float()
        if kind == "s2v":
            from cinesynth_batch.catalog.tiny.s2v import tiny_s2v_config
            from cinesynth_batch.models.s2v.transformer import S2V_14B_MOTION_FRAMES

            cfg = tiny_s2v_config()
            mp, ml = S2V_14B_MOTION_FRAMES
            f, h, w = 3, 8, 8
            return model(hidden_states=torch.randn(1, cfg["in_dim"], f, h, w, generator=g),
                         timestep=torch.tensor([700.0]),
                         encoder_hidden_states=torch.randn(1, 7, cfg["text_dim"], generator=g),
                         ref_latents=torch.randn(1, cfg["in_dim"], 1, h, w, generator=g),
                         motion_latents=torch.randn(1, cfg["in_dim"], ml, h, w, generator=g),
                         audio_features=torch.randn(1, cfg["num_audio_layers"], cfg["audio_dim"], 4 * (f + ml) - mp,
                                                    generator=g),
                         motion_frames=(mp, ml)).sample.float()
        x, pose = torch.randn(1, 36, 3, 8, 8, generator=g), torch.randn(1, 16, 2, 8, 8, generator=g)
        face, text = torch.randn(1, 3, 5, 16, 16, generator=g), torch.randn(1, 10, 16, generator=g)
        image = torch.randn(1, 17, 16, generator=g)
        return model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                     encoder_hidden_states_image=image, pose_hidden_states=pose, face_pixel_values=face,
                     return_dict=False)[0].float()


def _hooked(model, name: str) -> list[str]:
    return [n for n, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(name) is not None]


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- fp8 storage


@pytest.mark.parametrize("kind", MODELS)
def test_fp8_storage_casts_the_expected_layers_and_stays_close(kind):
    model = build(kind)
    base = forward(kind, model)
    targets = dict(fp8_targets(model))
    stored = store_fp8(model, torch.float32)

    assert stored.layers == len(targets) == fp8_stored(model) > 0
    assert set(_hooked(model, CAST_HOOK)) == set(targets)        # diffusers cast exactly these layers
    layers = dict(model.named_modules())
    cast, kept = EXPECTED[kind]
    for name in cast:
        assert name in targets and layers[name].weight.dtype == torch.float8_e4m3fn
    for name in kept:
        assert name not in targets and layers[name].weight.dtype == torch.float32
    weights = [m.weight for m in targets.values()]
    assert stored.bytes_saved == sum(3 * t.numel() for m in targets.values() for t in m.parameters(recurse=False))
    assert model.dtype == torch.float32                           # the compute dtype

    out = forward(kind, model)
    err = float((out - base).norm() / base.norm())
    assert 0 < err < 0.1, err
    assert all(w.dtype == torch.float8_e4m3fn for w in weights)   # stored again after the forward


def test_fp8_storage_clamps_into_new_tensors_and_leaves_the_source_alone():
    """Animate's rest copy shares tensors with a CPU working copy: storing must not write into them."""
    layer = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with torch.no_grad():
        layer[0].weight.fill_(1000.0)
    source = layer[0].weight.data
    store_fp8(layer, torch.float32)
    assert float(layer[0].weight.detach().float().max()) == 448.0   # e4m3fn's largest finite value
    assert float(source.max()) == 1000.0 and source.dtype == torch.float32


@pytest.mark.parametrize("kind, stage", [("i2v", "video"), ("s2v", "lipsync")])
def test_fp8_storage_through_the_speed_path_is_keyed_and_checked(kind, stage):
    model = build(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                            # no fallback on the CPU
        report = accel.prepare_transformer(model, accel.SpeedSettings(quantize="fp8_e4m3fn"), "cpu")
    assert (report["quantize"], report["compile"], report["fallbacks"]) == ("fp8_e4m3fn", False, [])
    assert report["fp8_layers"] == fp8_stored(model) > 0

    params = {"prompt": "x", "quantize": "fp8_e4m3fn"}
    keyed = effective_params(stage, params, "cpu", "float32")
    assert keyed == params
    plain = effective_params(stage, {"prompt": "x"}, "cpu", "float32")
    assert content_key(stage, None, keyed, {}) != content_key(stage, None, plain, {})
    accel.check_keyed(stage, keyed, {"transformer": report})      # what ran is what the key names


def test_fp8_storage_runs_eager_and_says_so_when_compile_is_asked(monkeypatch):
    """Where compiling works (CUDA with Triton), fp8 storage still runs eager: its per-layer casts
    cannot be traced into one graph."""
    from cinesynth_batch.runtime.attention import resolve_attention

    monkeypatch.setattr(accel, "triton_ok", lambda: (True, ""))
    monkeypatch.setattr(accel, "resolve_attention", lambda name, device, dtype, head_dim=None:
                        resolve_attention("sdpa", "cpu", dtype))
    used, reasons = accel.resolve(accel.SpeedSettings(quantize="fp8_e4m3fn", compile="on"), "cuda", torch.bfloat16)
    assert (used["quantize"], used["compile"]) == ("fp8_e4m3fn", False)
    assert reasons == ["compile='on': fp8 storage casts each layer in a hook that cannot be compiled into one "
                       "graph; running eager"]
    used, reasons = accel.resolve(accel.SpeedSettings(quantize="fp8_e4m3fn"), "cuda", torch.bfloat16)
    assert used["compile"] is False and reasons == []            # auto: eager without a warning
    assert accel.resolve(accel.SpeedSettings(), "cuda", torch.bfloat16)[0]["compile"] is True


def test_drop_fp8_storage_removes_every_casting_hook():
    model = build("i2v")
    store_fp8(model, torch.float32)
    drop_fp8_storage(model)
    assert _hooked(model, CAST_HOOK) == [] and fp8_stored(model) == 0
    assert not any(ADAPTER_DTYPE_ATTR in vars(m) for m in model.modules())


def _lora(model, module: str) -> dict[str, torch.Tensor]:
    layer = model.get_submodule(module)
    g = torch.Generator().manual_seed(9)
    return {f"{module}.lora_A.weight": torch.randn(4, layer.in_features, generator=g),
            f"{module}.lora_B.weight": torch.randn(layer.out_features, 4, generator=g)}


@pytest.mark.parametrize("kind, module", [("i2v", "blocks.0.attn1.to_q"), ("s2v", "blocks.0.self_attn.q")])
def test_a_lora_loaded_after_fp8_storage_computes_in_the_compute_dtype(kind, module):
    """peft gives a new adapter its base layer's dtype: on an fp8-stored layer that was fp8, and
    the forward failed (no fp8 products on the CPU) or lost the LoRA's precision. A LoRA loaded
    after the storage now runs as one loaded before it, diffusers' own order."""
    pytest.importorskip("peft")
    before, after = build(kind), build(kind)
    before.load_lora_adapter(_lora(before, module), adapter_name="l", prefix=None)
    store_fp8(before, torch.float32)
    store_fp8(after, torch.float32)
    plain = forward(kind, after)
    after.load_lora_adapter(_lora(after, module), adapter_name="l", prefix=None)
    assert after.get_submodule(module).lora_A["l"].weight.dtype == torch.float32
    out = forward(kind, after)
    assert (out - plain).abs().max() > 1e-3                        # the LoRA acts
    torch.testing.assert_close(out, forward(kind, before), rtol=0, atol=0)


# --------------------------------------------------------------------------- block offloading


@pytest.mark.parametrize("kind", MODELS)
def test_offloading_the_first_blocks_is_exact_and_hooks_only_those(kind):
    model = build(kind)
    before = _state(model)
    base = forward(kind, model)
    done = offload_blocks(model, "cpu", 1)

    assert (done.blocks, done.total, offloaded(model) is done) == ([0], len(model.blocks), True)
    assert _hooked(model.blocks[0], GROUP_HOOK) == [""]
    assert all(_hooked(block, GROUP_HOOK) == [] for block in model.blocks[1:])
    assert isinstance(model._diffusers_hook.get_hook(GROUP_HOOK), FirstBlockPrefetch)
    assert torch.equal(forward(kind, model), base)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)   # weights bit-identical

    drop_offload(model)
    assert _hooked(model, GROUP_HOOK) == [] and offloaded(model) is None
    assert torch.equal(forward(kind, model), base)


@pytest.mark.parametrize("kind", MODELS)
def test_all_blocks_offloaded_with_fp8_storage_equal_fp8_storage_alone(kind):
    model = build(kind)
    store_fp8(model, torch.float32)
    fp8 = forward(kind, model)
    done = offload_blocks(model, "cpu")                          # count None: every block
    assert done.blocks == list(range(len(model.blocks)))
    assert all(_hooked(block, GROUP_HOOK) == [""] for block in model.blocks)
    assert torch.equal(forward(kind, model), fp8)


def test_block_swap_off_cuda_falls_back_with_the_reason():
    model = build("i2v")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = accel.prepare_transformer(model, accel.SpeedSettings(block_swap=1), "cpu")
    assert [str(w.message) for w in caught] == [
        "transformer: block_swap=1: block swap streams blocks from RAM to a CUDA device; on cpu every block is "
        "in RAM already; using no swap"]
    assert report["block_swap"] == 0 and "offloaded_blocks" not in report
    assert _hooked(model, GROUP_HOOK) == []


def test_block_swap_is_not_keyed():
    params = {"prompt": "x", "block_swap": 20}
    assert accel.keyed_speed(params, "cpu", "float32") is params
    assert accel.lossy_used({"quantize": None, "attention": "sdpa", "block_swap": 20}) == {}
    with pytest.raises(StageError, match=r"^speed: block_swap: -1: input should be greater than or equal to 0$"):
        accel.SpeedSettings(block_swap=-1)


def test_a_module_without_blocks_is_handed_to_diffusers_group_offloading():
    encoder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ModuleList([torch.nn.Linear(4, 4)]))
    done = offload_blocks(encoder, "cpu")
    assert done.delegated and offloaded(encoder) is done
    assert _hooked(encoder, GROUP_HOOK)


def _tiny_lora(g):
    return {f"blocks.{i}.attn1.to_q.{ab}.weight": torch.randn(shape, generator=g)
            for i in (0, 1) for ab, shape in (("lora_A", (4, 24)), ("lora_B", (24, 4)))}


class _Buffer:
    released = False

    def release(self):
        self.released = True


def test_the_layout_is_rebuilt_when_a_lora_adds_tensors_to_offloaded_blocks():
    """Adapter tensors added to an offloaded block are missing from its pinned copies: the layout
    is re-applied (first N blocks again) and the output is the LoRA'd model's."""
    from cinesynth_batch.runtime.memory import restore_offload

    lora = _tiny_lora(torch.Generator().manual_seed(5))
    reference = build("i2v")
    reference.load_lora_adapter(dict(lora), adapter_name="t", prefix=None)
    expected = forward("i2v", reference)

    model = build("i2v")
    first = offload_blocks(model, "cpu", 1)
    assert restore_offload(model) is False                       # nothing changed
    kept = _Buffer()
    first.arenas = [kept]                  # a pinned buffer of the blocks (CUDA only): taken over
    model.load_lora_adapter(dict(lora), adapter_name="t", prefix=None)
    assert restore_offload(model) is True
    again = offloaded(model)
    assert again is not first and again.blocks == [0] and again.tensors > first.tensors
    assert again.arenas == [kept] and not kept.released          # not copied again, still pinned
    assert isinstance(model._diffusers_hook.get_hook(GROUP_HOOK), FirstBlockPrefetch)
    assert _hooked(model.blocks[0], GROUP_HOOK) == [""] and _hooked(model.blocks[1], GROUP_HOOK) == []
    assert torch.equal(forward("i2v", model), expected)


def test_the_layout_comes_back_after_diffusers_reoffloads_the_model_its_own_way():
    from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading

    from cinesynth_batch.runtime.memory import restore_offload

    model = build("i2v")
    base = forward("i2v", model)
    offload_blocks(model, "cpu", 1)
    _maybe_remove_and_reapply_group_offloading(model)           # what a pipeline's LoRA load does
    assert _hooked(model.blocks[1], GROUP_HOOK) == [""]          # diffusers' layout: every block
    assert restore_offload(model) is True
    assert _hooked(model.blocks[1], GROUP_HOOK) == [] and offloaded(model).blocks == [0]
    assert isinstance(model._diffusers_hook.get_hook(GROUP_HOOK), FirstBlockPrefetch)
    assert torch.equal(forward("i2v", model), base)


@pytest.mark.slow
def test_the_gpu_benchmark_runs_its_rows_on_the_tiny_models(tmp_path):
    """``bench/gpu/video_memory.py --tiny``: the benchmark's own code on the CPU, every row of each
    model without an error; the exact paths give the bf16 output, fp8 storage a close one."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(root / "bench/gpu/video_memory.py"), "--tiny"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "video_memory.json").read_text())
    assert [m["model"] for m in result["models"]] == ["Wan2.2-I2V-A14B expert", "Wan2.2-S2V-14B", "Wan2.2-Animate-14B"]
    for group in result["models"]:
        rows = {r["key"]: r for r in group["rows"]}
        assert not [r for r in rows.values() if "error" in r], group
        for key in ("swap20", "swap40", "offload_all", "diffusers_offload"):
            assert rows[key]["rel_err_vs_bf16"] == 0.0, (group["model"], key)
        for key in ("fp8", "fp8_swap20", "fp8_swap40"):
            assert 0 < rows[key]["rel_err_vs_bf16"] < 0.1, (group["model"], key)
        assert rows["fp8_swap40"]["rel_err_vs_bf16"] == rows["fp8"]["rel_err_vs_bf16"]
