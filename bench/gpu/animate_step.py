"""One denoising forward of the full-size Wan2.2-Animate-14B transformer (random bf16 weights) at
720x1280 / 77 frames on one CUDA GPU: bf16 against the Change Character preset's fp8 path.

Speed does not depend on weight values, so random weights give true timings (the error column
is indicative only: random weights are not distributed like trained ones). Rows, all in one process:

* ``bf16``: the renderer's runtime placement (``runtime/animate.py``) with precision bf16;
* ``fp8_e4m3fn``: the same with ``quantize: fp8_e4m3fn`` (weights stored as fp8, upcast per layer:
  diffusers' layerwise casting, ``runtime/memory.py``);
* ``fp8_e4m3fn + block_swap 20``: the preset's placement (blocks 0-19 streamed from pinned RAM);
* ``bf16 + block_swap 20``: the swap alone;
* with ``sageattn`` as well, when diffusers can use SageAttention here;
* ``diffusers enable_layerwise_casting``: stock diffusers fp8 storage on a fresh bf16 copy;
* ``torchao float8``: torchao's dynamic float8 (fp8 matmuls, per-row scales) on the same layers,
  when ``torchao`` imports.

The model is WanAnimateTransformer3DModel with the official Animate-14B shape (Wan2.2
``wan/configs/wan_animate_14B.py``: dim 5120 = 40 heads x 128, ffn 13824, 40 layers, freq 256,
text 4096, in 36 / out 16, a face adapter every 5 blocks, motion encoder 512 / 20 / 512, face
encoder 4 heads; the official cross-attention has ``k_img`` / ``v_img`` on 1280-wide CLIP
features, which diffusers calls ``image_dim=1280, added_kv_proj_dim=5120``). Like
``from_pretrained``, the modules diffusers keeps in fp32 are fp32. Timings use CUDA events.

    python bench/gpu/animate_step.py                 # table; $OUT/animate_step.json when OUT is set
    python bench/gpu/animate_step.py --tiny          # the same code on the tiny config, on the CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cinesynth_batch.runtime.animate import (  # noqa: E402
    AnimateRuntime,
    RuntimeSettings,
    resolve_runtime,
)
from cinesynth_batch.runtime.memory import fp8_targets  # noqa: E402

#: diffusers ``WanAnimateTransformer3DModel`` arguments for the official Animate-14B checkpoint (the
#: catalog's, the configuration profile ``shapes`` builds).
from cinesynth_batch.catalog.shapes.configs import ANIMATE_14B  # noqa: E402
from _common import sync, timed_on as timed  # noqa: E402


def keeps_fp32(model, name: str) -> bool:
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    return any(k in name.split(".") for k in keep)


def build(config: dict, device: torch.device):
    """Random weights, seeded (the same weights every call), bf16 with diffusers' fp32 modules in fp32."""
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = WanAnimateTransformer3DModel(**config).eval()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_floating_point() and keeps_fp32(model, name):
                tensor.data = tensor.data.float()
    model.requires_grad_(False)
    return model


def inputs(config: dict, height: int, width: int, frames: int, device: torch.device, text_len: int,
           image_tokens: int) -> dict:
    """The transformer's forward arguments for one window of ``frames`` frames at ``height``x``width``
    (what ``WanAnimatePipeline`` passes: noisy latents + reference/conditioning latents on the
    channels, one extra latent frame for the reference; pose latents; face crops in pixels)."""
    if (frames - 1) % 4 or height % 16 or width % 16:
        raise ValueError("frames must be 4k+1 and height/width multiples of 16")
    lat_t, lat_h, lat_w = (frames - 1) // 4 + 1, height // 8, width // 8
    g = torch.Generator(device="cpu").manual_seed(1)
    dt = torch.bfloat16

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    size = config["motion_encoder_size"]
    return dict(
        hidden_states=rnd(1, config["in_channels"], lat_t + 1, lat_h, lat_w),
        timestep=torch.tensor([500.0], device=device),
        encoder_hidden_states=rnd(1, text_len, config["text_dim"]),
        encoder_hidden_states_image=rnd(1, image_tokens, config["image_dim"]),
        pose_hidden_states=rnd(1, config["latent_channels"], lat_t, lat_h, lat_w),
        face_pixel_values=rnd(1, 3, frames, size, size).clamp(-1, 1),
        return_dict=False,
    )


def tokens(config: dict, height: int, width: int, frames: int) -> int:
    p_t, p_h, p_w = config["patch_size"]
    return ((frames - 1) // 4 + 2) // p_t * (height // 8 // p_h) * (width // 8 // p_w)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def torchao_quantizer():
    """(quantize_, config factory, description) or None when torchao does not import."""
    try:
        from torchao.quantization import quantize_
    except Exception:
        return None
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        return quantize_, lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), \
            "Float8DynamicActivationFloat8WeightConfig(PerRow)"
    except Exception:
        pass
    try:
        from torchao.quantization import float8_dynamic_activation_float8_weight

        return quantize_, float8_dynamic_activation_float8_weight, "float8_dynamic_activation_float8_weight()"
    except Exception:
        return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny config on the CPU (checks shapes and code paths)")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--swap", type=int, default=20, help="blocks swapped in the preset row")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--warm", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated row keys to run")
    args = ap.parse_args(argv)

    if args.tiny:
        from cinesynth_batch.catalog.tiny.animate import tiny_transformer_config

        config, device = tiny_transformer_config(), torch.device("cpu")
        height, width, frames = args.height or 64, args.width or 64, args.frames or 17
        text_len, image_tokens = 16, 17
        swap = min(args.swap, config["num_layers"])
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs a CUDA device (or --tiny)")
        config, device = dict(ANIMATE_14B), torch.device("cuda")
        height, width, frames = args.height or 720, args.width or 1280, args.frames or 77
        text_len, image_tokens = 512, 257
        swap = args.swap
    out: dict = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "size": f"{width}x{height}", "frames": frames, "tokens": tokens(config, height, width, frames),
        "reps": args.reps, "rows": [],
    }
    only = set(args.only.split(",")) if args.only else None
    x = inputs(config, height, width, frames, device, text_len, image_tokens)
    ref: dict = {}

    def record(key: str, label: str, model, place_s: float | None, note: str = "") -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            sec, y = timed(lambda: model(**x)[0], device, max(1, args.reps), args.warm)
            y = y.float()
        row = {"key": key, "path": label, "forward_s": round(sec, 3), "place_s": None if place_s is None else
               round(place_s, 2), "peak_gib": peak_gib(device), "note": note}
        if "y" not in ref:
            ref["y"], ref["sec"] = y, sec
        row["ratio_to_bf16"] = round(sec / ref["sec"], 3)
        row["rel_err_vs_bf16"] = float((y - ref["y"]).norm() / ref["y"].norm())
        out["rows"].append(row)
        print(json.dumps(row), flush=True)

    def failed(key: str, label: str, exc: BaseException) -> None:
        row = {"key": key, "path": label, "error": f"{type(exc).__name__}: {exc}"[:500]}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)

    # --- the renderer's runtime placements, from one rest copy in host RAM
    t0 = time.perf_counter()
    model = build(config, device)
    out["params_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    out["fp8_layers"] = len(fp8_targets(model))
    model.to("cpu")
    out["build_s"] = round(time.perf_counter() - t0, 1)
    free(device)
    holder = SimpleNamespace(transformer=model)
    runtime = AnimateRuntime.of(holder)
    runtime_rows = [
        ("bf16", "bf16 (runtime placement)", RuntimeSettings("bf16")),
        ("fp8", "fp8_e4m3fn storage, bf16 compute (runtime placement)", RuntimeSettings("bf16", quantize="fp8_e4m3fn")),
        ("fp8_swap", f"preset: fp8_e4m3fn + block_swap {swap}/{config['num_layers']}",
         RuntimeSettings("bf16", quantize="fp8_e4m3fn", block_swap=swap)),
        ("bf16_swap", f"bf16 + block_swap {swap}/{config['num_layers']}", RuntimeSettings("bf16", block_swap=swap)),
    ]
    sage, _ = resolve_runtime(RuntimeSettings("bf16", quantize="fp8_e4m3fn", attention="sageattn"), str(device),
                              warn=False)
    if sage.attention == "sageattn":
        runtime_rows.insert(3, ("fp8_sage", "fp8_e4m3fn + sageattn", sage))
        runtime_rows.insert(4, ("fp8_swap_sage", f"preset: fp8_e4m3fn + sageattn + block_swap {swap}",
                                replace(sage, block_swap=swap)))
    else:
        out["sageattn"] = "not usable here: rows skipped"
    for key, label, settings in runtime_rows:
        if only and key not in only and key != "bf16":
            continue
        free(device)
        try:
            t0 = time.perf_counter()
            runtime.apply(settings, str(device))
            sync(device)
            place = time.perf_counter() - t0
            rep = runtime.report()
            note = f"fp8 layers {rep['fp8_layers']}, swapped blocks {rep['swapped_blocks'] or '-'}"
            record(key, label, model, place, note)
        except Exception as exc:  # a failing path is reported, the others still run
            failed(key, label, exc)
        finally:
            runtime.release()
    targets = {name for name, _ in fp8_targets(model)}
    holder = runtime = model = None
    free(device)

    def fresh_copy_row(key: str, label: str, convert) -> None:
        """Time ``convert`` on a freshly built copy (these conversions cannot be undone), then its forward."""
        try:
            model = build(config, device)
            t0 = time.perf_counter()
            convert(model)
            sync(device)
            record(key, label, model, time.perf_counter() - t0)
        except Exception as exc:  # a failing path is reported, the others still run
            failed(key, label, exc)
        model = None
        free(device)

    # --- stock diffusers layerwise casting
    if not only or "diffusers_lc" in only:
        fresh_copy_row("diffusers_lc", "diffusers enable_layerwise_casting(float8_e4m3fn, bf16)",
                       lambda m: m.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                                            compute_dtype=torch.bfloat16))

    # --- torchao float8 (fp8 matmuls) on the same layers, when torchao imports
    quant = torchao_quantizer()
    if quant is None:
        out["torchao"] = "not importable: row skipped"
        print("torchao: not importable, row skipped", flush=True)
    elif not only or "torchao" in only:
        quantize_, make_config, what = quant
        out["torchao"] = __import__("torchao").__version__
        fresh_copy_row("torchao", f"torchao {what}",
                       lambda m: quantize_(m, make_config(),
                                           filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and fqn in targets))

    print(f"\n{out['device']}, torch {out['torch']}, diffusers {out['diffusers']}: WanAnimateTransformer3DModel "
          f"{out['params_b']} B params, {out['size']} x {frames} frames = {out['tokens']} tokens, one forward")
    print(f"{'path':60} {'seconds':>8} {'x bf16':>7} {'peak GiB':>9} {'place s':>8} {'rel err':>8}")
    for r in out["rows"]:
        if "error" in r:
            print(f"{r['path']:60} failed: {r['error']}")
            continue
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{r['path']:60} {r['forward_s']:8.3f} {r['ratio_to_bf16']:7.3f} {peak:>9} "
              f"{r['place_s'] if r['place_s'] is not None else '-':>8} {r['rel_err_vs_bf16']:8.4f}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "animate_step.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
