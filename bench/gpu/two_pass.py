"""``video.two_pass`` against the one-resolution run, one Wan2.2-I2V-A14B first-last-frame clip,
in the same process: the FFLF Auto Loop V2 preset's sampling (8 Euler steps, CFG 1, shift 8).

* ``one_pass``: the 8 steps at the full size, the high-noise expert on steps 0-3 and the low-noise
  expert on 4-7 (the expert boundary set between them, as the two-pass run splits them);
* ``two_pass``: ``runtime/two_pass.py``: steps 0-3 on the high-noise expert at the base size
  (full / 2.5), the latent upscaled through the VAE (decode, resize, encode), steps 4-7 on the
  low-noise expert at the full size.

Both rows run through ``WanImageToVideoPipeline`` with random bf16 weights of the full-size
experts (``catalog/shapes/configs.py``), the Wan2.1 VAE, prompt embeddings given (no text
encoder) and the VAE decode of the output included. Weight values do not change the speed.
Columns: seconds (median of ``--reps`` after one warm-up), the ratio to ``one_pass``, the peak
GiB (``torch.cuda.max_memory_allocated``). Both experts stay on the GPU (57 GB in bf16): an
80 GB card is needed.

    python bench/gpu/two_pass.py [--size 720x1280] [--frames 33] [--reps 1]   # $OUT/two_pass.json
    python bench/gpu/two_pass.py --tiny       # the same code on the tiny models, on the CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
sys.path.insert(0, str(HERE.parents[1]))

from _common import TEXT_LEN, gib, save, table, timed_on  # noqa: E402

from cinesynth_batch.runtime.two_pass import TwoPassPlan, run_two_pass, schedule, split_boundary  # noqa: E402


def full_pipeline(device: torch.device):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, \
        WanTransformer3DModel

    from cinesynth_batch.catalog.shapes.configs import A14B_EXPERT, A14B_BOUNDARY_RATIO, WAN21_VAE

    def seeded(factory, seed, dtype):
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                return factory().eval()
        finally:
            torch.set_default_dtype(previous)

    high = seeded(lambda: WanTransformer3DModel(**A14B_EXPERT), 0, torch.bfloat16)
    low = seeded(lambda: WanTransformer3DModel(**A14B_EXPERT), 1, torch.bfloat16)
    vae = seeded(lambda: AutoencoderKLWan(**WAN21_VAE), 2, torch.float32)
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0), transformer=high,
                                   transformer_2=low, boundary_ratio=A14B_BOUNDARY_RATIO), 4096


def tiny_pipeline():
    import tempfile

    from diffusers import WanImageToVideoPipeline

    from cinesynth_batch.catalog.tiny.build import WAN_I2V, build_tiny

    root = Path(tempfile.mkdtemp(prefix="two-pass-tiny-"))
    pipe = WanImageToVideoPipeline.from_pretrained(build_tiny(root)[WAN_I2V])
    return pipe, pipe.transformer.config.text_dim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="720x1280", help="WIDTHxHEIGHT of the clip")
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--high-steps", type=int, default=4)
    ap.add_argument("--scale", type=float, default=2.5)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="the tiny models on the CPU (checks the script)")
    args = ap.parse_args()
    from diffusers import FlowMatchEulerDiscreteScheduler
    from PIL import Image

    from cinesynth_batch.spec.model import TwoPass

    if args.tiny:
        torch.set_flush_denormal(True)
        device = torch.device("cpu")
        pipe, text_dim = tiny_pipeline()
        args.size = "80x48" if args.size == "720x1280" else args.size
    else:
        device = torch.device("cuda")
        pipe, text_dim = full_pipeline(device)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=8.0)
    width, height = (int(v) for v in args.size.split("x"))
    base = TwoPass(scale=args.scale).base_size(width, height)
    plan = TwoPassPlan(steps=args.steps, high_steps=args.high_steps, base=base, full=(width, height))
    dtype = pipe.transformer.dtype
    g = torch.Generator("cpu").manual_seed(0)
    embeds = torch.randn(1, TEXT_LEN, text_dim, generator=g).to(device, dtype)
    first = Image.effect_noise((width, height), 64).convert("RGB")
    last = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    call = {"prompt_embeds": embeds, "guidance_scale": 1.0, "guidance_scale_2": 1.0}
    boundary = split_boundary(schedule(pipe.scheduler, args.steps)[0], args.high_steps,
                              pipe.scheduler.config.num_train_timesteps)

    def one_pass():
        pipe.register_to_config(boundary_ratio=boundary)
        return pipe(image=first, last_image=last, width=width, height=height, num_frames=args.frames,
                    num_inference_steps=args.steps, generator=torch.Generator("cpu").manual_seed(138),
                    output_type="np", **call).frames

    def two_pass():
        return run_two_pass(pipe, plan, lambda w, h: (first.resize((w, h)), last.resize((w, h))),
                            frames=args.frames, seed=138, call=call)

    rows = []
    with torch.inference_mode():
        for name, fn in (("one_pass", one_pass), ("two_pass", two_pass)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, frames = timed_on(fn, device, args.reps, warm=1)
            row = {"row": name, "s": round(seconds, 3), "frames": int(frames.shape[1]), "size": _size(frames)}
            if device.type == "cuda":
                row["peak_gib"] = gib(torch.cuda.max_memory_allocated())
            rows.append(row)
            print(row, flush=True)
    rows[1]["x_one_pass"] = round(rows[0]["s"] / rows[1]["s"], 3)
    print(table(rows, ["row", "s", "x_one_pass", "peak_gib", "frames", "size"]))
    save("two_pass.json", {"size": args.size, "base": f"{base[0]}x{base[1]}", "frames": args.frames,
                           "steps": args.steps, "high_steps": args.high_steps, "device": str(device),
                           "rows": rows})


def _size(frames) -> str:
    """WIDTHxHEIGHT of a batch of clips, channels last (numpy output) or first (``pt`` output)."""
    shape = tuple(frames.shape)
    height, width = shape[-3:-1] if shape[-1] == 3 else shape[-2:]
    return f"{width}x{height}"


if __name__ == "__main__":
    main()
