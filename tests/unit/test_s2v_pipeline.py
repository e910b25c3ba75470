"""The S2V pipeline on the tiny S2V folder (official layout), through the production loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cinesynth_batch.catalog.loaders import load_model
from cinesynth_batch.models.s2v.audio_features import num_segments
from cinesynth_batch.models.s2v.lora import PhaseLora
from cinesynth_batch.models.s2v.pipeline import count_segments

torch.set_flush_denormal(True)


@pytest.fixture(scope="module")
def pipe(tiny_root):
    return load_model("wan-s2v", tiny_root / "wan2.2-s2v")


def speech(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    voice = np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * voice).astype(np.float32)


AVATAR = Image.new("RGB", (80, 60), (200, 140, 110))


def run(pipe, seconds=0.6, **over):
    args = dict(image=AVATAR, speech=speech(seconds), audio_seconds=seconds, prompt="a person talking",
                negative_prompt=None, width=64, height=64, fps=16, infer_frames=16, steps=4,
                guidance=1.0, shift=3.0, scheduler="unipc", seed=3)
    args.update(over)
    return pipe.generate(**args)


def test_segment_count_formula():
    assert num_segments(12.0, fps=16, infer_frames=80) == 3
    assert count_segments(3, 12.0, 16, 80) == 3          # 237 frames cover 192
    assert count_segments(1, 4.98, 16, 80) == 2          # 77 frames would not cover 80
    assert count_segments(5, 1.0, 16, 80) == 5           # the reference count is a floor


def test_twelve_seconds_give_three_segments_and_cover_the_speech(pipe):
    res = run(pipe, seconds=12.0, infer_frames=80, steps=1)
    assert res.segments == 3
    assert res.frames.shape == (77 + 80 + 80, 64, 64, 3)
    assert res.frames.shape[0] >= round(12.0 * 16)


def test_same_seed_same_frames_and_seed_matters(pipe):
    a, b = run(pipe).frames, run(pipe).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, run(pipe, seed=4).frames)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_texts_encoded_beforehand_give_the_same_frames(pipe, guidance):
    own = run(pipe, guidance=guidance, negative_prompt="blurry").frames
    with torch.no_grad():
        texts = pipe.encode_text("a person talking", "blurry")
    assert np.array_equal(run(pipe, guidance=guidance, negative_prompt="blurry", texts=texts).frames, own)
    if guidance > 1.0:                                   # the unconditional context is the one given
        with torch.no_grad():
            other = pipe.encode_text("a person talking", None)
        assert not np.array_equal(run(pipe, guidance=guidance, negative_prompt="blurry", texts=other).frames, own)


def test_generates_at_multiple_of_64_and_crops_to_the_request(pipe):
    res = run(pipe, width=48, height=80, steps=1)
    assert res.frames.shape[1:] == (80, 48, 3)


def lora_file(tmp_path, name="talk", rank=2, seed=0, alpha=None, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for module, (out_f, in_f) in {"blocks.0.self_attn.q": (24, 24), "blocks.1.ffn.0": (32, 24)}.items():
        sd[f"diffusion_model.{module}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * scale
        sd[f"diffusion_model.{module}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * scale
        if alpha is not None:
            sd[f"diffusion_model.{module}.alpha"] = torch.tensor(float(alpha))
    path = tmp_path / f"{name}.safetensors"
    save_file(sd, str(path))
    return path


def trajectory(pipe, loras, boundary=0.5):
    seen = []
    run(pipe, loras=loras, boundary=boundary, on_step=lambda r, i, t, x: seen.append((r, t, x.clone())))
    return seen


def test_low_weight_changes_only_steps_after_the_boundary(pipe, tmp_path):
    path = lora_file(tmp_path)
    times = sorted({t for r, t, _ in trajectory(pipe, [])}, reverse=True)
    boundary = (times[1] + times[2]) / 2000            # two high-noise steps, two low-noise steps
    a = trajectory(pipe, [PhaseLora("talk", path, high=1.0, low=0.2)], boundary)
    b = trajectory(pipe, [PhaseLora("talk", path, high=1.0, low=0.9)], boundary)
    first_segment = [(t, xa, xb) for (r, t, xa), (_, _, xb) in zip(a, b) if r == 0]
    before = [torch.equal(xa, xb) for t, xa, xb in first_segment if t >= boundary * 1000]
    after = [torch.equal(xa, xb) for t, xa, xb in first_segment if t < boundary * 1000]
    assert before and all(before)          # steps run on the high-noise side are identical
    assert after and not any(after)        # from the boundary on, they differ


def test_zero_weights_equal_no_lora(pipe, tmp_path):
    path = lora_file(tmp_path)
    base = run(pipe).frames
    assert np.array_equal(run(pipe, loras=[PhaseLora("talk", path, 0.0, 0.0)]).frames, base)
    assert not np.array_equal(run(pipe, loras=[PhaseLora("talk", path, 1.0, 1.0)]).frames, base)
    assert np.array_equal(run(pipe).frames, base)      # adapters are switched off again


def test_alpha_over_rank_scale(pipe, tmp_path):
    with_alpha = lora_file(tmp_path, "a", rank=2, alpha=1.0)          # scale 1/2
    sd = load_file(str(with_alpha))
    folded = {k: (v * 0.5 if ".lora_B." in k else v) for k, v in sd.items() if not k.endswith(".alpha")}
    plain = tmp_path / "b.safetensors"
    save_file(folded, str(plain))
    x = run(pipe, loras=[PhaseLora("a", with_alpha, 1.0, 1.0)]).frames
    y = run(pipe, loras=[PhaseLora("b", plain, 1.0, 1.0)]).frames
    assert np.abs(x.astype(int) - y).max() <= 1


def test_seed_finetune_checkpoint_folder(pipe, tmp_path):
    folder = tmp_path / "checkpoint-50"
    folder.mkdir()
    lora = lora_file(tmp_path, rank=4, alpha=None)
    sd = {k.replace("diffusion_model.", "base_model.model."): v for k, v in load_file(str(lora)).items()}
    save_file(sd, str(folder / "lora_weights.safetensors"), metadata={"lora_alpha": "2"})
    original = pipe.transformer.trainable_cond_mask.weight.detach().clone()
    torch.save({"trainable_cond_mask.weight": torch.ones_like(original)}, folder / "projector_weights.pt")
    base = run(pipe).frames
    tuned = run(pipe, loras=[PhaseLora("ft", folder, 0.5, 0.5)]).frames
    assert not np.array_equal(base, tuned)
    assert torch.equal(pipe.transformer.trainable_cond_mask.weight, torch.ones_like(original))
    assert np.array_equal(run(pipe).frames, base)       # projector weights are restored
    assert torch.equal(pipe.transformer.trainable_cond_mask.weight, original)


def test_projector_file_must_be_plain_tensors(pipe, tmp_path):
    from cinesynth_batch.stages.base import StageError

    folder = tmp_path / "bad"
    folder.mkdir()
    save_file(load_file(str(lora_file(tmp_path))), str(folder / "lora_weights.safetensors"))
    torch.save({"x": object.__new__(PhaseLora)}, folder / "projector_weights.pt")
    with pytest.raises(StageError, match="weights_only"):
        run(pipe, loras=[PhaseLora("bad", folder, 1.0, 1.0)])


def test_teacache_zero_is_exact_and_threshold_skips(pipe):
    base = run(pipe, steps=8, guidance=2.0)
    exact = run(pipe, steps=8, guidance=2.0, cache={"kind": "teacache", "threshold": 0.0, "start_step": 1})
    assert np.array_equal(exact.frames, base.frames)
    assert exact.cache_stats["s2v"]["skipped"] == 0
    cached = run(pipe, steps=8, guidance=2.0, cache={"kind": "teacache", "threshold": 0.5, "start_step": 1})
    stats = cached.cache_stats["s2v"]
    assert stats["skipped"] > 0 and stats["computed"] + stats["skipped"] == cached.segments * 2 * 8
    assert not np.array_equal(cached.frames, base.frames)


def test_pose_video_conditions_the_clip(pipe, tmp_path):
    from cinesynth_batch.media.video_io import write_video

    yy, xx = np.mgrid[0:64, 0:64]
    poses = np.stack([np.stack([(xx + 8 * i) % 256, yy * 3 % 256, np.full_like(xx, 40)], -1)
                      for i in range(20)]).astype(np.uint8)
    path = tmp_path / "pose.mp4"
    write_video(poses, path, fps=16)
    base = run(pipe, steps=2).frames
    posed = run(pipe, steps=2, pose_video=path).frames
    assert posed.shape == base.shape and not np.array_equal(base, posed)
