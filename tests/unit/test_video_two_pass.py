"""The two-resolution expert hand-off (``video.two_pass``) on the tiny Wan2.2 I2V pipeline."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from cinesynth_batch.media.video_io import probe, read_frames
from cinesynth_batch.runtime import two_pass as tp
from cinesynth_batch.stages import video as video_stage
from cinesynth_batch.stages.base import StageError

torch.set_flush_denormal(True)
torch.set_num_threads(1)

BASE = {
    "prompt": "a dancer turns", "negative_prompt": "static", "frames": 9, "steps": 4, "guidance": 1.0,
    "guidance_2": 1.0, "shift": 8.0, "boundary": 0.9, "scheduler": "euler", "width": 80, "height": 48,
    "fps": 8, "seed": 138, "loras": [],
}
TWO = {"base_width": 32, "base_height": 16, "high_steps": 2}


@pytest.fixture(scope="module")
def stills(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stills")
    rng = np.random.default_rng(1)
    out = {}
    for name in ("a", "b"):
        out[name] = d / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(out[name])
    return out


def hidden_sizes(pipe):
    """Per expert, the latent (height, width) of every forward call."""
    seen: dict[str, list[tuple[int, int]]] = {"transformer": [], "transformer_2": []}
    handles = []
    for name in seen:
        def pre(_m, args, kwargs, name=name):
            x = kwargs.get("hidden_states", args[0] if args else None)
            seen[name].append(tuple(x.shape[-2:]))

        handles.append(getattr(pipe, name).register_forward_pre_hook(pre, with_kwargs=True))
    return seen, handles


def test_window_scheduler_keeps_its_part_of_one_schedule(provider):
    pipe = provider.get("video")
    euler = video_stage.make_scheduler(pipe, "euler", 8.0)
    timesteps, sigmas = tp.schedule(euler, 8)
    first = tp.window_scheduler(euler, tp.Window(0, 4, to_zero=True))
    first.set_timesteps(8)
    assert torch.equal(first.timesteps, timesteps[:4])
    assert torch.equal(first.sigmas[:4], sigmas[:4]) and float(first.sigmas[4]) == 0.0
    second = tp.window_scheduler(euler, tp.Window(4, 8, to_zero=False))
    second.set_timesteps(8)
    assert torch.equal(second.timesteps, timesteps[4:]) and torch.equal(second.sigmas, sigmas[4:])
    b = tp.split_boundary(timesteps, 4, 1000) * 1000
    assert float(timesteps[3]) > b > float(timesteps[4])
    with pytest.raises(ValueError, match="flow-match Euler"):
        tp.window_scheduler(video_stage.make_scheduler(pipe, "unipc", 8.0), tp.Window(0, 4, True))


def test_high_expert_runs_at_the_base_size_and_low_at_full(ctx, provider, tmp_path, stills):
    pipe = provider.get("video")
    seen, handles = hidden_sizes(pipe)
    try:
        facts = video_stage.run({**BASE, "two_pass": TWO}, {"image": stills["a"], "last_image": stills["b"]},
                                tmp_path / "two.mp4", ctx)
    finally:
        for h in handles:
            h.remove()
    # CFG 1: one forward per step; the latent is 1/8 of the pixels
    assert seen == {"transformer": [(2, 4)] * 2, "transformer_2": [(6, 10)] * 2}
    assert facts["two_pass"] == {"base": [32, 16], "high_steps": 2}
    info = probe(tmp_path / "two.mp4")
    assert (info.frames, info.width, info.height) == (9, 80, 48)
    assert ctx.extra["progress_calls"] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    # the pipeline's scheduler and boundary are left as they were
    assert pipe.config.boundary_ratio == 0.9
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_two_pass_differs_from_one_pass_and_repeats(ctx, tmp_path, stills):
    inputs = {"image": stills["a"], "last_image": stills["b"]}
    video_stage.run(dict(BASE), inputs, tmp_path / "one.mp4", ctx)
    video_stage.run({**BASE, "two_pass": TWO}, inputs, tmp_path / "two.mp4", ctx)
    video_stage.run({**BASE, "two_pass": TWO}, inputs, tmp_path / "again.mp4", ctx)
    video_stage.run({**BASE, "two_pass": {**TWO, "high_steps": 1}}, inputs, tmp_path / "h1.mp4", ctx)
    one, two = (read_frames(tmp_path / n).astype(np.int16) for n in ("one.mp4", "two.mp4"))
    assert np.abs(one - two).max() > 0
    assert (tmp_path / "two.mp4").read_bytes() == (tmp_path / "again.mp4").read_bytes()
    assert (tmp_path / "two.mp4").read_bytes() != (tmp_path / "h1.mp4").read_bytes()


def test_upscale_goes_through_the_vae(provider):
    """decode -> resize -> encode: a latent decoded after the upscale shows the resized frames."""
    import torch.nn.functional as F

    pipe = provider.get("video")
    vae = pipe.vae
    gen = torch.Generator("cpu").manual_seed(0)
    low = torch.randn((1, vae.config.z_dim, 3, 2, 4), generator=gen)
    up = tp.upscale_latents(vae, low, 80, 48)
    assert up.shape == (1, vae.config.z_dim, 3, 6, 10)
    mean, std = tp._latent_stats(vae, low)
    with torch.no_grad():
        small = vae.decode(low * std + mean, return_dict=False)[0]
        expect = vae.encode(F.interpolate(small[0].permute(1, 0, 2, 3), size=(48, 80), mode="bicubic")
                            .clamp(-1, 1).permute(1, 0, 2, 3)[None]).latent_dist.mode()
    assert torch.allclose(up, (expect - mean) / std, atol=1e-5)


@pytest.mark.parametrize("over, message", [
    ({"scheduler": "unipc"}, "two_pass runs the flow-match Euler sampler"),
    ({"two_pass": {**TWO, "high_steps": 4}}, "two_pass.high_steps 4 must leave the low-noise expert a step"),
    ({"two_pass": {**TWO, "base_width": 80}}, "two_pass base size 80x16 is not smaller than 80x48"),
    ({"cache": {"kind": "teacache", "threshold": 0.1, "start_step": 1, "coefficients": True}},
     "two_pass cannot take a step cache"),
])
def test_bad_two_pass_params_are_named(over, message):
    with pytest.raises(StageError) as exc:
        video_stage.check_params({**BASE, "two_pass": TWO, **over})
    assert message in str(exc.value)
