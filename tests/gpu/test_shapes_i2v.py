"""Profile ``shapes`` on a GPU: the Wan2.2-I2V-A14B pipeline built at full size on CUDA through the
residency/loader path, two full-shape random LoRAs (rank 64 and 128, different high/low weights)
loaded with ``load_lora_weights`` as the video stage loads them, one denoising step at 128x128."""

from __future__ import annotations

import time

import numpy as np


def test_i2v_at_full_size_takes_full_shape_loras_and_steps(tmp_path):
    import torch
    from PIL import Image

    from cinesynth_batch.catalog.registry import SHAPES_REVISION, Registry
    from cinesynth_batch.catalog.residency import Residency
    from cinesynth_batch.catalog.shapes import shapes_nbytes
    from cinesynth_batch.catalog.shapes.loras import write_wan_lora
    from cinesynth_batch.runtime.lora import apply_loras, video_lora_requests
    from cinesynth_batch.runtime.swap import model_nbytes

    reg = Registry.load("shapes", tmp_path, tmp_path, home=tmp_path)
    assert reg.identity("video")["revision"] == SHAPES_REVISION
    folder = tmp_path / "lora_adpts" / "mov"
    write_wan_lora(folder / "r64.safetensors", rank=64, seed=1, device="cuda")
    write_wan_lora(folder / "r128.safetensors", rank=128, seed=2, device="cuda")

    t0 = time.perf_counter()
    residency = Residency(reg, device="cuda", dtype="bfloat16")
    try:
        pipe = residency.get("video")
        torch.cuda.synchronize()
        built_s = time.perf_counter() - t0
        assert type(pipe).__name__ == "WanImageToVideoPipeline"
        assert residency.loads["video"] == 1
        for expert in (pipe.transformer, pipe.transformer_2):
            assert sum(p.numel() for p in expert.parameters()) == 14_288_901_184
            assert expert.blocks[0].attn1.to_q.weight.device.type == "cuda"
            assert expert.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
            assert expert.blocks[0].norm2.weight.dtype == torch.float32      # diffusers keeps it in fp32
        assert pipe.transformer.blocks[0].attn1.to_q.weight.std().item() > 0.005   # random, not empty
        assert model_nbytes(pipe) == shapes_nbytes("wan2.2-i2v-a14b", "bfloat16")

        t1 = time.perf_counter()
        requests = video_lora_requests([{"name": "r64", "high": 1.0, "low": 0.5},
                                        {"name": "r128", "high": 0.25, "low": 0.75}],
                                       lambda name, family: reg.resolve_lora(name, family))
        weights = apply_loras(pipe, requests)
        lora_s = time.perf_counter() - t1
        assert len(weights) == 4
        adapters = pipe.get_list_adapters()
        assert len(adapters["transformer"]) == 2 and len(adapters["transformer_2"]) == 2
        lora_a = [m for n, m in pipe.transformer.named_modules() if n.endswith("blocks.39.ffn.net.2")][0]
        ranks = sorted(w.weight.shape[0] for w in lora_a.lora_A.values())
        assert ranks == [64, 128]

        t2 = time.perf_counter()
        image = Image.fromarray(np.full((128, 128, 3), 127, np.uint8))
        out = pipe(image=image, prompt="a fox in the snow", height=128, width=128, num_frames=5,
                   num_inference_steps=1, guidance_scale=5.0, output_type="np",
                   generator=torch.Generator("cuda").manual_seed(0)).frames
        torch.cuda.synchronize()
        step_s = time.perf_counter() - t2
        frames = np.asarray(out)
        assert frames.shape == (1, 5, 128, 128, 3) and np.isfinite(frames).all()
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"\nshapes I2V on {torch.cuda.get_device_name(0)}: build {built_s:.1f} s, LoRAs {lora_s:.1f} s, "
              f"one step + VAE {step_s:.1f} s, peak {peak:.1f} GiB")
    finally:                      # 57 GB of experts: gone before the next test, also after a failure
        pipe = out = expert = lora_a = adapters = None
        residency.clear()
        torch.cuda.empty_cache()
