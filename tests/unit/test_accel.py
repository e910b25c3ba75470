"""Speed settings on the CPU: what falls back and why, and regional compile composing with the
step-cache hooks (compiled with dynamo's ``eager`` backend: the same graphs and guards as on a
GPU, without a C compiler)."""

import sys
import types
import warnings

import pytest
import torch

from cinesynth_batch.runtime import accel
from cinesynth_batch.runtime.attention import resolve_attention
from cinesynth_batch.stages.base import StageError


def test_settings_reject_unknown_values():
    with pytest.raises(StageError, match=r"^speed: attention: 'xformers': input should be 'auto', 'sdpa', "
                                          r"'cudnn', 'fa3', 'fa4', 'flash' or 'sageattn'$"):
        accel.SpeedSettings(attention="xformers")
    with pytest.raises(StageError, match=r"^speed: compile: 'yes': input should be 'auto', 'on' or 'off'$"):
        accel.SpeedSettings(compile="yes")
    with pytest.raises(StageError, match=r"^speed: quantize: 'int8': input should be 'fp8' or 'fp8_e4m3fn'$"):
        accel.SpeedSettings(quantize="int8")
    with pytest.raises(ValueError, match="offload must be null or 'blocks', got 'all'"):
        accel.SpeedSettings(offload="all")
    assert accel.SpeedSettings().lossless and not accel.SpeedSettings(quantize="fp8").lossless
    assert not accel.SpeedSettings(quantize="fp8_e4m3fn").lossless
    assert accel.SpeedSettings(block_swap=20).lossless
    assert not accel.SpeedSettings(attention="sageattn").lossless


def test_cpu_resolution_names_every_fallback():
    used, reasons = accel.resolve(accel.SpeedSettings(attention="fa3", compile="on", quantize="fp8",
                                                      offload="blocks", block_swap=20), "cpu", torch.float32)
    assert used == {"attention": "sdpa", "attention_backend": "native", "compile": False, "quantize": None,
                    "offload": None, "block_swap": 0}
    assert reasons == [
        "attention='fa3': fa3 runs on CUDA devices only, this run is on cpu; using sdpa (torch SDPA)",
        "compile='on': compiling for the CPU costs more than it saves here; running eager",
        "quantize='fp8': fp8 compute runs on CUDA devices only, this run is on cpu; computing in float32",
        "offload='blocks': offloading streams blocks to a CUDA device; on cpu every block is in RAM already",
        "block_swap=20: block swap streams blocks from RAM to a CUDA device; on cpu every block is in RAM "
        "already; using no swap",
    ]
    # fp8 storage runs on the CPU: no fallback
    used, reasons = accel.resolve(accel.SpeedSettings(quantize="fp8_e4m3fn"), "cpu", torch.float32)
    assert (used["quantize"], reasons) == ("fp8_e4m3fn", [])
    # the defaults fall back silently: auto means "the best this machine has"
    assert accel.resolve(accel.SpeedSettings(), "cpu", torch.float32)[1] == []
    assert resolve_attention("auto", "cpu", torch.float32).used == "sdpa"


def _tiny_wan():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(in_channels=36, out_channels=16, num_layers=3, num_attention_heads=2,
                                 attention_head_dim=8, ffn_dim=32, text_dim=16, freq_dim=16,
                                 image_dim=None).eval()


def _inputs(t):
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 36, 2, 8, 8, generator=g), torch.tensor([t]), torch.randn(1, 5, 16, generator=g)


def _loop(model, steps=(900.0, 880.0, 860.0, 840.0)):
    outs = []
    with torch.inference_mode():
        for t in steps:
            outs.append(model(*_inputs(t), return_dict=False)[0])
    return outs


def test_compiled_blocks_compose_with_teacache_hooks_and_uncompile():
    from cinesynth_batch.runtime.teacache import TeaCacheConfig, apply_teacache

    model = _tiny_wan()
    config = TeaCacheConfig(rel_l1_thresh=0.5, start_step=1, use_coefficients=False, num_steps=4)
    handle = apply_teacache(model, config)
    eager = _loop(model)
    eager_stats = handle.stats()
    handle.remove()

    assert accel.compile_blocks(model, backend="eager") == 3
    handle = apply_teacache(model, config)          # hooks wrap the compiled forwards
    compiled = _loop(model)
    assert handle.stats() == eager_stats
    handle.remove()
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-6)
    accel.uncompile_blocks(model)
    assert all("forward" not in block.__dict__ for block in model.blocks)


def test_prepare_transformer_on_cpu_records_what_runs():
    model = _tiny_wan()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = accel.prepare_transformer(model, accel.SpeedSettings(attention="cudnn"), "cpu")
    assert report["attention"] == "sdpa" and report["compile"] is False
    assert report["requested"]["attention"] == "cudnn"
    assert [type(w.message).__name__ for w in caught] == ["SpeedFallbackWarning"]
    assert "cudnn runs on CUDA devices only" in str(caught[0].message)
    assert accel.prepare_transformer(model, accel.SpeedSettings(attention="cudnn"), "cpu") is report
    with pytest.raises(RuntimeError, match="was prepared with"):
        accel.prepare_transformer(model, accel.SpeedSettings(), "cpu")


def test_kernels_that_need_head_sizes_in_multiples_of_8_are_not_picked_for_others():
    from cinesynth_batch.runtime import attention

    assert attention.usable("fa3", "cuda", torch.bfloat16, head_dim=4) == (
        False, "fa3 needs a head size that is a multiple of 8 and at most 256, this model's is 4")
    assert attention.usable("cudnn", "cuda", torch.bfloat16, head_dim=300)[0] is False


def test_fa4_falls_back_off_cuda_and_says_why_when_its_wheel_does_not_import(monkeypatch):
    from cinesynth_batch.runtime import attention

    choice = resolve_attention("fa4", "cpu", torch.bfloat16)
    assert (choice.used, choice.reason) == ("sdpa", "fa4 runs on CUDA devices only, this run is on cpu; "
                                                    "using sdpa (torch SDPA)")
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)       # the wheel is absent
    ok, why = attention.ensure_fa4_backend()
    assert not ok and why.startswith("FlashAttention-4 (the flash-attn-4 wheel, flash_attn.cute) does not import")
    with pytest.raises(RuntimeError, match="FlashAttention-4 .* does not import"):
        attention.set_attention(_tiny_wan(), "fa4")


def _stand_in_flash_attn_cute():
    """A module with flash-attn-4's calling convention ((batch, tokens, heads, dim) tensors,
    keyword scale, an (out, lse) tuple back) computing torch SDPA: FA4 itself needs a Hopper GPU."""
    calls = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        calls.append((tuple(q.shape), softmax_scale, causal))
        out = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v)), scale=softmax_scale, is_causal=causal)
        return out.transpose(1, 2), None

    return types.SimpleNamespace(flash_attn_func=flash_attn_func), calls


def test_fa4_routes_every_attention_through_the_operator_with_a_stand_in_fa4_module(monkeypatch):
    from diffusers.models import attention_dispatch as ad

    from cinesynth_batch.runtime import attention
    from cinesynth_batch.runtime.fa4 import fa4_attention

    module, calls = _stand_in_flash_attn_cute()
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", module)
    registry = ad._HUB_KERNELS_REGISTRY[ad.AttentionBackendName.FLASH_4_HUB]
    monkeypatch.setattr(registry, "kernel_fn", None)
    model = _tiny_wan()
    x, t, ctx = _inputs(500.0)
    with torch.inference_mode():
        reference = model(x, t, ctx, return_dict=False)[0]
        assert attention.set_attention(model, "fa4") == 6             # 3 blocks x (self, cross)
        assert registry.kernel_fn is fa4_attention
        out = model(x, t, ctx, return_dict=False)[0]
    # 2 frames x 4 x 4 patches = 32 tokens; text: 5 tokens; 2 heads of 8; diffusers passes no scale
    assert calls == [((1, 32, 2, 8), None, False)] * 6
    assert torch.equal(out, reference)


def test_fa4_operator_has_a_shape_only_fake_for_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cinesynth_batch.runtime.fa4 import fa4_attention

    with FakeTensorMode():
        q, k = torch.empty(2, 10, 4, 64, dtype=torch.bfloat16), torch.empty(2, 12, 4, 64, dtype=torch.bfloat16)
        out = fa4_attention(q, k, torch.empty(2, 12, 4, 32, dtype=torch.bfloat16))
    assert (tuple(out.shape), out.dtype) == ((2, 10, 4, 32), torch.bfloat16)


def test_key_params_follow_the_fallback_decision_on_cpu():
    params = {"prompt": "x", "quantize": "fp8", "attention": "sageattn"}
    assert accel.keyed_speed(params, "cpu", "float32") == {"prompt": "x"}
    storage = {"prompt": "x", "quantize": "fp8_e4m3fn", "attention": "sageattn"}
    assert accel.keyed_speed(storage, "cpu", "float32") == {"prompt": "x", "quantize": "fp8_e4m3fn"}
    assert accel.keyed_speed({"prompt": "x"}, "cpu", "float32") == {"prompt": "x"}
    exact = {"prompt": "x", "attention": "fa3"}          # exact kernels are not keyed: left as they are
    assert accel.keyed_speed(exact, "cpu", "bfloat16") is exact


def test_a_run_that_differs_from_its_key_is_refused():
    ran = {"transformer": {"quantize": None, "attention": "sdpa"}, "offload": None}
    accel.check_keyed("video", {"prompt": "x"}, ran)
    with pytest.raises(StageError, match=r"video: transformer ran with exact settings but the key names "
                                         r"\{'quantize': 'fp8'\}; the output is not stored"):
        accel.check_keyed("video", {"prompt": "x", "quantize": "fp8"}, ran)
    sage = {"transformer": {"quantize": None, "attention": "sageattn"}}
    with pytest.raises(StageError, match="ran with {'attention': 'sageattn'} but the key names exact settings"):
        accel.check_keyed("lipsync", {"prompt": "x"}, sage)
