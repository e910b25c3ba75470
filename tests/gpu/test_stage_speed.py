"""The video stage's speed path on CUDA, through the production loader and the tiny I2V pipeline
folder (skipped without CUDA): defaults, TeaCache over compiled blocks, and offloading when the
pipeline is larger than the VRAM budget."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from cinesynth_batch.runtime.accel import prepared_pipeline  # noqa: E402
from cinesynth_batch.runtime.attention import resolve_attention  # noqa: E402
from cinesynth_batch.catalog.loaders import load_model  # noqa: E402
from cinesynth_batch.runtime.swap import model_nbytes  # noqa: E402
from cinesynth_batch.catalog.tiny.build import _write_wan_i2v  # noqa: E402


class _Models:
    def __init__(self, folder, budget, dtype="bfloat16"):
        self.folder, self.budget, self.loads, self.dtype = folder, budget, 0, dtype
        self.pipe = None

    def get(self, role):
        if self.pipe is None:
            self.loads += 1
            self.pipe = load_model("wan-i2v", self.folder, "cuda", self.dtype)
        return self.pipe

    def reload(self, role):
        self.pipe = None
        return self.get(role)


def _clip(pipe, cache=None, steps=4):
    from PIL import Image

    from cinesynth_batch.runtime.teacache import TeaCacheConfig, apply_teacache_to_pipeline

    handle = None
    if cache is not None:
        handle = apply_teacache_to_pipeline(pipe, TeaCacheConfig(rel_l1_thresh=cache, start_step=1,
                                                                 use_coefficients=False), num_inference_steps=steps)
    try:
        with torch.no_grad():
            out = pipe(image=Image.new("RGB", (64, 48), (100, 50, 20)), prompt="a cat", height=48, width=64,
                       num_frames=9, num_inference_steps=steps, guidance_scale=3.0, output_type="np",
                       generator=torch.Generator("cpu").manual_seed(0)).frames
        return out, (handle.stats() if handle is not None else None)
    finally:
        if handle is not None:
            handle.remove()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    dst = tmp_path_factory.mktemp("tiny") / "wan-i2v"
    _write_wan_i2v(dst)
    return dst


def test_defaults_compile_on_cuda_and_teacache_wraps_the_compiled_blocks(folder):
    models = _Models(folder, budget=1 << 40)
    ctx = SimpleNamespace(models=models, device="cuda")
    pipe, report = prepared_pipeline(ctx, "video", {"attention": "auto", "compile": "auto"})
    assert report["transformer"]["compile"] is True and report["offload"] is None
    head_dim = pipe.transformer.config.attention_head_dim
    assert report["transformer"]["attention"] == resolve_attention("auto", "cuda", torch.bfloat16, head_dim).used
    frames, _ = _clip(pipe)
    assert frames.shape == (1, 9, 48, 64, 3)
    cached, stats = _clip(pipe, cache=10.0, steps=8)   # skips every step but each expert's first and last
    assert (stats["transformer"]["skipped"], stats["transformer_2"]["skipped"]) == (2, 6)
    assert cached.shape == frames.shape
    # asking for other settings reloads the model instead of mixing them
    pipe2, report2 = prepared_pipeline(ctx, "video", {"attention": "sdpa", "compile": "off"})
    assert pipe2 is not pipe and models.loads == 2 and report2["transformer"]["attention"] == "sdpa"


def test_pipeline_over_the_budget_is_offloaded_and_gives_the_same_frames(folder):
    resident = _Models(folder, budget=1 << 40)
    pipe, _ = prepared_pipeline(SimpleNamespace(models=resident, device="cuda"), "video",
                                {"attention": "sdpa", "compile": "off"})
    want, _ = _clip(pipe)
    small = _Models(folder, budget=model_nbytes(pipe) // 2)
    pipe_small, report = prepared_pipeline(SimpleNamespace(models=small, device="cuda"), "video",
                                           {"attention": "sdpa", "compile": "off"})
    assert report["offload"] == "blocks"
    got, _ = _clip(pipe_small)
    assert abs(got.astype("float32") - want.astype("float32")).max() < 1e-2


def test_video_stage_fuses_its_loras_on_cuda_and_other_loras_get_a_fresh_model(folder, tmp_path):
    """``lora_fuse: auto`` on CUDA: two LoRAs with different high/low weights are fused into the
    resident compiled experts; the clip stays within bf16 rounding of the unfused one, the same
    LoRAs reuse the fused model and other weights reload it.

    bf16 rounding is measured, not assumed: an fp32 run of the same clip (unfused, no TF32) is the
    reference, and the unfused bf16 clip's distance from it is this random-weight model's bf16
    rounding (about 2 levels of 255 in the mean; on the CPU 2.03, the fused clip 2.01, while one
    LoRA less moves the clip by 10.4 and no LoRA by 9.6). The fused clip must be as near the
    reference as that, and near the unfused clip; the clip with one LoRA must not."""
    import numpy as np
    from PIL import Image

    from cinesynth_batch.catalog.tiny.build import _write_camera_lora, _write_motion_lora
    from cinesynth_batch.media.video_io import read_frames
    from cinesynth_batch.stages import video as video_stage
    from cinesynth_batch.stages.base import StageContext

    loras = tmp_path / "mov"
    loras.mkdir()
    _write_motion_lora(loras / "motion.safetensors")
    _write_camera_lora(loras / "camera.safetensors")
    still = tmp_path / "still.png"
    Image.new("RGB", (64, 48), (100, 50, 20)).save(still)
    models = _Models(folder, budget=1 << 40)
    pair = [{"name": "motion", "high": 1.0, "low": 0.5}, {"name": "camera", "high": 0.6, "low": 1.0}]
    base = {"prompt": "a cat", "negative_prompt": None, "frames": 9, "steps": 4, "guidance": 3.0,
            "guidance_2": 3.0, "shift": 5.0, "boundary": 0.9, "scheduler": "unipc", "width": 64, "height": 48,
            "fps": 8, "seed": 1}

    def clip(name, models=models, dtype="bfloat16", **over):
        ctx = StageContext(models=models, resolve_lora=lambda name, family: loras / f"{name}.safetensors",
                           device="cuda", dtype=dtype)
        facts = video_stage.run({**base, **over}, {"image": still}, tmp_path / f"{name}.mp4", ctx)
        return facts, read_frames(tmp_path / f"{name}.mp4").astype(np.int16)

    def far(a, b):
        return float(np.abs(a - b).mean())

    # exact fp32 (no TF32) for the reference; set and put back by hand: pytest's monkeypatch deletes
    # the attribute on undo, which torch's cuBLAS settings object does not allow
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        _, reference = clip("fp32", models=_Models(folder, budget=1 << 40, dtype="float32"), dtype="float32",
                            loras=pair, lora_fuse="off", compile="off")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    torch.cuda.empty_cache()
    facts, unfused = clip("unfused", loras=pair, lora_fuse="off")
    assert facts["loras"]["fused"] is False
    rounding = far(unfused, reference)              # what bf16 alone does to this clip
    assert rounding > 0
    facts, fused = clip("fused", loras=pair)
    assert facts["loras"] == {"fused": True, "why": "resident unquantized transformers", "fresh_model": False}
    assert far(fused, reference) < 1.5 * rounding   # fusing rounds no more than bf16 does
    assert far(fused, unfused) < 2.0 * rounding
    loads = models.loads
    facts, again = clip("again", loras=pair)
    assert facts["loras"]["fresh_model"] is False and models.loads == loads
    assert np.array_equal(again, fused)
    facts, other = clip("other", loras=pair[:1])
    assert facts["loras"]["fresh_model"] is True and models.loads == loads + 1
    assert far(other, reference) > 3.0 * rounding   # the bounds above tell a LoRA apart
