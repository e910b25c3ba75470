"""Speed settings on the CPU: what falls back and why, and regional compile composing with the
step-cache hooks (compiled with dynamo's ``eager`` backend: the same graphs and guards as on a
GPU, without a C compiler)."""

import warnings

import pytest
import torch

from cinesynth_batch.models import accel
from cinesynth_batch.models.attention import resolve_attention


def test_settings_reject_unknown_values():
    with pytest.raises(ValueError, match="attention must be one of auto, sdpa, cudnn, fa3"):
        accel.SpeedSettings(attention="xformers")
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        accel.SpeedSettings(compile="yes")
    with pytest.raises(ValueError, match="quantize must be null or 'fp8'"):
        accel.SpeedSettings(quantize="int8")
    assert accel.SpeedSettings().lossless and not accel.SpeedSettings(quantize="fp8").lossless
    assert not accel.SpeedSettings(attention="sageattn").lossless


def test_cpu_resolution_names_every_fallback():
    used, reasons = accel.resolve(accel.SpeedSettings(attention="fa3", compile="on", quantize="fp8",
                                                      offload="blocks"), "cpu", torch.float32)
    assert used == {"attention": "sdpa", "attention_backend": "native", "compile": False, "quantize": None,
                    "offload": None}
    assert reasons == [
        "attention='fa3': fa3 runs on CUDA devices only, this run is on cpu; using sdpa (torch SDPA)",
        "compile='on': compiling for the CPU costs more than it saves here; running eager",
        "quantize='fp8': fp8 compute runs on CUDA devices only, this run is on cpu; computing in float32",
        "offload='blocks': offloading streams blocks to a CUDA device; on cpu every block is in RAM already",
    ]
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
    from cinesynth_batch.models.teacache import TeaCacheConfig, apply_teacache

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
    from cinesynth_batch.models import attention

    assert attention.usable("fa3", "cuda", torch.bfloat16, head_dim=4) == (
        False, "fa3 needs a head size that is a multiple of 8 and at most 256, this model's is 4")
    assert attention.usable("cudnn", "cuda", torch.bfloat16, head_dim=300)[0] is False
