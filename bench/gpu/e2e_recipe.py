"""One 480p 81-frame clip end to end through a full-size Wan2.2-I2V-A14B pipeline (random bf16
weights: two 14.3 B experts, the 5.7 B UMT5-XXL text encoder, the Wan VAE) with the seed's
production recipe: 14 steps, CFG 1 (one forward a step), step cache 0.15 (TeaCache); the distill
LoRA is fused into the weights in production and costs nothing at run time, so it is left out.

Rows, one process: stock diffusers (eager SDPA, bf16 transformers, the VAE in fp32 as in diffusers'
Wan examples); the renderer's lossless defaults (attention ``auto`` + regional compile, and the VAE
in bf16 like every component the renderer loads on CUDA); the same with TeaCache 0.15; fp8
compute (lossy) with and without TeaCache. A row's time is one whole ``pipe(...)`` call (image
encode, 14 steps, VAE decode) plus the prompt encoding, after a 2-step warm-up call that pays the
one-off compile. Each row also splits its time into the VAE's encode and decode, the expert
forwards, and the rest, and says how many expert forwards fit in the 25 s goal beside the fixed
part. The TeaCache skip rate on random weights says nothing about trained ones: it is printed,
not tuned.

    python bench/gpu/e2e_recipe.py        # $OUT/e2e_recipe.json when OUT is set
"""

from __future__ import annotations

import time

import torch

from _common import A14B_EXPERT, build, gib, save, table
from cinesynth_batch.runtime.accel import SpeedSettings, prepare_transformer, quantize_fp8, compile_blocks
from cinesynth_batch.runtime.teacache import TeaCacheConfig, apply_teacache_to_pipeline
from cinesynth_batch.catalog.tiny.parts import t5_tokenizer
from wan_step import uncompile

H, W, F, STEPS = 480, 832, 81, 14
GOAL_S = 25.0


class PartTimer:
    """Seconds spent in the wrapped callables (CUDA-synchronised at entry and exit)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, owner, attr: str, label: str):
        inner = getattr(owner, attr)

        def timed_call(*args, **kwargs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                torch.cuda.synchronize()
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, timed_call)
        return lambda: owner.__dict__.pop(attr, None)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
                feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def main() -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from PIL import Image
    from transformers import UMT5Config, UMT5EncoderModel

    high, _ = build(lambda: WanTransformer3DModel(**A14B_EXPERT))
    low, _ = build(lambda: WanTransformer3DModel(**A14B_EXPERT))
    text, _ = build(lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)))
    vae, _ = build(lambda: AutoencoderKLWan(), dtype=torch.float32)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    pipe = WanImageToVideoPipeline(tokenizer=t5_tokenizer(), text_encoder=text, vae=vae, scheduler=sched,
                                   transformer=high, transformer_2=low, boundary_ratio=0.9)
    image = Image.new("RGB", (W, H), (120, 90, 60))
    t0 = time.perf_counter()
    with torch.inference_mode():
        embeds, _ = pipe.encode_prompt("a woman talks to the camera, city at night", do_classifier_free_guidance=False,
                                       device=torch.device("cuda"), dtype=torch.bfloat16)
    torch.cuda.synchronize()
    encode_s = time.perf_counter() - t0
    text.to("cpu")
    torch.cuda.empty_cache()
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "encode_prompt_s": round(encode_s, 3),
           "rows": []}

    def clip(steps):
        return pipe(image=image, prompt_embeds=embeds, height=H, width=W, num_frames=F, num_inference_steps=steps,
                    guidance_scale=1.0, guidance_scale_2=1.0, output_type="np",
                    generator=torch.Generator("cpu").manual_seed(0)).frames

    def row(label, cache=None, warm=True):
        handle, parts = None, PartTimer()
        if cache is not None:
            handle = apply_teacache_to_pipeline(pipe, TeaCacheConfig(rel_l1_thresh=cache, start_step=1,
                                                                     model="wan2.2-i2v-a14b"), num_inference_steps=STEPS)
        try:
            torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode():
                if warm:
                    clip(2)
                undo = [parts.wrap(vae, "encode", "vae_encode_s"), parts.wrap(vae, "decode", "vae_decode_s")]
                try:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    frames = clip(STEPS)
                    torch.cuda.synchronize()
                    sec = time.perf_counter() - t0 + encode_s
                finally:
                    for u in undo:
                        u()
            stats = handle.stats() if handle is not None else None
            computed = handle.totals()[0] if handle is not None else STEPS
        finally:
            if handle is not None:
                handle.remove()
        r = {"path": label, "clip_s": round(sec, 2), "frames": int(frames.shape[1]),
             "peak_gib": gib(torch.cuda.max_memory_allocated())}
        r.update({k: round(v, 2) for k, v in parts.seconds.items()})
        if stats is not None:
            r["cache"] = stats
        fixed = encode_s + sum(parts.seconds.values())
        per_forward = (sec - fixed) / computed       # what is left is the denoising loop
        r.update({"forwards": computed, "s_per_forward": round(per_forward, 3), "fixed_s": round(fixed, 2),
                  "forwards_in_goal": int((GOAL_S - fixed) // per_forward)})
        out["rows"].append(r)
        print(r, flush=True)

    row("stock diffusers (eager SDPA, fp32 VAE)", warm=False)
    vae.to(torch.bfloat16)          # the renderer loads every component in the profile's dtype
    reports = [prepare_transformer(m, SpeedSettings(attention="auto", compile="on"), "cuda", label=n)
               for n, m in (("transformer", high), ("transformer_2", low))]
    out["lossless_report"] = reports[0]
    row("ours lossless (attention auto + compile)")
    row("ours lossless + TeaCache 0.15", cache=0.15, warm=False)
    for m in (high, low):
        uncompile(m)
        quantize_fp8(m)
        compile_blocks(m)
    row("ours fp8 (lossy)")
    row("ours fp8 + TeaCache 0.15 (seed recipe, lossy)", cache=0.15, warm=False)
    base = out["rows"][0]["clip_s"]
    for r in out["rows"]:
        r["x_stock"] = round(base / r["clip_s"], 3)
    print(table(out["rows"], ["path", "clip_s", "x_stock", "vae_encode_s", "vae_decode_s", "forwards",
                              "s_per_forward", "fixed_s", "forwards_in_goal", "peak_gib"]))
    save("e2e_recipe.json", out)


if __name__ == "__main__":
    main()
