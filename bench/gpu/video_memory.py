"""Weight memory paths of the three video transformers on one CUDA GPU: fp8 storage and block
offloading (``runtime/memory.py``), against bf16 in the same process.

Models at full size with random bf16 weights built on the GPU (speed does not depend on weight
values; the error column is indicative only):

* ``i2v``: one Wan2.2-I2V-A14B expert (diffusers ``WanTransformer3DModel``), 480x832 x 81 frames;
* ``s2v``: Wan2.2-S2V-14B (ours), the 480p shape of ``s2v_step.py`` (832x512 generation size,
  80 frames, a full motion history);
* ``animate``: Wan2.2-Animate-14B (diffusers ``WanAnimateTransformer3DModel``), 720x1280 x 77
  frames like ``animate_step.py``.

Rows, each on a freshly built model (the conversions cannot be undone), one warm-up forward then
``--reps`` timed ones (median):

* ``bf16``: resident, the baseline;
* ``fp8``: fp8 storage, bf16 compute (``store_fp8``: diffusers' layerwise casting);
* ``swap20`` / ``swap40``: ``offload_blocks(model, "cuda", N)``, the first N blocks streamed;
* ``fp8_swap20`` / ``fp8_swap40``: both;
* ``offload_all``: ``offload_blocks(model, "cuda")`` (every block: the VRAM-budget path);
* ``diffusers_offload``: diffusers ``enable_group_offload(block_level, 1 block per group,
  use_stream)``, the stock way to offload every block, for comparison;
* ``torchao``: fp8 compute (torchao ``Float8DynamicActivationFloat8WeightConfig(PerRow)`` on the
  blocks' Linear layers, ``runtime/accel.py``) when torchao imports.

Columns: forward s, ratio to bf16, peak GiB during the timed forwards
(``torch.cuda.max_memory_allocated``), place s (the conversion: fp8 cast, pinning the streamed
blocks), relative error to the bf16 output. About 3 to 7 minutes per model on an H100.

    python bench/gpu/video_memory.py [--models i2v,s2v,animate] [--reps 1]   # $OUT/video_memory.json
    python bench/gpu/video_memory.py --tiny      # the same code on the tiny models, on the CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from _common import A14B_EXPERT, TEXT_LEN, gib, sync as _sync, timed_on as _timed  # noqa: E402

from cinesynth_batch.runtime.accel import quantize_fp8  # noqa: E402
from cinesynth_batch.runtime.memory import fp8_targets, offload_blocks, store_fp8  # noqa: E402

MODELS = ("i2v", "s2v", "animate")
ROWS = ("bf16", "fp8", "swap20", "swap40", "fp8_swap20", "fp8_swap40", "offload_all", "diffusers_offload",
        "torchao")


@dataclass
class Bench:
    """One model: how to build it on ``device`` and its forward at the bench shape."""

    name: str
    build: Callable[[], Any]
    forward: Callable[[Any], torch.Tensor]
    shape: str


def _seeded(factory, device: torch.device):
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = factory().eval()
    finally:
        torch.set_default_dtype(previous)
    return model.requires_grad_(False)


def _nonzero(model):
    """Random weights where the default init leaves zeros (S2V zeroes its output head and its
    zero-init projections), so that the output and its error to bf16 mean something."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32).to(p.dtype) * 0.02)
    return model


def _rnd(g, device, *shape):
    return torch.randn(*shape, generator=g).to(device=device, dtype=torch.bfloat16)


def i2v_bench(device: torch.device, tiny: bool) -> Bench:
    from diffusers import WanTransformer3DModel

    config = dict(A14B_EXPERT)
    h, w, f, text = 480, 832, 81, TEXT_LEN
    if tiny:
        config.update(num_layers=2, num_attention_heads=2, attention_head_dim=12, ffn_dim=32, text_dim=16)
        h, w, f, text = 32, 32, 9, 8
    g = torch.Generator().manual_seed(1)
    lf = (f - 1) // 4 + 1
    x, ctx = _rnd(g, device, 1, 36, lf, h // 8, w // 8), _rnd(g, device, 1, text, config["text_dim"])
    t = torch.tensor([500.0], device=device)
    return Bench("Wan2.2-I2V-A14B expert", lambda: _seeded(lambda: WanTransformer3DModel(**config), device),
                 lambda m: m(x, t, ctx, return_dict=False)[0], f"{h}x{w} x {f}")


def s2v_bench(device: torch.device, tiny: bool) -> Bench:
    from cinesynth_batch.models.s2v.transformer import S2V_14B_CONFIG, S2V_14B_MOTION_FRAMES, WanS2VTransformer3DModel

    config = dict(S2V_14B_CONFIG)
    gh, gw, frames, text = int(math.ceil(480 / 64) * 64), int(math.ceil(832 / 64) * 64), 80, TEXT_LEN
    if tiny:
        from cinesynth_batch.catalog.tiny.s2v import tiny_s2v_config

        config, gh, gw, frames, text = tiny_s2v_config(), 64, 64, 8, 7
    mp, ml = S2V_14B_MOTION_FRAMES
    lf = (frames + 3 + mp) // 4 - ml                                   # as s2v_step.py: 20 latent frames at 80
    lh, lw = gh // 8, gw // 8
    g = torch.Generator().manual_seed(1)
    args = dict(hidden_states=_rnd(g, device, 1, config["in_dim"], lf, lh, lw),
                timestep=torch.tensor([500.0], device=device),
                encoder_hidden_states=_rnd(g, device, 1, text, config["text_dim"]),
                ref_latents=_rnd(g, device, 1, config["in_dim"], 1, lh, lw),
                motion_latents=_rnd(g, device, 1, config["in_dim"], ml, lh, lw),
                audio_features=_rnd(g, device, 1, config["num_audio_layers"], config["audio_dim"], frames),
                motion_frames=(mp, ml), drop_motion_frames=False)
    return Bench("Wan2.2-S2V-14B", lambda: _nonzero(_seeded(lambda: WanS2VTransformer3DModel(**config), device)),
                 lambda m: m(**args).sample, f"{gh}x{gw} x {frames}")


def animate_bench(device: torch.device, tiny: bool) -> Bench:
    import animate_step

    if tiny:
        from cinesynth_batch.catalog.tiny.animate import tiny_transformer_config

        config, (h, w, f), text, image = tiny_transformer_config(), (64, 64, 17), 16, 17
    else:
        config, (h, w, f), text, image = dict(animate_step.ANIMATE_14B), (720, 1280, 77), 512, 257
    x = animate_step.inputs(config, h, w, f, device, text, image)
    return Bench("Wan2.2-Animate-14B", lambda: animate_step.build(config, device), lambda m: m(**x)[0],
                 f"{h}x{w} x {f}")


BENCHES = {"i2v": i2v_bench, "s2v": s2v_bench, "animate": animate_bench}


def _torchao_ok() -> str | None:
    """None when torchao's fp8 compute can run here, else why not."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "torchao is not installed"
    if not torch.cuda.is_available():
        return "fp8 compute needs a CUDA device"
    if torch.cuda.get_device_capability() < (8, 9):
        return "fp8 compute needs compute capability 8.9"
    return None


def conversions(device: torch.device) -> dict[str, Callable[[Any], str]]:
    """Row key -> what turns a freshly built bf16 model into that row's placement (returns a note)."""
    dev = str(device)

    def swap(n: int, fp8: bool):
        def convert(model) -> str:
            note = f"fp8 layers {store_fp8(model, torch.bfloat16).layers}, " if fp8 else ""
            done = offload_blocks(model, dev, n)
            return note + f"blocks {done.count}/{done.total} streamed"
        return convert

    def diffusers_offload(model) -> str:
        streamed = device.type == "cuda"
        model.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1, use_stream=streamed,
                                   record_stream=streamed, low_cpu_mem_usage=False)
        return "enable_group_offload(block_level, 1 per group" + (", use_stream)" if streamed else ")")

    return {
        "bf16": lambda model: "",
        "fp8": lambda model: f"fp8 layers {store_fp8(model, torch.bfloat16).layers}",
        "swap20": swap(20, False),
        "swap40": swap(40, False),
        "fp8_swap20": swap(20, True),
        "fp8_swap40": swap(40, True),
        "offload_all": swap(None, False),
        "diffusers_offload": diffusers_offload,
        "torchao": lambda model: f"fp8 compute layers {quantize_fp8(model)}",
    }


LABELS = {
    "bf16": "bf16 (resident)",
    "fp8": "fp8 storage, bf16 compute",
    "swap20": "block_swap 20",
    "swap40": "block_swap 40",
    "fp8_swap20": "fp8 storage + block_swap 20",
    "fp8_swap40": "fp8 storage + block_swap 40",
    "offload_all": "all blocks offloaded (offload_blocks)",
    "diffusers_offload": "diffusers enable_group_offload",
    "torchao": "fp8 compute (torchao)",
}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_model(name: str, device: torch.device, tiny: bool, reps: int, warm: int, rows: list[str]) -> dict:
    bench = BENCHES[name](device, tiny)
    convert = conversions(device)
    skip_torchao = _torchao_ok()
    out: dict[str, Any] = {"model": bench.name, "shape": bench.shape, "rows": []}
    ref: dict[str, Any] = {}
    for key in rows:
        label = LABELS[key]
        if key == "torchao" and skip_torchao:
            out["rows"].append({"key": key, "path": label, "skipped": skip_torchao})
            print(f"[{name}] {label}: skipped ({skip_torchao})", flush=True)
            continue
        t_row = time.perf_counter()
        model = None
        try:
            t0 = time.perf_counter()
            model = bench.build()
            build_s = time.perf_counter() - t0
            if "params_b" not in out:
                out["params_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
                out["fp8_layers"] = len(fp8_targets(model))
            _sync(device)
            t0 = time.perf_counter()
            note = convert[key](model)
            _sync(device)
            place_s = time.perf_counter() - t0
            _free(device)
            with torch.inference_mode():
                sec, y = _timed(lambda: bench.forward(model), device, reps, warm)
            y = y.float().cpu()
            peak = gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
            if key == "bf16":
                ref["y"], ref["sec"] = y, sec
            row = {"key": key, "path": label, "forward_s": round(sec, 3), "peak_gib": peak,
                   "place_s": round(place_s, 2), "build_s": round(build_s, 1), "note": note}
            if ref:
                row["ratio_to_bf16"] = round(sec / ref["sec"], 3)
                row["rel_err_vs_bf16"] = float((y - ref["y"]).norm() / ref["y"].norm())
        except Exception as exc:  # a failing path is reported, the others still run
            row = {"key": key, "path": label, "error": f"{type(exc).__name__}: {exc}"[:500]}
        model = None
        _free(device)
        row["row_s"] = round(time.perf_counter() - t_row, 1)
        out["rows"].append(row)
        print(f"[{name}] {json.dumps(row)}", flush=True)
    return out


def print_table(result: dict) -> None:
    for group in result["models"]:
        print(f"\n{group['model']} ({group.get('params_b', '?')} B params), {group['shape']}, one forward")
        print(f"{'path':42} {'forward s':>9} {'x bf16':>7} {'peak GiB':>9} {'place s':>8} {'rel err':>8}")
        for r in group["rows"]:
            if "error" in r or "skipped" in r:
                print(f"{r['path']:42} {'failed: ' + r['error'] if 'error' in r else 'skipped: ' + r['skipped']}")
                continue
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
            print(f"{r['path']:42} {r['forward_s']:9.3f} {r.get('ratio_to_bf16', 1.0):7.3f} {peak:>9} "
                  f"{r['place_s']:8.2f} {r.get('rel_err_vs_bf16', 0.0):8.4f}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: i2v, s2v, animate")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated row keys (bf16 always runs first)")
    ap.add_argument("--reps", type=int, default=1, help="timed forwards per row (median)")
    ap.add_argument("--warm", type=int, default=1, help="untimed forwards per row first")
    ap.add_argument("--tiny", action="store_true", help="the tiny models on the CPU (checks the code paths)")
    args = ap.parse_args(argv)

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in BENCHES] + [r for r in args.rows.split(",") if r and r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown model or row: {', '.join(unknown)}")
    rows = ["bf16"] + [r for r in args.rows.split(",") if r and r != "bf16"]
    if args.tiny:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device (or --tiny)")
    else:
        device = torch.device("cuda")
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
        "reps": args.reps, "warm": args.warm, "models": []}
    for name in models:
        t0 = time.perf_counter()
        result["models"].append(run_model(name, device, args.tiny, max(1, args.reps), args.warm, rows))
        result["models"][-1]["group_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] done in {result['models'][-1]['group_s']} s", flush=True)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "video_memory.json").write_text(json.dumps(result, indent=1))
    print_table(result)
    return result


if __name__ == "__main__":
    main()
