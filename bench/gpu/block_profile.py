"""Where one Wan2.2 A14B transformer block spends its time: per-variant milliseconds of one block
forward at full width (random bf16 weights), the estimated 40-block CFG step, and a kernel
breakdown (matrix products, attention, fused pointwise, other) from the CUDA profiler.

Variants (``--variants``):

* ``sdpa``: stock diffusers block, eager, torch SDPA;
* ``fa3``: FlashAttention-3, eager;
* ``fa3+compile``: plus ``torch.compile`` of the block (the renderer's default on Hopper);
* ``fa3+compile+ffn``: plus the FFN's bias + tanh-GELU in the matrix product's epilogue
  (cuBLASLt ``GELU_BIAS`` through ``torch._addmm_activation``);
* ``fa3+compile+autotune``: inductor ``max-autotune-no-cudagraphs`` instead of the default mode;
* ``2streams`` / ``2streams+autotune``: the conditional and unconditional passes launched on two
  CUDA streams, so that each can fill the other's idle tails.

Each variant has its own block (same seed, same weights) and its own compiled forward; the timed
rounds interleave the variants, so that a drift of the GPU's clock hits all of them alike. Errors
are relative L2 distances of the block output from the ``sdpa`` variant's.

    python bench/gpu/block_profile.py [--sizes 480p,720p] [--variants a,b] [--reps 9]   # $OUT/block_profile.json
"""

from __future__ import annotations

import argparse

import torch

from _common import SIZES, TEXT_LEN, build, matmul_peak, rel_l2, save, table, timed, wan_flops, wan_tokens
from cinesynth_batch.runtime.attention import set_attention

LAYERS = 40


def linear_gelu_op():
    """``gelu_tanh(x @ W.T + b)`` as one cuBLASLt product with a GELU_BIAS epilogue, wrapped as a
    custom op so that inductor keeps it whole."""
    existing = getattr(getattr(torch.ops, "cinesynth_bench", None), "linear_gelu_tanh", None)
    if existing is not None:
        return existing

    @torch.library.custom_op("cinesynth_bench::linear_gelu_tanh", mutates_args=(),
                             schema="(Tensor x, Tensor weight, Tensor bias) -> Tensor")
    def linear_gelu_tanh(x, weight, bias):
        flat = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
        return flat.view(*x.shape[:-1], weight.shape[0])

    @linear_gelu_tanh.register_fake
    def _(x, weight, bias):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    return torch.ops.cinesynth_bench.linear_gelu_tanh


def fuse_ffn(block) -> None:
    """Route the block's FFN input projection (diffusers ``GELU(approximate="tanh")``) through the
    fused product."""
    op, gelu = linear_gelu_op(), block.ffn.net[0]
    gelu.forward = lambda hidden_states: op(hidden_states, gelu.proj.weight, gelu.proj.bias)


def category(name: str) -> str:
    low = name.lower()
    if "flash" in low or "fmha" in low or "attention" in low:
        return "attention"
    if any(k in low for k in ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "cublas")):
        return "matmul"
    if low.startswith("triton_") or "triton" in low:
        return "pointwise (triton)"
    return "other"


def breakdown(fn) -> dict[str, float]:
    """Milliseconds per kernel category over one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    cats: dict[str, float] = {}
    top: dict[str, float] = {}
    for evt in prof.key_averages():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = evt.self_device_time_total / 1e3
        cats[category(evt.key)] = cats.get(category(evt.key), 0.0) + ms
        top[evt.key] = top.get(evt.key, 0.0) + ms
    for name, ms in sorted(top.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {ms:8.3f} ms  {name[:110]}", flush=True)
    return {k: round(v, 3) for k, v in sorted(cats.items())}


VARIANT_SETTINGS = {  # name: (attention, compile mode, fused FFN, two streams)
    "sdpa": ("sdpa", None, False, False),
    "fa3": ("fa3", None, False, False),
    "fa3+compile": ("fa3", "default", False, False),
    "fa3+compile+ffn": ("fa3", "default", True, False),
    "fa3+compile+autotune": ("fa3", "max-autotune-no-cudagraphs", False, False),
    "2streams": ("fa3", "default", False, True),
    "2streams+autotune": ("fa3", "max-autotune-no-cudagraphs", False, True),
}
VARIANTS = ",".join(VARIANT_SETTINGS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="480p")
    ap.add_argument("--variants", default=VARIANTS)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--profile", default="fa3+compile,fa3+compile+autotune")
    args = ap.parse_args()
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformerBlock

    wanted = [v for v in args.variants.split(",") if v]
    peak = matmul_peak()
    blocks = {}
    for name in wanted:       # one block per variant, same seed: identical weights, own compiled forward
        attn, mode, ffn, _ = VARIANT_SETTINGS[name]
        block, _ = build(lambda: WanTransformerBlock(dim=5120, ffn_dim=13824, num_heads=40, cross_attn_norm=True))
        set_attention(block, attn)
        if ffn:
            fuse_ffn(block)
        if mode:
            block.forward = torch.compile(block.forward, fullgraph=True, dynamic=False,
                                          mode=None if mode == "default" else mode)
        blocks[name] = block
    rope = WanRotaryPosEmbed(attention_head_dim=128, patch_size=(1, 2, 2), max_seq_len=1024).to("cuda")
    side = torch.cuda.Stream()
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "bf16_matmul_tflops": round(peak / 1e12, 1), "sizes": {}}
    print(f"matmul ceiling {peak / 1e12:.1f} TFLOP/s", flush=True)
    for size in args.sizes.split(","):
        h, w, f = SIZES[size]
        n = wan_tokens(h, w, f)
        g = torch.Generator("cuda").manual_seed(3)
        rot = rope(torch.zeros(1, 16, (f - 1) // 4 + 1, h // 8, w // 8, device="cuda"))
        x = torch.randn(1, n, 5120, device="cuda", dtype=torch.bfloat16, generator=g)
        ctx = [torch.randn(1, TEXT_LEN, 5120, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2)]
        temb = torch.randn(1, 6, 5120, device="cuda", dtype=torch.bfloat16, generator=g) * 0.1
        floor_ms = wan_flops(n, layers=1) / peak * 1e3

        def pair(name):
            block, streams = blocks[name], VARIANT_SETTINGS[name][3]
            if not streams:
                return block(x, ctx[0], temb, rot), block(x, ctx[1], temb, rot)
            side.wait_stream(torch.cuda.current_stream())
            a = block(x, ctx[0], temb, rot)
            with torch.cuda.stream(side):
                b = block(x, ctx[1], temb, rot)
            torch.cuda.current_stream().wait_stream(side)
            return a, b

        outputs, times, cats = {}, {name: [] for name in wanted}, {}
        with torch.inference_mode():
            for name in wanted:                       # compile, warm up, keep one output
                outputs[name] = pair(name)[0].float().cpu()
                pair(name)
            for _ in range(args.reps):                # interleaved rounds: clock drift hits every variant alike
                for name in wanted:
                    times[name].append(timed(lambda: pair(name), 1, warm=0) * 1e3)
            for name in wanted:
                if name in args.profile.split(","):
                    print(f"{size} {name}: top kernels", flush=True)
                    cats[name] = breakdown(lambda: pair(name))
        ref = outputs.get("sdpa")
        rows = []
        for name in wanted:
            ms = sorted(times[name])[len(times[name]) // 2]
            row = {"variant": name, "block_pair_ms": round(ms, 2), "est_step_s": round(ms * LAYERS / 1e3, 3),
                   "floor_frac": round(2 * floor_ms / ms, 3),
                   "err_vs_sdpa": f"{rel_l2(outputs[name], ref):.2e}" if ref is not None else ""}
            row.update(cats.get(name, {}))
            rows.append(row)
        out["sizes"][size] = {"tokens": n, "floor_block_pair_ms": round(2 * floor_ms, 2), "rows": rows}
        cols = ["variant", "block_pair_ms", "est_step_s", "floor_frac", "err_vs_sdpa", "matmul", "attention",
                "pointwise (triton)", "other"]
        print(f"\n{size}: {n} tokens, floor {2 * floor_ms:.2f} ms per block pair\n" + table(rows, cols), flush=True)
    save("block_profile.json", out)


if __name__ == "__main__":
    main()
