"""The speed paths against stock eager on a real CUDA device (skipped elsewhere).

A Wan expert of full width (5120 = 40 heads x 128, FFN 13824) and 4 blocks, random bf16 weights,
one forward at 480x832 x 21 frames (9,360 tokens). Exactness is judged against an fp32 eager
reference of the same weights: a lossless path's error to fp32 must stay within 1.5x stock bf16's
own (plus 1e-3), and within 1e-2 of stock eager. Lossy paths must stay within their documented
bound (``docs/performance.md``).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cinesynth_batch.runtime import accel  # noqa: E402
from cinesynth_batch.runtime.attention import resolve_attention, set_attention  # noqa: E402
from cinesynth_batch.runtime.memory import offload_blocks  # noqa: E402

FP8_FORWARD_REL_ERROR_BOUND = 0.015    # fp8 (per-row) forward vs fp32: 8.2e-3 measured; docs/performance.md


def _rel(a, b):
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def setup():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    cfg = dict(in_channels=36, out_channels=16, num_layers=4, num_attention_heads=40, attention_head_dim=128,
               ffn_dim=13824, text_dim=4096, image_dim=None)
    with torch.device("cuda"):
        model = WanTransformer3DModel(**cfg).eval()
    g = torch.Generator("cuda").manual_seed(1)
    x = torch.randn(1, 36, 6, 60, 104, device="cuda", generator=g)
    ctx = torch.randn(1, 512, 4096, device="cuda", generator=g)
    t = torch.tensor([500.0], device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        ref32 = model(x, t, ctx, return_dict=False)[0].float()
    model.to(torch.bfloat16)
    xb, cb = x.bfloat16(), ctx.bfloat16()
    set_attention(model, "sdpa")
    with torch.inference_mode():
        stock = model(xb, t, cb, return_dict=False)[0].float()
    return model, (xb, t, cb), ref32, stock


def _forward(model, inputs):
    with torch.inference_mode():
        return model(*inputs, return_dict=False)[0].float()


def _assert_lossless(name, out, ref32, stock):
    stock_err = _rel(stock, ref32)
    err = _rel(out, ref32)
    print(f"{name}: err_vs_fp32 {err:.2e} (stock {stock_err:.2e}), err_vs_stock {_rel(out, stock):.2e}")
    assert err <= 1.5 * stock_err + 1e-3
    assert _rel(out, stock) <= 1e-2


@pytest.mark.parametrize("kernel", ["cudnn", "fa3", "fa4"])
def test_attention_kernel_is_as_exact_as_stock(setup, kernel):
    model, inputs, ref32, stock = setup
    choice = resolve_attention(kernel, "cuda", torch.bfloat16)
    if choice.reason:
        pytest.skip(choice.reason)
    set_attention(model, kernel)
    try:
        _assert_lossless(kernel, _forward(model, inputs), ref32, stock)
    finally:
        set_attention(model, "sdpa")


@pytest.mark.parametrize("kernel", ["auto", "fa4"])
def test_regional_compile_is_as_exact_as_stock(setup, kernel):
    model, inputs, ref32, stock = setup
    choice = resolve_attention(kernel, "cuda", torch.bfloat16)
    if choice.reason:
        pytest.skip(choice.reason)
    set_attention(model, choice.used)
    accel.compile_blocks(model)
    try:
        _assert_lossless(f"{choice.used}+compile", _forward(model, inputs), ref32, stock)
    finally:
        accel.uncompile_blocks(model)
        torch._dynamo.reset()
        set_attention(model, "sdpa")


def test_block_offload_gives_the_resident_output():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    cfg = dict(in_channels=36, out_channels=16, num_layers=3, num_attention_heads=8, attention_head_dim=128,
               ffn_dim=4096, text_dim=4096, image_dim=None)
    with torch.device("cuda"):
        model = WanTransformer3DModel(**cfg).eval().to(torch.bfloat16)
    g = torch.Generator("cuda").manual_seed(2)
    inputs = (torch.randn(1, 36, 3, 32, 48, device="cuda", generator=g, dtype=torch.bfloat16),
              torch.tensor([300.0], device="cuda"),
              torch.randn(1, 64, 4096, device="cuda", generator=g, dtype=torch.bfloat16))
    resident = _forward(model, inputs)
    model.to("cpu")
    offload_blocks(model, "cuda")
    before = torch.cuda.memory_allocated()
    offloaded = _forward(model, inputs)
    assert torch.equal(offloaded, resident)
    assert next(model.blocks[1].parameters()).device.type == "cpu"   # blocks wait in host RAM
    assert torch.cuda.memory_allocated() - before < 64 << 20


def test_fp8_compute_stays_within_its_documented_error(setup):
    from diffusers import WanTransformer3DModel

    ok, why = accel.fp8_ok("cuda")
    if not ok:
        pytest.skip(why)
    model, inputs, ref32, stock = setup
    copy = WanTransformer3DModel.from_config(model.config).to("cuda", torch.bfloat16).eval()
    copy.load_state_dict(model.state_dict())
    layers = accel.quantize_fp8(copy)
    assert layers == 4 * 10          # q, k, v, o of both attentions + 2 FFN layers, per block
    out = _forward(copy, inputs)
    err = _rel(out, ref32)
    print(f"fp8: err_vs_fp32 {err:.2e} (stock {_rel(stock, ref32):.2e}), err_vs_stock {_rel(out, stock):.2e}")
    assert err <= FP8_FORWARD_REL_ERROR_BOUND
    del copy


def test_prepare_transformer_reports_what_runs_and_refuses_other_settings():
    from diffusers import WanTransformer3DModel

    with torch.device("cuda"):
        model = WanTransformer3DModel(in_channels=36, out_channels=16, num_layers=2, num_attention_heads=2,
                                      attention_head_dim=64, ffn_dim=256, text_dim=64, image_dim=None)
    model.to(torch.bfloat16)
    settings = accel.SpeedSettings(attention="auto", compile="off")
    report = accel.prepare_transformer(model, settings, "cuda")
    assert report["attention"] == resolve_attention("auto", "cuda", torch.bfloat16).used
    assert report["attention"] in ("fa3", "fa4", "cudnn") and report["compile"] is False
    assert accel.prepare_transformer(model, settings, "cuda") is report
    with pytest.raises(RuntimeError, match="prepared with"):
        accel.prepare_transformer(model, accel.SpeedSettings(attention="sdpa"), "cuda")


def test_host_copy_round_trip_on_cuda_pins_once_and_keeps_values():
    from cinesynth_batch.runtime.swap import HostCopy

    with torch.device("cuda"):
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = HostCopy([model])
    copy.to_host()
    assert all(p.device.type == "cpu" and p.is_pinned() for p in model.parameters())
    pinned = copy.pinned_bytes
    for _ in range(2):
        copy.to_device("cuda")
        assert all(p.device.type == "cuda" for p in model.parameters())
        copy.to_host()
    assert copy.pinned_bytes == pinned and copy.copied_back == 0
    copy.to_device("cuda")
    with torch.no_grad():
        model[0].weight.add_(1.0)                 # changed on the device: must be copied back
    copy.to_host()
    assert copy.copied_back == 1
    assert torch.equal(model[0].weight.cpu(), (before["0.weight"] + 1.0).cpu())
    assert torch.equal(model[2].weight.cpu(), before["2.weight"].cpu())


def test_residency_swaps_through_pinned_memory_on_cuda():
    from types import SimpleNamespace
    from pathlib import Path

    from cinesynth_batch.catalog.residency import Residency

    class Two:
        specs = {r: SimpleNamespace(kind="x", label=r) for r in "ab"}

        def spec(self, role, name=None):
            return self.specs[role]

        def local_path(self, role, name=None):
            return Path("/nonexistent")

    made = []

    def loader(kind, path, device, dtype, room):
        torch.manual_seed(len(made))
        made.append(kind)
        return torch.nn.Linear(1024, 1024, device=device)

    size = 1024 * 1024 * 4 + 1024 * 4
    res = Residency(Two(), device="cuda", budget=size + 1, host_budget=1 << 30, loader=loader)
    a = res.get("a")
    wa = a.weight.detach().clone()
    res.get("b")
    assert a.weight.device.type == "cpu" and a.weight.is_pinned()
    for role in "abab":
        res.get(role)
    assert dict(res.loads) == {"a": 1, "b": 1} and dict(res.swaps) == {"a": 2, "b": 2}
    assert torch.equal(res.get("a").weight, wa)
