"""One denoising forward of the full-size Wan2.2-S2V-14B transformer (random weights) beside the
Wan2.2-I2V-A14B expert (stock diffusers), in one process, on one GPU.

Speed does not depend on weight values, so random bf16 weights give true timings. The I2V
expert is the baseline; the S2V forward is reported beside it with the ratio. S2V runs at the
renderer's generation size (the request rounded up to multiples of 64) with a full motion
history (a second segment), which is its steady-state cost.

    python bench/gpu/s2v_step.py            # prints a table; writes $OUT/s2v_step.json if set
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import A14B_EXPERT, build, timed  # noqa: E402


def up64(v: int) -> int:
    return int(math.ceil(v / 64) * 64)


def main() -> None:
    from diffusers import WanTransformer3DModel

    from cinesynth_batch.models.s2v.transformer import S2V_14B_CONFIG, WanS2VTransformer3DModel

    out: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": []}
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    out["bf16_matmul_tflops"] = round(2 * n**3 / timed(lambda: a @ b, 20, 5) / 1e12, 1)
    a = b = None
    sizes = {"480x832": (480, 832), "720x1280": (720, 1280)}
    txt = 512

    i2v, _ = build(lambda: WanTransformer3DModel(**A14B_EXPERT))
    base: dict[str, float] = {}
    for name, (h, w) in sizes.items():
        lf, lh, lw = 21, h // 8, w // 8
        x = torch.randn(1, 36, lf, lh, lw, device="cuda", dtype=torch.bfloat16)
        ctx = torch.randn(1, txt, 4096, device="cuda", dtype=torch.bfloat16)
        ts = torch.tensor([500.0], device="cuda")
        with torch.inference_mode():
            sec = timed(lambda: i2v(x, ts, ctx, return_dict=False), 2)
        base[name] = sec
        row = {"model": "Wan2.2-I2V-A14B expert (diffusers, eager)", "size": name, "frames": 81,
               "gen_size": f"{w}x{h}", "tokens": lf * (lh // 2) * (lw // 2), "forward_s": round(sec, 3),
               "cfg_step_s": round(2 * sec, 2), "ratio_to_i2v": 1.0}
        out["rows"].append(row)
        print(row, flush=True)
    out["i2v_params_b"] = round(sum(p.numel() for p in i2v.parameters()) / 1e9, 2)
    out["i2v_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    i2v = None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()

    s2v, s2v_init = build(lambda: WanS2VTransformer3DModel(**S2V_14B_CONFIG))
    out["s2v_params_b"] = round(sum(p.numel() for p in s2v.parameters()) / 1e9, 2)
    out["s2v_init_s"] = round(s2v_init, 1)
    for name, (h, w) in sizes.items():
        gh, gw = up64(h), up64(w)
        lh, lw, lf = gh // 8, gw // 8, (80 + 3 + 73) // 4 - 19
        dt = torch.bfloat16
        args = dict(
            hidden_states=torch.randn(1, 16, lf, lh, lw, device="cuda", dtype=dt),
            timestep=torch.tensor([500.0], device="cuda"),
            encoder_hidden_states=torch.randn(1, txt, 4096, device="cuda", dtype=dt),
            ref_latents=torch.randn(1, 16, 1, lh, lw, device="cuda", dtype=dt),
            motion_latents=torch.randn(1, 16, 19, lh, lw, device="cuda", dtype=dt),
            audio_features=torch.randn(1, 25, 1024, 80, device="cuda", dtype=dt),
            motion_frames=(73, 19), drop_motion_frames=False)
        with torch.inference_mode():
            sec = timed(lambda: s2v(**args), 2)
        row = {"model": "Wan2.2-S2V-14B (ours, eager SDPA)", "size": name, "frames": 80,
               "gen_size": f"{gw}x{gh}", "tokens": lf * (lh // 2) * (lw // 2), "forward_s": round(sec, 3),
               "cfg_step_s": round(2 * sec, 2), "ratio_to_i2v": round(sec / base[name], 2)}
        out["rows"].append(row)
        print(row, flush=True)
    out["s2v_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)

    print(f"\n{out['gpu']}, torch {out['torch']}, bf16 matmul {out['bf16_matmul_tflops']} TFLOP/s")
    print(f"{'model':45} {'request':9} {'gen':9} {'tokens':>7} {'fwd s':>7} {'CFG step s':>10} {'x I2V':>6}")
    for r in out["rows"]:
        print(f"{r['model']:45} {r['size']:9} {r['gen_size']:9} {r['tokens']:7d} {r['forward_s']:7.3f} "
              f"{r['cfg_step_s']:10.2f} {r['ratio_to_i2v']:6.2f}")
    print(f"params: I2V expert {out['i2v_params_b']} B, S2V {out['s2v_params_b']} B; "
          f"peak GiB: I2V {out['i2v_peak_gib']}, S2V {out['s2v_peak_gib']}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "s2v_step.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
