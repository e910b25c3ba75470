"""Kernel microbenchmarks behind the step figures: self-attention at the Wan A14B shapes (40 heads
of 128; 32,760 tokens at 480p, 75,600 at 720p) through each available kernel, and the FFN's
matrix product (tokens x 5120 x 13824) in bf16 and fp8. TFLOP/s are taken against the bf16
matmul ceiling measured in the same run; errors are relative L2 distances from an fp32 reference
on the same inputs (attention: the first 4 heads).

Inputs are random: q and v standard normal, k standard normal plus a per-channel offset
(N(0, 2^2)), the common-mode component real keys carry and that fp8 rounding of keys suffers from.
Errors on trained activations differ; these show the kernels' relative standing.

Attention rows: ``sdpa`` (torch's own choice), ``cudnn``, ``fa3`` (bf16), ``fa3-fp8`` (q, k, v in
float8 e4m3 with one scale per head; the time includes the quantizing pass),
``fa3-fp8+smooth`` (keys minus their mean over tokens first: softmax is unchanged by it, the
rounding error shrinks), ``sageattn`` (the SageAttention wheel, when installed), ``fa4`` (the
flash-attn-4 wheel: FlashAttention written in the CUTLASS Python DSL, compiled on first use; its
Hopper forward with its own tile choice) and a row for each forced configuration
of ``--fa4-configs``: ``MxN`` (M query rows x N key rows a tile), ``MxN:ss`` (probabilities
through shared memory instead of registers), ``MxN:seq`` (softmax not overlapped with the
matrix products).

    python bench/gpu/attention_kernels.py [--sizes 480p,720p] [--fa4-configs 128x176,128x192:seq] [--no-matmul]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from _common import SIZES, matmul_peak, rel_l2, save, table, timed, wan_tokens

HEADS, HEAD_DIM, REF_HEADS = 40, 128, 4
E4M3_MAX = 448.0


def quantize_per_head(x, smooth: bool = False):
    """(batch, tokens, heads, dim) bf16 -> float8 e4m3 with one scale per head, and the fp32
    descales FA3 takes ((batch, heads)). ``smooth`` removes the mean over tokens first."""
    xf = x.float()
    if smooth:
        xf = xf - xf.mean(dim=1, keepdim=True)
    scale = xf.abs().amax(dim=(1, 3)).clamp_min(1e-12) / E4M3_MAX
    return (xf / scale[:, None, :, None]).to(torch.float8_e4m3fn), scale


def fp8_attention(fa3, q, k, v, smooth_k: bool):
    """Attention with q, k, v rounded to fp8 per head; FA3 undoes the scales inside the kernel."""
    (q8, qs), (k8, ks), (v8, vs) = quantize_per_head(q), quantize_per_head(k, smooth_k), quantize_per_head(v)
    return fa3(q8, k8, v8, q_descale=qs, k_descale=ks, v_descale=vs)


def attention_inputs(n: int, seed: int = 7):
    g = torch.Generator("cuda").manual_seed(seed)
    shape = (1, n, HEADS, HEAD_DIM)
    q = torch.randn(shape, device="cuda", generator=g, dtype=torch.bfloat16)
    offset = torch.randn(1, 1, HEADS, HEAD_DIM, device="cuda", generator=g) * 2
    k = (torch.randn(shape, device="cuda", generator=g) + offset).to(torch.bfloat16)
    v = torch.randn(shape, device="cuda", generator=g, dtype=torch.bfloat16)
    return q, k, v


def sdpa_bshd(q, k, v, backend=None):
    """torch SDPA on (batch, seq, heads, dim) tensors."""
    args = [t.transpose(1, 2) for t in (q, k, v)]
    if backend is None:
        return F.scaled_dot_product_attention(*args).transpose(1, 2)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(*args).transpose(1, 2)


def fa4_kernels(q, k, v, configs: list[str]) -> dict:
    """The flash-attn-4 rows: its own configuration, then one row per forced configuration
    ``MxN`` (P in registers, softmax overlapped), ``MxN:ss`` (P through shared memory) or
    ``MxN:seq`` (no overlap)."""
    try:
        from flash_attn.cute import flash_attn_func
        from flash_attn.cute.interface import _flash_attn_fwd
    except ImportError:
        return {}
    kernels = {"fa4": lambda: flash_attn_func(q, k, v)}
    for config in configs:
        tile, _, flag = config.partition(":")
        m, n_ = (int(x) for x in tile.split("x"))
        rs, olap = flag != "ss", flag != "seq"
        kernels[f"fa4 {config}"] = (lambda m=m, n_=n_, rs=rs, olap=olap: _flash_attn_fwd(
            q, k, v, tile_mn=(m, n_), mma_pv_is_rs=rs, intra_wg_overlap=olap))
    return kernels


def attention_rows(n: int, peak: float, fa3, sageattn, fa4_configs: list[str]) -> list[dict]:
    flops = 4 * n * n * HEADS * HEAD_DIM
    q, k, v = attention_inputs(n)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        ref = sdpa_bshd(*(t[:, :, :REF_HEADS].float() for t in (q, k, v)))
    kernels = {"sdpa": lambda: sdpa_bshd(q, k, v), "cudnn": lambda: sdpa_bshd(q, k, v, SDPBackend.CUDNN_ATTENTION)}
    if fa3 is not None:
        kernels["fa3"] = lambda: fa3(q, k, v)
        kernels["fa3-fp8"] = lambda: fp8_attention(fa3, q, k, v, smooth_k=False)
        kernels["fa3-fp8+smooth"] = lambda: fp8_attention(fa3, q, k, v, smooth_k=True)
    if sageattn is not None:
        kernels["sageattn"] = lambda: sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
    kernels.update(fa4_kernels(q, k, v, fa4_configs))
    rows = []
    for name, call in kernels.items():
        try:
            y = call()
            y = y[0] if isinstance(y, tuple) else y
            sec = timed(call, 5)
        except Exception as exc:  # noqa: BLE001 - a kernel this machine lacks is a row saying why
            rows.append({"kernel": name, "ms": f"failed: {repr(exc)[:120]}"})
            print(rows[-1], flush=True)
            continue
        rows.append({"kernel": name, "ms": round(sec * 1e3, 2), "tflops": round(flops / sec / 1e12, 1),
                     "x_ceiling": round(flops / sec / peak, 3),
                     "err_vs_fp32": f"{rel_l2(y[:, :, :REF_HEADS], ref):.2e}"})
        print(n, rows[-1], flush=True)
    return rows


def matmul_rows(m: int, kd: int = 5120, nd: int = 13824) -> list[dict]:
    g = torch.Generator("cuda").manual_seed(9)
    a = torch.randn(m, kd, device="cuda", generator=g, dtype=torch.bfloat16)
    b = torch.randn(nd, kd, device="cuda", generator=g, dtype=torch.bfloat16) / kd ** 0.5
    ref = a.float() @ b.float().t()
    a_s = a.abs().amax(dim=1, keepdim=True).float() / 448
    b_s = b.abs().amax(dim=1, keepdim=True).float() / 448
    a8, b8 = (a / a_s).to(torch.float8_e4m3fn), (b / b_s).to(torch.float8_e4m3fn)
    rows = []
    for name, call in (("bf16", lambda: a @ b.t()),
                       ("fp8 rowwise (torch._scaled_mm)",
                        lambda: torch._scaled_mm(a8, b8.t(), scale_a=a_s, scale_b=b_s.t(), out_dtype=torch.bfloat16))):
        y = call()
        sec = timed(call, 10)
        rows.append({"matmul": f"{m}x{kd}x{nd} {name}", "ms": round(sec * 1e3, 3),
                     "tflops": round(2 * m * kd * nd / sec / 1e12, 1), "err_vs_fp32": f"{rel_l2(y, ref):.2e}"})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="480p,720p")
    ap.add_argument("--fa4-configs", default="", help="comma-separated flash-attn-4 configurations to force")
    ap.add_argument("--no-matmul", action="store_true", help="attention rows only")
    args = ap.parse_args()
    from cinesynth_batch.runtime.attention import fa3_module

    peak = matmul_peak()
    module = fa3_module()
    fa3 = module.flash_attn_func if module is not None else None
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "bf16_matmul_tflops": round(peak / 1e12, 1), "attention": {}, "matmul": {}}
    print(f"matmul ceiling {peak / 1e12:.1f} TFLOP/s; fa3: {'yes' if fa3 else 'no'}", flush=True)
    try:
        from sageattention import sageattn
    except ImportError:
        sageattn = None
    for size in args.sizes.split(","):
        h, w, f = SIZES[size]
        n = wan_tokens(h, w, f)
        rows = attention_rows(n, peak, fa3, sageattn, [c for c in args.fa4_configs.split(",") if c])
        out["attention"][size] = {"tokens": n, "rows": rows}
        print(f"\nattention {size} ({n} tokens, {HEADS}x{HEAD_DIM})\n"
              + table(rows, ["kernel", "ms", "tflops", "x_ceiling", "err_vs_fp32"]), flush=True)
        torch.cuda.empty_cache()
        if args.no_matmul:
            continue
        mm = matmul_rows(n)
        out["matmul"][size] = mm
        print(table(mm, ["matmul", "ms", "tflops", "err_vs_fp32"]), flush=True)
        torch.cuda.empty_cache()
    save("kernels.json", out)


if __name__ == "__main__":
    main()
