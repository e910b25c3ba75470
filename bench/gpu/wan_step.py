"""One CFG denoising step of a full-size Wan2.2-I2V-A14B expert (random bf16 weights): stock
diffusers eager against the renderer's speed paths, all in one process on one GPU.

A CFG step is the conditional and the unconditional forward combined as ``u + g (c - u)``.
Rows (``--sizes 480p,720p``):

* ``stock``: diffusers 0.42.1 as shipped (``native`` attention = torch SDPA, eager), two forwards;
* ``cudnn`` / ``fa3`` / ``fa4``: the attention kernel alone (``runtime/attention.py``);
* ``fa3+compile`` / ``fa4+compile``: plus regional ``torch.compile`` of the 40 blocks (``runtime/accel.py``);
* ``fa3+compile+batch``: plus the conditional and unconditional passes as one batch of 2;
* ``fa3+compile+batch+fused``: plus fused QKV / KV projections;
* ``fp8`` (lossy): the Linear layers of the blocks in float8 with per-row scales (torchao), on top
  of the fastest exact path.

Errors are relative L2 distances of the step output, against stock bf16 eager and against an fp32
eager reference (the same weights and inputs in fp32, TF32 off). A path is as exact as stock when
its error to fp32 is close to stock bf16's own. The FLOP floor is the step's FLOPs at the bf16
matmul ceiling measured in the same run.

    python bench/gpu/wan_step.py [--sizes 480p,720p] [--no-fp32]     # $OUT/wan_step_<sizes>.json when OUT is set
"""

from __future__ import annotations

import argparse
import gc

import torch

from _common import (A14B_EXPERT, SIZES, build, gib, matmul_peak, rel_l2, save, table, timed, wan_flops,
                     wan_inputs, wan_tokens)
from cinesynth_batch.runtime.accel import compile_blocks, quantize_fp8, uncompile_blocks
from cinesynth_batch.runtime.attention import resolve_attention, set_attention

GUIDANCE = 5.0


def cfg_sequential(model, x, t, ctx_c, ctx_u):
    c = model(x, t, ctx_c, return_dict=False)[0]
    u = model(x, t, ctx_u, return_dict=False)[0]
    return u + GUIDANCE * (c - u)


def cfg_batched(model, x, t, ctx_c, ctx_u):
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx_c, ctx_u]), return_dict=False)[0]
    c, u = out.chunk(2)
    return u + GUIDANCE * (c - u)


def uncompile(model) -> None:
    uncompile_blocks(model)
    torch._dynamo.reset()


def fuse(model, on: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fuse_projections") and m.__class__.__name__ == "WanAttention":
            m.fuse_projections() if on else m.unfuse_projections()


def to_dtype(model, dtype) -> None:
    """Change the weights' dtype through host RAM, so the device never holds both copies."""
    model.to("cpu")
    gc.collect()
    torch.cuda.empty_cache()
    model.to(dtype).to("cuda")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="480p")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 reference")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rows", default="stock,cudnn,fa3,fa3+compile,fa3+compile+batch,fa3+compile+batch+fused,"
                                      "fa4,fa4+compile,fp8")
    args = ap.parse_args()
    from diffusers import WanTransformer3DModel

    wanted = args.rows.split(",")
    peak = matmul_peak()
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "bf16_matmul_tflops": round(peak / 1e12, 1), "sizes": {}}
    fa3 = resolve_attention("fa3", "cuda", torch.bfloat16)
    best_attn = fa3.used if not fa3.reason else "cudnn"
    out["fa3"] = fa3.reason or "available"
    fa4 = resolve_attention("fa4", "cuda", torch.bfloat16)
    out["fa4"] = fa4.reason or "available"
    print(f"matmul ceiling {peak / 1e12:.1f} TFLOP/s; fa3: {out['fa3']}; fa4: {out['fa4']}", flush=True)
    model, init_s = build(lambda: WanTransformer3DModel(**A14B_EXPERT))
    out["params_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 2)

    refs: dict[str, tuple] = {}
    for size in args.sizes.split(","):
        h, w, f = SIZES[size]
        n = wan_tokens(h, w, f)
        floor = 2 * wan_flops(n) / peak
        x, t, ctx_c = wan_inputs(h, w, f, seed=1)
        _, _, ctx_u = wan_inputs(h, w, f, seed=2)
        reps = args.reps if n < 50000 else max(1, args.reps - 1)
        rows, outputs = [], {}

        def measure(name, attn, compiled, batched, fused):
            if name not in wanted:
                return
            uncompile(model)
            fuse(model, fused)
            set_attention(model, attn)
            if compiled:
                compile_blocks(model)
            step = cfg_batched if batched else cfg_sequential
            torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode():
                first = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                first[0].record()
                y = step(model, x, t, ctx_c, ctx_u)
                first[1].record()
                torch.cuda.synchronize()
                sec = timed(lambda: step(model, x, t, ctx_c, ctx_u), reps, warm=0)
            outputs[name] = y.float().cpu()
            rows.append({"path": name, "step_s": round(sec, 3), "first_call_s": round(first[0].elapsed_time(first[1]) / 1e3, 1),
                         "peak_gib": gib(torch.cuda.max_memory_allocated())})
            print(size, rows[-1], flush=True)

        measure("stock", "sdpa", False, False, False)
        measure("cudnn", "cudnn", False, False, False)
        measure(best_attn, best_attn, False, False, False) if best_attn == "fa3" else None
        measure("fa3+compile", best_attn, True, False, False)
        measure("fa3+compile+batch", best_attn, True, True, False)
        measure("fa3+compile+batch+fused", best_attn, True, True, True)
        if not fa4.reason:
            measure("fa4", "fa4", False, False, False)
            measure("fa4+compile", "fa4", True, False, False)
        uncompile(model)
        fuse(model, False)
        ref32 = None
        if not args.no_fp32:
            to_dtype(model, torch.float32)
            set_attention(model, "sdpa")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            with torch.inference_mode():
                ref32 = cfg_sequential(model, x.float(), t, ctx_c.float(), ctx_u.float()).cpu()
            to_dtype(model, torch.bfloat16)
        base = next((r["step_s"] for r in rows if r["path"] == "stock"), None)
        for r in rows:
            r["x_stock"] = round(base / r["step_s"], 3) if base else ""
            r["floor_frac"] = round(floor / r["step_s"], 3)
            r["err_vs_stock"] = f"{rel_l2(outputs[r['path']], outputs['stock']):.2e}" if "stock" in outputs else ""
            r["err_vs_fp32"] = f"{rel_l2(outputs[r['path']], ref32):.2e}" if ref32 is not None else ""
        out["sizes"][size] = {"tokens": n, "floor_step_s": round(floor, 3), "rows": rows}
        refs[size] = (outputs.get("stock"), ref32)
        del x, ctx_c, ctx_u
        torch.cuda.empty_cache()

    if "fp8" in wanted:
        layers = quantize_fp8(model)
        out["fp8_layers"] = layers
        for size in args.sizes.split(","):
            h, w, f = SIZES[size]
            x, t, ctx_c = wan_inputs(h, w, f, seed=1)
            _, _, ctx_u = wan_inputs(h, w, f, seed=2)
            entry = out["sizes"][size]
            set_attention(model, best_attn)
            uncompile(model)
            compile_blocks(model)
            torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode():
                y = cfg_batched(model, x, t, ctx_c, ctx_u)
                sec = timed(lambda: cfg_batched(model, x, t, ctx_c, ctx_u), args.reps, warm=0)
            base = next(r["step_s"] for r in entry["rows"] if r["path"] == "stock")
            row = {"path": f"fp8+{best_attn}+compile+batch (lossy)", "step_s": round(sec, 3),
                   "peak_gib": gib(torch.cuda.max_memory_allocated()), "x_stock": round(base / sec, 3),
                   "floor_frac": round(entry["floor_step_s"] / sec, 3)}
            stock, ref32 = refs[size]
            y = y.float().cpu()
            row["err_vs_stock"] = f"{rel_l2(y, stock):.2e}" if stock is not None else ""
            row["err_vs_fp32"] = f"{rel_l2(y, ref32):.2e}" if ref32 is not None else ""
            print(size, row, flush=True)
            entry["rows"].append(row)
            del x, ctx_c, ctx_u
    for size, entry in out["sizes"].items():
        print(f"\n{size}: {entry['tokens']} tokens, FLOP floor {entry['floor_step_s']} s per CFG step")
        print(table(entry["rows"], ["path", "step_s", "x_stock", "floor_frac", "peak_gib", "first_call_s",
                                    "err_vs_stock", "err_vs_fp32"]))
    save(f"wan_step_{args.sizes.replace(',', '_')}.json", out)


if __name__ == "__main__":
    main()
