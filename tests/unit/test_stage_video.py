"""The video stage on the tiny Wan2.2 I2V pipeline (two experts), loaded through the real load path."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from cinesynth_batch.media.video_io import last_frame, probe, read_frames
from cinesynth_batch.stages import video as video_stage
from cinesynth_batch.stages.base import StageContext, StageError

torch.set_flush_denormal(True)
torch.set_num_threads(1)



@pytest.fixture(scope="module")
def stills(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stills")
    rng = np.random.default_rng(0)
    out = {}
    yy, xx = np.mgrid[0:64, 0:96]
    grad = np.stack([xx * 255 / 95, yy * 255 / 63, np.full_like(xx, 128)], -1).astype(np.uint8)
    out["gradient"] = d / "gradient.png"
    Image.fromarray(grad).save(out["gradient"])  # 96x64: fitted (cover + center crop) to the clip size
    out["noise"] = d / "noise.png"
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(out["noise"])
    out["jpg"] = d / "flat.jpg"
    Image.new("RGB", (48, 32), (200, 40, 40)).save(out["jpg"], quality=95)
    return out


BASE = {
    "prompt": "waves roll onto the beach",
    "negative_prompt": "static, blurry",
    "frames": 9,
    "steps": 2,
    "guidance": 3.0,
    "guidance_2": 2.0,
    "shift": 5.0,
    "boundary": 0.9,
    "scheduler": "unipc",
    "width": 48,
    "height": 32,
    "fps": 8,
    "seed": 5,
    "loras": [],
}


def render(ctx, tmp_path, inputs, name="clip", **over):
    out = tmp_path / f"{name}.mp4"
    facts = video_stage.run({**BASE, **over}, inputs, out, ctx)
    return facts, out


def frames_of(path: Path) -> np.ndarray:
    return read_frames(path).astype(np.int16)


@contextmanager
def expert_calls(pipe):
    counts = {"transformer": 0, "transformer_2": 0}
    handles = []
    for name in counts:
        def hook(_m, _a, _o, name=name):
            counts[name] += 1

        handles.append(getattr(pipe, name).register_forward_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def test_constants():
    assert video_stage.KIND == "video"
    assert video_stage.OUTPUT_EXT == ".mp4"
    assert video_stage.MODEL_ROLE == "video"


def test_writes_mp4_with_requested_frames_size_and_fps(ctx, tmp_path, stills):
    facts, out = render(ctx, tmp_path, {"image": str(stills["gradient"])}, frames=9, width=48, height=32, fps=8)
    speed = facts.pop("speed")
    assert facts.pop("placement") == {"moves": [], "swap_experts": False, "bytes_moved": 0,
                                      "kept": ["on the CPU every component is in RAM already"]}
    assert facts == {"frames": 9, "width": 48, "height": 32, "fps": 8}
    for expert in ("transformer", "transformer_2"):     # on the CPU the defaults resolve to eager SDPA
        assert {k: speed[expert][k] for k in ("attention", "compile", "quantize", "offload", "fallbacks")} == \
            {"attention": "sdpa", "compile": False, "quantize": None, "offload": None, "fallbacks": []}
    assert speed["offload"] is None
    info = probe(out)
    assert (info.frames, info.width, info.height, info.fps) == (9, 48, 32, 8.0)
    assert info.video_codec == "h264"
    assert ctx.extra["progress_calls"] == [(0, 2), (1, 2), (2, 2)]

    facts, out = render(ctx, tmp_path, {"image": str(stills["jpg"])}, "square", frames=13, width=32, height=32, fps=12)
    info = probe(out)
    assert (info.frames, info.width, info.height, info.fps) == (13, 32, 32, 12.0)


def _pipeline_clip(pipe, p, image, **prompts):
    """The tiny pipeline's float frames for the stage params ``p``, prompts given as ``prompts``."""
    pipe.register_to_config(boundary_ratio=p["boundary"])
    pipe.scheduler = video_stage.make_scheduler(pipe, p["scheduler"], p["shift"])
    with torch.no_grad():
        return pipe(image=image, height=p["height"], width=p["width"], num_frames=p["frames"],
                    num_inference_steps=p["steps"], guidance_scale=p["guidance"], guidance_scale_2=p["guidance_2"],
                    generator=torch.Generator("cpu").manual_seed(p["seed"]), output_type="np", **prompts).frames


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_embeddings_encoded_by_the_stage_give_the_pipelines_own_frames(ctx, stills, guidance):
    pipe = ctx.models.get("video")
    p = video_stage.check_params({**BASE, "guidance": guidance})
    image, _ = video_stage.start_images({"image": stills["gradient"]}, p["width"], p["height"])
    own = _pipeline_clip(pipe, p, image, prompt=p["prompt"], negative_prompt=p["negative_prompt"])
    with torch.no_grad():
        embeds, negative = video_stage.encode_prompts(pipe, p["prompt"], p["negative_prompt"], p["guidance"])
    assert (negative is None) == (guidance <= 1)
    staged = _pipeline_clip(pipe, p, image, prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert np.array_equal(own, staged)                         # bit for bit
    if guidance > 1:                                           # and the negative prompt is used
        other = _pipeline_clip(pipe, p, image, prompt=p["prompt"], negative_prompt="something else")
        assert not np.array_equal(own, other)


def test_the_stage_writes_the_clip_of_the_pipelines_own_prompt_path(ctx, tmp_path, stills):
    from cinesynth_batch.media.video_io import write_video
    from cinesynth_batch.runtime.pixels import video_frames

    _, out = render(ctx, tmp_path, {"image": stills["gradient"]}, "staged")
    p = video_stage.check_params(BASE)
    image, _ = video_stage.start_images({"image": stills["gradient"]}, p["width"], p["height"])
    own = _pipeline_clip(ctx.models.get("video"), p, image, prompt=p["prompt"], negative_prompt=p["negative_prompt"])
    ref = tmp_path / "ref.mp4"
    write_video(video_frames(own), ref, fps=p["fps"])   # the float path, rounded on the CPU
    assert ref.read_bytes() == out.read_bytes()


def test_same_seed_same_bytes(ctx, tmp_path, stills):
    _, a = render(ctx, tmp_path, {"image": stills["noise"]}, "a")
    _, b = render(ctx, tmp_path, {"image": stills["noise"]}, "b")
    _, c = render(ctx, tmp_path, {"image": stills["noise"]}, "c", seed=6)
    assert a.read_bytes() == b.read_bytes()
    assert np.abs(frames_of(a) - frames_of(c)).max() > 0


def test_low_weight_changes_frames_and_zero_weights_equal_base(ctx, provider, tmp_path, stills):
    inp = {"image": stills["noise"]}
    _, base = render(ctx, tmp_path, inp, "base")
    _, zero = render(ctx, tmp_path, inp, "zero", loras=[{"name": "tiny/motion", "high": 0.0, "low": 0.0}])
    _, low = render(ctx, tmp_path, inp, "low", loras=[{"name": "tiny/motion", "high": 0.0, "low": 1.0}])
    _, low2 = render(ctx, tmp_path, inp, "low2", loras=[{"name": "tiny/motion", "high": 0.0, "low": 0.5}])
    _, after = render(ctx, tmp_path, inp, "after")
    assert zero.read_bytes() == base.read_bytes()
    assert np.abs(frames_of(low) - frames_of(base)).mean() > 0.5
    assert np.abs(frames_of(low2) - frames_of(low)).max() > 0
    assert after.read_bytes() == base.read_bytes()
    adapters = provider.get("video").get_list_adapters()
    assert len(adapters.get("transformer_2", [])) == 1  # loaded once, reused


def test_high_and_low_weights_land_on_their_expert(ctx, tmp_path, stills):
    """boundary 0 runs only the high-noise expert, boundary 1 only the low-noise one."""
    inp = {"image": stills["noise"]}
    lo_only = [{"name": "tiny/motion", "high": 0.0, "low": 1.0}]
    hi_only = [{"name": "tiny/motion", "high": 1.0, "low": 0.0}]
    _, base_hi = render(ctx, tmp_path, inp, "bh", boundary=0.0)
    _, lo_on_hi = render(ctx, tmp_path, inp, "lh", boundary=0.0, loras=lo_only)
    _, hi_on_hi = render(ctx, tmp_path, inp, "hh", boundary=0.0, loras=hi_only)
    assert lo_on_hi.read_bytes() == base_hi.read_bytes()
    assert np.abs(frames_of(hi_on_hi) - frames_of(base_hi)).max() > 0
    _, base_lo = render(ctx, tmp_path, inp, "bl", boundary=1.0)
    _, hi_on_lo = render(ctx, tmp_path, inp, "hl", boundary=1.0, loras=hi_only)
    assert hi_on_lo.read_bytes() == base_lo.read_bytes()


def test_two_loras_on_both_experts_use_one_set_adapters_call(ctx, provider, tmp_path, stills):
    pipe = provider.get("video")
    calls = []
    original = pipe.set_adapters

    def spy(names, adapter_weights=None):
        calls.append((list(names), list(adapter_weights)))
        return original(names, adapter_weights=adapter_weights)

    pipe.set_adapters = spy
    try:
        loras = [{"name": "tiny/motion", "high": 0.7, "low": 0.3}, {"name": "tiny/camera", "high": 1.0, "low": 0.6}]
        _, both = render(ctx, tmp_path, {"image": stills["noise"]}, "both", loras=loras)
        _, one = render(ctx, tmp_path, {"image": stills["noise"]}, "one", loras=loras[:1])
    finally:
        del pipe.set_adapters
    assert len(calls) == 2  # one per run
    assert sorted(calls[0][1]) == [0.3, 0.6, 0.7, 1.0]
    assert sorted(calls[1][1]) == [0.3, 0.7]
    assert np.abs(frames_of(both) - frames_of(one)).max() > 0
    loaded = pipe.get_list_adapters()
    assert len(loaded["transformer"]) == 2 and len(loaded["transformer_2"]) == 2


def test_fused_loras_match_unfused_and_other_loras_get_a_fresh_model(ctx, provider, tmp_path, stills):
    """``lora_fuse: on`` adds the weighted LoRA products into the experts' weights once: the clip
    equals the unfused one up to float rounding, a second clip with the same LoRAs reuses the fused
    model, and a clip with other weights or none gets a fresh copy, so its bytes are exactly those
    of a model that never held a LoRA."""
    inp = {"image": stills["noise"]}
    loras = [{"name": "tiny/motion", "high": 0.7, "low": 0.3}, {"name": "tiny/camera", "high": 1.0, "low": 0.6}]
    provider.reload("video")
    _, base = render(ctx, tmp_path, inp, "base")
    unfused_facts, unfused = render(ctx, tmp_path, inp, "unfused", loras=loras, lora_fuse="off")
    assert unfused_facts["loras"] == {"fused": False, "why": "lora_fuse: off", "fresh_model": False}
    first = provider.get("video")
    facts, fused = render(ctx, tmp_path, inp, "fused", loras=loras, lora_fuse="on")
    assert facts["loras"]["fused"] is True and facts["loras"]["fresh_model"] is False
    assert provider.get("video") is first
    weights = sorted(first.transformer.blocks[0].attn1.to_q.base_layer.weight.flatten()[:4].tolist())
    near = np.abs(frames_of(fused) - frames_of(unfused)).mean()      # rounding, through the H.264 encoder
    assert near < 0.25 and np.abs(frames_of(fused) - frames_of(base)).mean() > max(0.5, 20 * near)
    facts, again = render(ctx, tmp_path, inp, "again", loras=loras, lora_fuse="on")
    assert facts["loras"]["fresh_model"] is False and provider.get("video") is first
    assert again.read_bytes() == fused.read_bytes()
    assert sorted(first.transformer.blocks[0].attn1.to_q.base_layer.weight.flatten()[:4].tolist()) == weights
    facts, other = render(ctx, tmp_path, inp, "other", loras=loras[:1], lora_fuse="on")
    assert facts["loras"]["fresh_model"] is True and provider.get("video") is not first
    assert np.abs(frames_of(other) - frames_of(fused)).max() > 0
    second = provider.get("video")
    facts, after = render(ctx, tmp_path, inp, "after")
    assert provider.get("video") is not second
    assert after.read_bytes() == base.read_bytes()
    assert "loras" not in facts


@pytest.mark.parametrize("mode, device, speed, fuses", [
    ("auto", "cuda", {"transformer": {}, "transformer_2": {}, "offload": None}, True),
    ("auto", "cpu", {"offload": None}, False),
    ("on", "cpu", {"offload": None}, True),
    ("off", "cuda", {"offload": None}, False),
    ("on", "cuda", {"offload": "blocks"}, False),
    ("on", "cuda", {"transformer": {"block_swap": 20}}, False),
    ("on", "cuda", {"transformer_2": {"quantize": "fp8"}}, False),
])
def test_which_runs_fuse_their_loras(mode, device, speed, fuses):
    from cinesynth_batch.runtime.lora_fuse import can_fuse

    assert can_fuse(mode, device, speed)[0] is fuses


def test_boundary_picks_the_expert(ctx, provider, tmp_path, stills):
    pipe = provider.get("video")
    inp = {"image": stills["noise"]}
    with expert_calls(pipe) as only_low:
        _, low = render(ctx, tmp_path, inp, "low", boundary=1.0)
    with expert_calls(pipe) as only_high:
        _, high = render(ctx, tmp_path, inp, "high", boundary=0.0)
    with expert_calls(pipe) as split:
        render(ctx, tmp_path, inp, "split", boundary=0.9)
    assert only_low["transformer"] == 0 and only_low["transformer_2"] > 0
    assert only_high["transformer_2"] == 0 and only_high["transformer"] > 0
    assert split["transformer"] > 0 and split["transformer_2"] > 0
    assert np.abs(frames_of(low) - frames_of(high)).max() > 0


def test_prev_continues_from_the_last_frame(ctx, tmp_path, stills):
    _, first = render(ctx, tmp_path, {"image": stills["gradient"]}, "first")
    tail = tmp_path / "tail.png"
    Image.fromarray(last_frame(first)).save(tail)
    head = tmp_path / "head.png"
    Image.fromarray(read_frames(first)[0]).save(head)

    facts, cont = render(ctx, tmp_path, {"prev": str(first)}, "cont", seed=9)
    _, from_tail = render(ctx, tmp_path, {"image": tail}, "from_tail", seed=9)
    _, from_head = render(ctx, tmp_path, {"image": head}, "from_head", seed=9)
    assert facts["frames"] == BASE["frames"]
    assert cont.read_bytes() == from_tail.read_bytes()
    assert np.abs(frames_of(cont) - frames_of(from_head)).max() > 0


def test_last_image_conditions_the_clip(ctx, tmp_path, stills):
    _, plain = render(ctx, tmp_path, {"image": stills["noise"]}, "plain")
    _, fflf = render(ctx, tmp_path, {"image": stills["noise"], "last_image": stills["gradient"]}, "fflf")
    assert probe(fflf).frames == BASE["frames"]
    assert np.abs(frames_of(plain) - frames_of(fflf)).max() > 0


def test_schedulers_run_and_do_not_leak(ctx, provider, tmp_path, stills):
    inp = {"image": stills["noise"]}
    _, u1 = render(ctx, tmp_path, inp, "u1", scheduler="unipc")
    assert type(provider.get("video").scheduler).__name__ == "UniPCMultistepScheduler"
    _, e1 = render(ctx, tmp_path, inp, "e1", scheduler="euler", shift=3.0)
    assert type(provider.get("video").scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    _, e2 = render(ctx, tmp_path, inp, "e2", scheduler="euler", shift=8.0)
    _, u2 = render(ctx, tmp_path, inp, "u2", scheduler="unipc")
    assert probe(e1).frames == BASE["frames"]
    assert np.abs(frames_of(u1) - frames_of(e1)).max() > 0
    assert np.abs(frames_of(e1) - frames_of(e2)).max() > 0  # shift is honoured
    assert u1.read_bytes() == u2.read_bytes()


@pytest.mark.parametrize(
    "over, message, hint",
    [
        ({"frames": 10}, "video: frames: 10 is not 4k+1", "try 9"),
        ({"frames": 1}, "video: frames: 1 is not 4k+1", "try 5"),
        ({"width": 40}, "video: width: 40 is not a multiple of 16", "try 32"),
        ({"height": 20}, "video: height: 20 is not a multiple of 16", "try 16"),
        ({"scheduler": "ddim"}, "video: scheduler: 'ddim': input should be 'unipc' or 'euler'", None),
        ({"boundary": 1.5}, "video: boundary: 1.5: input should be less than or equal to 1", None),
        ({"seed": -3}, "video: seed: -3 is not a seed", "use 0..4294967295"),
    ],
)
def test_bad_params_raise_stage_error(ctx, tmp_path, stills, over, message, hint):
    with pytest.raises(StageError) as err:
        render(ctx, tmp_path, {"image": stills["noise"]}, **over)
    assert (err.value.message, err.value.hint) == (message, hint)
    assert not (tmp_path / "clip.mp4").exists()


def test_bad_inputs_raise_stage_error(ctx, tmp_path, stills):
    with pytest.raises(StageError, match="no start image"):
        render(ctx, tmp_path, {})
    with pytest.raises(StageError, match="not both"):
        render(ctx, tmp_path, {"image": stills["noise"], "prev": stills["noise"]})
    with pytest.raises(StageError, match="not found"):
        render(ctx, tmp_path, {"image": tmp_path / "missing.png"})
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"no image here")
    with pytest.raises(StageError, match="not a readable image"):
        render(ctx, tmp_path, {"image": junk})
    bad = tmp_path / "motion.ckpt"
    bad.write_bytes(b"x")
    c = StageContext(models=ctx.models, resolve_lora=lambda name, family: bad)
    with pytest.raises(StageError, match="safetensors"):
        video_stage.run({**BASE, "loras": [{"name": "motion", "high": 1.0, "low": 1.0}]}, {"image": stills["noise"]}, tmp_path / "x.mp4", c)


def test_teacache_option(ctx, tmp_path, stills):
    still = {"image": stills["gradient"]}
    _, base = render(ctx, tmp_path, still, name="base", steps=10)
    meta0, exact = render(ctx, tmp_path, still, name="exact", steps=10,
                          cache={"kind": "teacache", "threshold": 0.0, "start_step": 1})
    assert np.array_equal(frames_of(base), frames_of(exact))

    def skipped(meta):
        return sum(v["skipped"] for v in meta["cache"].values() if isinstance(v, dict) and "skipped" in v)

    assert skipped(meta0) == 0
    meta, _ = render(ctx, tmp_path, still, name="cached", steps=10,
                     cache={"kind": "teacache", "threshold": 0.5, "start_step": 1})
    assert skipped(meta) > 0
