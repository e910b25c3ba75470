"""The other stages' models at full size (random bf16 weights), one line each: stock eager against
the renderer's default fast path (attention ``auto`` + regional compile) in the same process.

* FLUX.2-klein-9B transformer, one step at 720x1280 (3,600 image tokens + 512 text tokens);
* Wan VAE (2.1, what A14B uses): encode of an 81-frame 480p video and decode of its latent, in fp32
  and in bf16;
* RRDBNet x2 (Real-ESRGAN x2plus shape) on a 720x1280 image;
* Wan2.2-S2V-14B (ours) forward at 480p, 80 frames with a full motion history;
* Wan2.2-Animate-14B forward at 720x1280, 77 frames (CFG 1 in the preset: one forward a step).

    python bench/gpu/stages.py [flux,vae,rrdbnet,s2v,animate]    # $OUT/stages.json when OUT is set
"""

from __future__ import annotations

import gc
import sys

import torch

from _common import build, gib, save, table, timed
from cinesynth_batch.runtime.accel import compile_blocks
from cinesynth_batch.runtime.attention import resolve_attention, set_attention
from cinesynth_batch.catalog.shapes.configs import FLUX2_KLEIN_9B, RRDBNET_X2PLUS, WAN21_VAE
from wan_step import uncompile


def _rows_for(name, model, call, compile_ok=True, reps=2):
    rows = []
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        stock = timed(call, reps)
    rows.append({"model": name, "path": "stock eager", "s": round(stock, 3),
                 "peak_gib": gib(torch.cuda.max_memory_allocated())})
    if compile_ok:
        choice = resolve_attention("auto", "cuda", torch.bfloat16)
        set_attention(model, choice.used)
        compile_blocks(model)
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            fast = timed(call, reps, warm=1)
        rows.append({"model": name, "path": f"{choice.used}+compile", "s": round(fast, 3),
                     "x_stock": round(stock / fast, 3), "peak_gib": gib(torch.cuda.max_memory_allocated())})
        uncompile(model)
    for r in rows:
        print(r, flush=True)
    return rows


def flux():
    from diffusers import Flux2Transformer2DModel

    model, _ = build(lambda: Flux2Transformer2DModel(**FLUX2_KLEIN_9B))
    n_img, n_txt = (720 // 16) * (1280 // 16), 512
    img_ids = torch.zeros(1, n_img, 4, device="cuda", dtype=torch.long)
    rows_, cols_ = torch.meshgrid(torch.arange(720 // 16), torch.arange(1280 // 16), indexing="ij")
    img_ids[0, :, 1], img_ids[0, :, 2] = rows_.flatten().cuda(), cols_.flatten().cuda()
    txt_ids = torch.zeros(1, n_txt, 4, device="cuda", dtype=torch.long)
    txt_ids[0, :, 3] = torch.arange(n_txt, device="cuda")
    args = dict(hidden_states=torch.randn(1, n_img, 128, device="cuda", dtype=torch.bfloat16),
                encoder_hidden_states=torch.randn(1, n_txt, 12288, device="cuda", dtype=torch.bfloat16),
                timestep=torch.tensor([0.5], device="cuda"), img_ids=img_ids, txt_ids=txt_ids,
                return_dict=False)
    params = round(sum(p.numel() for p in model.parameters()) / 1e9, 2)
    return _rows_for(f"FLUX.2-klein-9B step 720x1280 ({params} B)", model, lambda: model(**args), reps=5)


def vae():
    """Wan VAE encode of an 81-frame 480p conditioning video and decode of its latent: fp32 (what
    diffusers' Wan examples load), bf16 (what the renderer loads on CUDA), and bf16 with cuDNN's
    convolution autotuner on; errors against fp32 on the same inputs."""
    from diffusers import AutoencoderKLWan

    model, _ = build(lambda: AutoencoderKLWan(**WAN21_VAE), dtype=torch.float32)
    g = torch.Generator("cuda").manual_seed(5)
    video = torch.rand(1, 3, 81, 480, 832, device="cuda", generator=g) * 2 - 1
    z = torch.randn(1, 16, 21, 60, 104, device="cuda", generator=g)
    rows, ref = [], {}
    for label, dtype, bench in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, False),
                                ("bf16 + cudnn.benchmark", torch.bfloat16, True)):
        model.to(dtype)
        torch.backends.cudnn.benchmark = bench
        for part, call in (("encode", lambda: model.encode(video.to(dtype)).latent_dist.mode()),
                           ("decode", lambda: model.decode(z.to(dtype), return_dict=False)[0])):
            torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode():
                y = call().float()
                sec = timed(call, 1, warm=1 if bench else 0)
            ref.setdefault(part, (y, sec))
            rows.append({"model": f"Wan VAE {part} 480p 81f", "path": label, "s": round(sec, 3),
                         "x_stock": round(ref[part][1] / sec, 3),
                         "peak_gib": gib(torch.cuda.max_memory_allocated()),
                         "err_vs_fp32": f"{float((y - ref[part][0]).norm() / ref[part][0].norm()):.2e}"})
            print(rows[-1], flush=True)
            del y
    torch.backends.cudnn.benchmark = False
    return rows


def rrdbnet():
    from cinesynth_batch.models.rrdbnet import RRDBNet

    model, _ = build(lambda: RRDBNet(**RRDBNET_X2PLUS))
    x = torch.rand(1, 3, 720, 1280, device="cuda", dtype=torch.bfloat16)
    return _rows_for("RRDBNet x2 on 720x1280", model, lambda: model(x), compile_ok=False, reps=3)


def s2v():
    from cinesynth_batch.models.s2v.transformer import S2V_14B_CONFIG, WanS2VTransformer3DModel

    model, _ = build(lambda: WanS2VTransformer3DModel(**S2V_14B_CONFIG))
    lh, lw, lf, dt = 512 // 8, 832 // 8, (80 + 3 + 73) // 4 - 19, torch.bfloat16
    args = dict(hidden_states=torch.randn(1, 16, lf, lh, lw, device="cuda", dtype=dt),
                timestep=torch.tensor([500.0], device="cuda"),
                encoder_hidden_states=torch.randn(1, 512, 4096, device="cuda", dtype=dt),
                ref_latents=torch.randn(1, 16, 1, lh, lw, device="cuda", dtype=dt),
                motion_latents=torch.randn(1, 16, 19, lh, lw, device="cuda", dtype=dt),
                audio_features=torch.randn(1, 25, 1024, 80, device="cuda", dtype=dt),
                motion_frames=(73, 19), drop_motion_frames=False)
    return _rows_for("Wan2.2-S2V-14B forward 832x512 80f", model, lambda: model(**args))


def animate():
    from diffusers import WanAnimateTransformer3DModel

    from animate_step import ANIMATE_14B, inputs

    model, _ = build(lambda: WanAnimateTransformer3DModel(**ANIMATE_14B))
    args = inputs(ANIMATE_14B, 720, 1280, 77, torch.device("cuda"), 512, 257)
    return _rows_for("Wan2.2-Animate-14B forward 720x1280 77f", model, lambda: model(**args), reps=1)


def main() -> None:
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else ["flux", "vae", "rrdbnet", "s2v", "animate"]
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": []}
    for name in names:
        try:
            out["rows"] += globals()[name]()
        except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others' lines
            out["rows"].append({"model": name, "path": "failed", "s": repr(exc)[:200]})
            print(name, "failed:", repr(exc)[:500], flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    print(table(out["rows"], ["model", "path", "s", "x_stock", "peak_gib", "err_vs_fp32"]))
    save("stages.json", out)


if __name__ == "__main__":
    main()
