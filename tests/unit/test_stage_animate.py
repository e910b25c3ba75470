"""The animate (Change Character) stage on a tiny random WanAnimatePipeline, loaded from disk
through ``catalog.loaders.load_animate_pipeline``; plus the runtime placement (fp8, block swap)
exercised on the CPU directly."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from cinesynth_batch.media.audio import read_audio, write_tone
from cinesynth_batch.media.ffmpeg import ffmpeg_path_arg, run_ffmpeg
from cinesynth_batch.media.video_io import probe, read_frames, write_video
from cinesynth_batch.catalog.loaders import load_animate_pipeline
from cinesynth_batch.runtime import animate as am
from cinesynth_batch.runtime.memory import fp8_targets
from cinesynth_batch.catalog.tiny.build import tree_digest
from cinesynth_batch.catalog.tiny.animate import build_tiny_animate, write_tiny_animate_lora
from cinesynth_batch.stages import animate as stage
from cinesynth_batch.stages.base import StageContext, StageError

torch.set_flush_denormal(True)
torch.set_num_threads(1)

SIZE = 64
FPS = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_animate(tmp_path_factory.mktemp("animate-model") / "wan2.2-animate")


class Provider:
    def __init__(self, folder: Path):
        self.folder = folder
        self.pipe = None

    def get(self, role: str):
        assert role == "animate"
        if self.pipe is None:
            self.pipe = load_animate_pipeline(self.folder, device="cpu", dtype="float32")
        return self.pipe


@pytest.fixture(scope="module")
def provider(model_dir) -> Provider:
    return Provider(model_dir)


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loras")
    write_tiny_animate_lora(root / "mov" / "tiny" / "animate_face.safetensors")
    return root


@pytest.fixture
def ctx(provider, lora_root):
    calls: list[tuple[int, int]] = []

    def resolve(name: str, family: str) -> Path:
        return lora_root / family / f"{name}.safetensors"

    c = StageContext(models=provider, resolve_lora=resolve, progress=lambda s, t: calls.append((s, t)))
    c.extra["progress_calls"] = calls
    return c


def _moving_frames(n: int, size: tuple[int, int], seed: int, shape: str = "blob") -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 40, (h, w, 3))
    out = []
    for i in range(n):
        cy, cx = h * (0.3 + 0.4 * i / max(1, n - 1)), w * 0.5
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (min(h, w) * 0.2) ** 2
        frame = base.copy()
        if shape == "mask":
            frame = np.where(blob[..., None], 255, 0) + 0 * frame
        else:
            frame[blob] = (220, 180, 40)
        out.append(frame.astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("animate-media")
    out: dict[str, Path] = {}
    rng = np.random.default_rng(7)
    char = rng.integers(0, 256, (80, 48, 3), dtype=np.uint8)  # not the clip's aspect: the pipeline fits it
    out["character"] = d / "character.png"
    Image.fromarray(char).save(out["character"])
    for n in (17, 30):
        for key, size, seed, shape in (("pose", (SIZE, SIZE), 1, "blob"), ("face", (32, 32), 2, "blob"),
                                       ("background", (SIZE, SIZE), 3, "blob"), ("mask", (SIZE, SIZE), 4, "mask")):
            out[f"{key}{n}"] = d / f"{key}{n}.mp4"
            write_video(_moving_frames(n, size, seed, shape), out[f"{key}{n}"], fps=FPS)
    # reference videos: one with AAC audio (2 s, longer than the clips), one without audio
    silent = d / "ref_video.mp4"
    write_video(_moving_frames(32, (SIZE, SIZE), 5), silent, fps=FPS)
    tone = write_tone(d / "tone.wav", 2.0, freq=330.0, rate=48000, channels=1, amplitude=0.4)
    out["reference"] = d / "reference.mp4"
    run_ffmpeg(["-y", "-i", ffmpeg_path_arg(silent), "-i", ffmpeg_path_arg(tone), "-map", "0:v:0", "-map", "1:a:0",
                "-c:v", "copy", "-c:a", "aac", "-b:a", "128k", "-fflags", "+bitexact", "-flags:a", "+bitexact",
                "-threads", "1", ffmpeg_path_arg(out["reference"])], what="making the reference")
    out["reference_silent"] = silent
    return out


BASE = {
    "mode": "animate",
    "prompt": "a person dances",
    "negative_prompt": None,
    "width": SIZE,
    "height": SIZE,
    "fps": FPS,
    "steps": 2,
    "guidance": 1.0,
    "shift": 8.0,
    "scheduler": "euler",
    "seed": 11,
    "frame_window": 17,
    "prev_frames": 1,
    "loras": [],
    "precision": "fp32",
    "quantize": None,
    "attention": "sdpa",
    "rms_norm": "pytorch",
    "block_swap": 0,
    "cache": None,
}


def inputs_for(media, n=17, mode="animate", reference="reference"):
    inp = {"character": media["character"], "pose": media[f"pose{n}"], "face": media[f"face{n}"]}
    if mode == "replace":
        inp.update(background=media[f"background{n}"], mask=media[f"mask{n}"])
    if reference:
        inp["reference"] = media[reference]
    return inp


def render(ctx, tmp_path, inputs, name="out", **over):
    out = tmp_path / f"{name}.mp4"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        facts = stage.run({**BASE, **over}, inputs, out, ctx)
    fallback = [w for w in caught if issubclass(w.category, am.AnimateFallbackWarning)]
    return facts, out, fallback


# --------------------------------------------------------------------------- the stage


def test_contract_constants():
    assert (stage.KIND, stage.OUTPUT_EXT, stage.MODEL_ROLE) == ("animate", ".mp4", "animate")
    assert stage.window_count(17, 17, 1) == 1
    assert stage.window_count(33, 17, 1) == 2
    assert stage.window_count(30, 17, 1) == 2
    assert stage.window_count(34, 17, 1) == 3
    assert stage.window_count(100, 77, 5) == 2


def test_animate_mode_frames_size_audio_and_progress(ctx, media, tmp_path):
    facts, out, fallback = render(ctx, tmp_path, inputs_for(media, 17))
    assert not fallback
    info = probe(out)
    assert (info.frames, info.width, info.height) == (17, SIZE, SIZE)
    assert read_frames(out).shape == (17, SIZE, SIZE, 3)
    assert facts["frames"] == 17 and facts["windows"] == 1 and (facts["width"], facts["height"]) == (SIZE, SIZE)
    rt = facts["runtime"]
    assert (rt["precision"], rt["quantization"], rt["attention"], rt["block_swap"]) == ("fp32", None, "sdpa", 0)
    assert rt["fallbacks"] == [] and rt["cache"] is None
    calls = ctx.extra["progress_calls"]
    assert calls[0] == (0, 2) and calls[-1] == (2, 2)

    # the reference's audio is in the output, copied (AAC), cut to the clip's length
    assert facts["audio"]["mode"] == "copied" and info.audio_codec == "aac"
    got, src = read_audio(out), read_audio(media["reference"])
    assert got.shape[1] >= int(48000 * 17 / FPS) - 1024
    assert got.shape[1] <= int(48000 * 17 / FPS) + 2048
    n = min(got.shape[1], src.shape[1])
    assert np.abs(got[:, :n] - src[:, :n]).max() < 1e-6


def test_the_stage_encodes_the_prompts_as_the_pipeline_does(provider, ctx, media, tmp_path):
    """The stage encodes the prompts itself (so the text encoder can leave the device before the
    steps): the embeddings the pipeline denoises with are the ones it makes from the prompt, with
    and without classifier-free guidance; on the CPU nothing moves."""
    from PIL import Image

    from cinesynth_batch.stages.video import encode_prompts

    pipe = provider.get("animate")
    seen = {}

    def grab(_pipe, i, _t, kwargs):
        seen.setdefault("prompt", kwargs["prompt_embeds"].clone())
        if kwargs.get("negative_prompt_embeds") is not None:
            seen.setdefault("negative", kwargs["negative_prompt_embeds"].clone())
        return {}

    frames = [Image.new("RGB", (SIZE, SIZE), (40 * i, 90, 120)) for i in range(5)]
    for guidance in (1.0, 2.0):
        seen.clear()
        with torch.no_grad():
            pipe(image=frames[0], pose_video=frames, face_video=frames, prompt="a dancer", negative_prompt="blur",
                 height=SIZE, width=SIZE, segment_frame_length=5, num_inference_steps=1, guidance_scale=guidance,
                 output_type="pt", callback_on_step_end=grab,
                 callback_on_step_end_tensor_inputs=["prompt_embeds", "negative_prompt_embeds"])
            mine, negative = encode_prompts(pipe, "a dancer", "blur", guidance)
        assert torch.equal(mine, seen["prompt"])
        assert (negative is None) == (guidance == 1.0) == ("negative" not in seen)
        if negative is not None:
            assert torch.equal(negative, seen["negative"])

    facts, _, _ = render(ctx, tmp_path, inputs_for(media, 17))
    assert facts["placement"] == {"moves": [], "swap_experts": False, "bytes_moved": 0,
                                  "kept": ["on the CPU every component is in RAM already"]}


def test_replace_mode(ctx, media, tmp_path):
    facts, out, _ = render(ctx, tmp_path, inputs_for(media, 17, "replace"), mode="replace")
    assert (probe(out).frames, facts["mode"]) == (17, "replace")
    plain, plain_out, _ = render(ctx, tmp_path, inputs_for(media, 17), name="plain")
    assert out.read_bytes() != plain_out.read_bytes()


def test_windows_and_exact_frame_count(ctx, media, tmp_path):
    facts, out, _ = render(ctx, tmp_path, inputs_for(media, 30, reference=None))
    assert facts["windows"] == 2 and facts["frames"] == 30
    assert probe(out).frames == 30 and probe(out).audio_codec is None
    assert ctx.extra["progress_calls"][-1] == (4, 4)
    assert facts["audio"] is None and "video only" in facts["audio_note"]


def test_reference_without_audio_is_video_only(ctx, media, tmp_path):
    facts, out, _ = render(ctx, tmp_path, inputs_for(media, 17, reference="reference_silent"))
    assert facts["audio"] is None and "no audio stream" in facts["audio_note"]
    assert probe(out).audio_codec is None and probe(out).frames == 17


def test_same_seed_same_bytes(ctx, media, tmp_path):
    _, a, _ = render(ctx, tmp_path, inputs_for(media), name="a")
    _, b, _ = render(ctx, tmp_path, inputs_for(media), name="b")
    _, c, _ = render(ctx, tmp_path, inputs_for(media), name="c", seed=12)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_lora_weight_changes_frames_and_zero_restores(ctx, media, tmp_path):
    _, base, _ = render(ctx, tmp_path, inputs_for(media), name="base")
    facts, on, _ = render(ctx, tmp_path, inputs_for(media), name="on",
                          loras=[{"name": "tiny/animate_face", "weight": 1.0}])
    assert facts["runtime"]["loras"] == [{"name": "tiny/animate_face", "weight": 1.0}]
    _, zero, _ = render(ctx, tmp_path, inputs_for(media), name="zero",
                        loras=[{"name": "tiny/animate_face", "weight": 0.0}])
    _, after, _ = render(ctx, tmp_path, inputs_for(media), name="after")
    assert on.read_bytes() != base.read_bytes()
    assert zero.read_bytes() == base.read_bytes()
    assert after.read_bytes() == base.read_bytes()


def test_gpu_settings_fall_back_on_cpu_with_one_warning_each(ctx, media, tmp_path):
    _, plain, _ = render(ctx, tmp_path, inputs_for(media), name="plain")
    facts, out, caught = render(ctx, tmp_path, inputs_for(media), name="fallback",
                                block_swap=20, attention="sageattn")
    settings = sorted(str(w.message).split("=")[0] for w in caught)
    assert settings == ["animate: attention", "animate: block_swap"]
    rt = facts["runtime"]
    assert (rt["quantization"], rt["block_swap"], rt["attention"], rt["precision"]) == (None, 0, "sdpa", "fp32")
    used = {fb["setting"]: (fb["requested"], fb["used"]) for fb in rt["fallbacks"]}
    assert used == {"block_swap": (20, 0), "attention": ("sageattn", "sdpa")}
    assert "using sdpa (torch SDPA)" in {fb["setting"]: fb["reason"] for fb in rt["fallbacks"]}["attention"]
    assert out.read_bytes() == plain.read_bytes()  # the fallbacks are exact

    facts, _, caught = render(ctx, tmp_path, inputs_for(media), name="scaled", quantize="fp8_e4m3fn_scaled")
    assert len(caught) == 1 and "pre-scaled" in str(caught[0].message)
    assert facts["runtime"]["quantization"] == "fp8_e4m3fn"


def test_fp8_storage_runs_on_cpu_and_is_keyed(ctx, media, tmp_path):
    """fp8 storage runs wherever torch has the dtype: no fallback on the CPU, the output changes
    (lossy) and the key names it, as on a GPU."""
    _, plain, _ = render(ctx, tmp_path, inputs_for(media), name="plain")
    facts, out, caught = render(ctx, tmp_path, inputs_for(media), name="fp8", quantize="fp8_e4m3fn")
    assert caught == []
    rt = facts["runtime"]
    assert (rt["quantization"], rt["fallbacks"]) == ("fp8_e4m3fn", [])
    assert rt["fp8_layers"] > 0 and rt["fp8_bytes_saved"] > 0
    assert out.read_bytes() != plain.read_bytes()
    keyed = stage.effective_params({**BASE, "quantize": "fp8_e4m3fn"}, "cpu", "float32")
    assert keyed["quantize"] == "fp8_e4m3fn"
    assert stage.effective_params(BASE, "cpu", "float32")["quantize"] is None


def test_teacache_threshold_zero_is_exact(ctx, media, tmp_path):
    _, plain, _ = render(ctx, tmp_path, inputs_for(media, 30), name="plain", steps=4)
    cache = {"kind": "teacache", "threshold": 0.0, "start_step": 1, "coefficients": True}
    facts, cached, _ = render(ctx, tmp_path, inputs_for(media, 30), name="tc0", steps=4, cache=cache)
    assert cached.read_bytes() == plain.read_bytes()
    stats = facts["runtime"]["cache"]
    assert (stats["computed"], stats["skipped"], stats["loops"]) == (8, 0, 2)
    assert stats["indicator"] == "timestep_embedding" and "borrowed" in stats["coefficients"]

    eager = {**cache, "threshold": 2.0, "coefficients": False}   # the largest threshold a spec allows
    facts, skipped, _ = render(ctx, tmp_path, inputs_for(media, 30), name="tc", steps=4, cache=eager)
    stats = facts["runtime"]["cache"]
    assert stats["skipped"] > 0 and stats["computed"] + stats["skipped"] == 8
    assert probe(skipped).frames == 30
    assert stats["branches"]["cond"]["last_window"].startswith("C")
    registry = ctx.models.get("animate").transformer._diffusers_hook
    assert registry.get_hook("cinesynth_teacache") is None
    _, again, _ = render(ctx, tmp_path, inputs_for(media, 30), name="again", steps=4)
    assert again.read_bytes() == plain.read_bytes()  # TeaCache removed after the run


@pytest.mark.parametrize("change, message", [
    ({"face": "face30"}, "same frame count"),
    ({"mask": None}, r"needs input\(s\) .mask."),
    ({"pose": "missing"}, "not found"),
])
def test_bad_inputs(ctx, media, tmp_path, change, message):
    inputs = inputs_for(media, 17, "replace")
    for key, value in change.items():
        if value is None:
            inputs.pop(key)
        elif value == "missing":
            inputs[key] = tmp_path / "nope.mp4"
        else:
            inputs[key] = media[value]
    with pytest.raises(StageError, match=message):
        stage.run({**BASE, "mode": "replace"}, inputs, tmp_path / "x.mp4", ctx)
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("over, message", [
    ({"frame_window": 16}, "4k\\+1"),
    ({"prev_frames": 3}, "1 or 5"),
    ({"width": 72}, "multiple of 16"),
    ({"mode": "swap"}, "mode"),
    ({"quantize": "int4"}, "quantize"),
    ({"attention": "xformers"}, "attention"),
    ({"block_swap": 41}, "block_swap"),
    ({"rms_norm": "cudnn"}, "rms_norm"),
    ({"cache": {"kind": "magcache"}}, "cache.kind"),
])
def test_bad_params(ctx, media, tmp_path, over, message):
    with pytest.raises(StageError, match=message):
        stage.run({**BASE, **over}, inputs_for(media), tmp_path / "x.mp4", ctx)


# --------------------------------------------------------------------------- runtime placement


def _forward(transformer, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 3, 8, 8, generator=g)
    pose = torch.randn(1, 16, 2, 8, 8, generator=g)
    face = torch.randn(1, 3, 5, 16, 16, generator=g)
    text = torch.randn(1, 10, 16, generator=g)
    image = torch.randn(1, 17, 16, generator=g)
    with torch.no_grad():
        out = transformer(hidden_states=x.to(dtype), timestep=torch.tensor([500.0]),
                          encoder_hidden_states=text.to(dtype), encoder_hidden_states_image=image.to(dtype),
                          pose_hidden_states=pose.to(dtype), face_pixel_values=face.to(dtype), return_dict=False)[0]
    return out.float()


def test_fp8_and_block_swap_placement_is_undone_exactly(model_dir, lora_root):
    """The GPU placements, driven on the CPU through ``AnimateRuntime.apply`` (no capability checks)."""
    pipe = load_animate_pipeline(model_dir)
    tr = pipe.transformer
    base = _forward(tr)
    runtime = am.AnimateRuntime.of(pipe)

    runtime.apply(am.RuntimeSettings("fp32", quantize="fp8_e4m3fn", block_swap=1), "cpu")
    rep = runtime.report()
    assert rep["fp8_layers"] == len(fp8_targets(tr)) > 0 and rep["swapped_blocks"] == "0"
    assert tr.dtype == torch.float32
    assert tr.blocks[1].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert tr.blocks[1].attn1.to_q.bias.dtype == torch.float8_e4m3fn  # diffusers casts the whole layer
    assert tr.proj_out.weight.dtype == torch.float32                 # diffusers' skip list is honoured
    assert tr.blocks[0]._diffusers_hook.get_hook("group_offloading") is not None   # the shared swap path
    assert getattr(tr.blocks[1], "_diffusers_hook", None) is None or \
        tr.blocks[1]._diffusers_hook.get_hook("group_offloading") is None
    fp8 = _forward(tr)
    err = float((fp8 - base).norm() / base.norm())
    assert 0 < err < 0.1

    runtime.apply(am.RuntimeSettings("bf16"), "cpu")  # a different setting rebuilds from the rest copy
    assert tr.dtype == torch.bfloat16 and runtime.report()["fp8_layers"] == 0
    runtime.release()
    assert torch.equal(_forward(tr), base)
    assert all(p.dtype == torch.float32 for p in tr.parameters())
    assert not tr._diffusers_hook._hook_order

    # a LoRA that must be loaded while a placement is active: loaded into the rest copy (fp32)
    lora = am.animate_lora_requests([{"name": "tiny/animate_face", "weight": 1.0}],
                                    lambda n, f: lora_root / f / f"{n}.safetensors")
    runtime.apply(am.RuntimeSettings("fp32", quantize="fp8_e4m3fn"), "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", am.AnimateFallbackWarning)
        am.prepare_animate_run(pipe, am.RuntimeSettings("fp32"), lora, device="cpu")
    lora_params = [p for n, p in tr.named_parameters() if "lora_" in n]
    assert lora_params and all(p.dtype == torch.float32 for p in lora_params)
    assert not torch.equal(_forward(tr), base)
    am.prepare_animate_run(pipe, am.RuntimeSettings("fp32"), [], device="cpu")
    assert torch.equal(_forward(tr), base)
    am.release_animate_runtime(pipe)


@pytest.mark.parametrize("block_swap,fuse", [(0, False), (1, False), (0, True)])
def test_fp8_blocks_are_cast_one_at_a_time_while_the_working_copy_is_built(model_dir, lora_root, monkeypatch,
                                                                             block_swap, fuse):
    """The working copy's peak: whenever a layer is cast to fp8, at most one block holds weights
    in the run dtype (built resident blocks wait as fp8, not in bf16 until the end)."""
    from cinesynth_batch.runtime import memory
    from cinesynth_batch.runtime.lora import apply_loras

    pipe = load_animate_pipeline(model_dir)
    tr = pipe.transformer
    layers = [[layer for _, layer in fp8_targets(block)] for block in tr.blocks]
    assert len(layers) == 2 and all(layers)
    counts = []
    real = memory.to_fp8

    def spy(layer):
        real(layer)
        counts.append(sum(any(lay.weight.dtype == torch.bfloat16 for lay in block) for block in layers))

    monkeypatch.setattr(memory, "to_fp8", spy)
    monkeypatch.setattr(am, "to_fp8", spy)
    active = {}
    if fuse:
        active = apply_loras(pipe, am.animate_lora_requests([{"name": "tiny/animate_face", "weight": 0.7}],
                                                            lambda n, f: lora_root / f / f"{n}.safetensors"))
    runtime = am.AnimateRuntime.of(pipe)
    runtime.apply(am.RuntimeSettings("bf16", quantize="fp8_e4m3fn", block_swap=block_swap), "cpu", fuse=active)
    assert counts and max(counts) == 1 and counts[-1] == 0
    assert all(lay.weight.dtype == torch.float8_e4m3fn for block in layers for lay in block)
    runtime.release()


def test_the_rest_copy_counts_as_host_ram_and_leaving_the_device_drops_the_working_copy(model_dir):
    from cinesynth_batch.runtime.swap import host_nbytes, model_nbytes, swap_model

    pipe = load_animate_pipeline(model_dir)
    tr = pipe.transformer
    base = _forward(tr)
    at_rest, weights = host_nbytes(pipe), model_nbytes(tr)
    assert at_rest == model_nbytes(pipe)                  # on the CPU everything is host RAM
    runtime = am.AnimateRuntime.of(pipe)
    runtime.apply(am.RuntimeSettings("bf16", quantize="fp8_e4m3fn", block_swap=1), "cpu")
    rest = sum(t.numel() * t.element_size() for t in runtime.rest_tensors())
    assert rest == weights                                # the fp32 rest copy, beside the working copy
    assert host_nbytes(pipe) > at_rest                    # both counted
    swap_model(pipe, "host")                              # as a residency sends it to pinned RAM
    assert runtime.current is None and runtime.rest_tensors() == []
    assert all(p.dtype == torch.float32 for p in tr.parameters())
    assert torch.equal(_forward(tr), base)


def test_fused_lora_matches_unfused_on_every_placement_and_leaves_the_rest_copy(model_dir, lora_root):
    """LoRAs added into the working copy's weights compute what the adapters compute beside the
    weights (resident and swapped blocks, fp8 storage too), the layers skip their adapters while
    fused, and releasing gives back the rest copy's exact output."""
    from cinesynth_batch.runtime.lora import apply_loras

    pipe = load_animate_pipeline(model_dir)
    tr = pipe.transformer
    base = _forward(tr)
    runtime = am.AnimateRuntime.of(pipe)
    lora = am.animate_lora_requests([{"name": "tiny/animate_face", "weight": 0.7}],
                                    lambda n, f: lora_root / f / f"{n}.safetensors")
    active = apply_loras(pipe, lora)
    for settings, tol in ((am.RuntimeSettings("fp32", block_swap=1), 1e-5),
                          (am.RuntimeSettings("fp32", quantize="fp8_e4m3fn", block_swap=1), 0.1)):
        runtime.apply(settings, "cpu")
        unfused = _forward(tr)
        runtime.apply(settings, "cpu", fuse=active)
        rep = runtime.report()
        assert rep["loras_fused"] == 1 and rep["fused_layers"] > 0 and rep["swapped_blocks"] == "0"
        merged = [m for m in tr.modules() if getattr(m, "merged_adapters", None)]
        assert len(merged) == rep["fused_layers"]
        assert any(m in set(tr.blocks[0].modules()) for m in merged)          # a swapped block
        assert any(m in set(tr.blocks[1].modules()) for m in merged)          # a resident one
        fused = _forward(tr)
        err = float((fused - unfused).norm() / unfused.norm())
        assert err < tol
        assert float((fused - base).norm() / base.norm()) > 10 * err          # the LoRA is there
    runtime.release()
    assert not any(getattr(m, "merged_adapters", None) for m in tr.modules())
    apply_loras(pipe, [])
    assert torch.equal(_forward(tr), base)


def test_lora_fuse_on_renders_within_one_level_and_off_is_exact(ctx, media, tmp_path):
    lo = [{"name": "tiny/animate_face", "weight": 1.0}]
    _, base, _ = render(ctx, tmp_path, inputs_for(media), name="base")
    facts, off, _ = render(ctx, tmp_path, inputs_for(media), name="off", loras=lo, lora_fuse="off")
    assert facts["runtime"]["lora_fuse"] == {"fused": False, "why": "lora_fuse: off"}
    facts, auto, _ = render(ctx, tmp_path, inputs_for(media), name="auto", loras=lo)
    assert facts["runtime"]["lora_fuse"] == {"fused": False, "why": "auto fuses on CUDA only"}
    assert auto.read_bytes() == off.read_bytes()
    facts, on, _ = render(ctx, tmp_path, inputs_for(media), name="on", loras=lo, lora_fuse="on")
    assert facts["runtime"]["lora_fuse"]["fused"] and facts["runtime"]["fused_layers"] > 0
    a, b = read_frames(on).astype(int), read_frames(off).astype(int)
    near, far = np.abs(a - b).mean(), np.abs(a - read_frames(base).astype(int)).mean()
    assert a.shape == b.shape and near < 0.25 and far > 40 * near      # rounding, against the LoRA's effect
    _, after, _ = render(ctx, tmp_path, inputs_for(media), name="after")
    assert after.read_bytes() == base.read_bytes()


def test_teacache_skip_replays_blocks_and_face_adapters(model_dir):
    """Two identical calls: the second is skipped and must give the first's output back. With the
    plain Wan adapter the face adapters would run again on a skipped step and add twice."""
    from cinesynth_batch.runtime.teacache import TeaCacheConfig, WanDiffusersAdapter, apply_teacache

    tr = load_animate_pipeline(model_dir).transformer
    config = TeaCacheConfig(rel_l1_thresh=1.0, start_step=1, use_coefficients=False)
    for adapter, close in ((am.WanAnimateTeaCacheAdapter(), True), (WanDiffusersAdapter(), False)):
        handle = apply_teacache(tr, config, adapter=adapter)
        try:
            with tr.cache_context("cond"):  # one branch (without a context, equal timesteps pair as cond/uncond)
                first = _forward(tr)
            with tr.cache_context("cond"):
                second = _forward(tr)
            assert handle.totals() == (1, 1)
        finally:
            handle.remove()
        err = float((second - first).norm() / first.norm())
        assert (err < 1e-5) == close, err


def test_teacache_adapter_refuses_a_trailing_face_adapter():
    from diffusers import WanAnimateTransformer3DModel

    from cinesynth_batch.catalog.tiny.animate import tiny_transformer_config

    cfg = {**tiny_transformer_config(), "num_layers": 3}
    model = WanAnimateTransformer3DModel(**cfg)
    with pytest.raises(ValueError, match="last block"):
        am.WanAnimateTeaCacheAdapter().blocks(model)


def test_tiny_model_is_small_and_deterministic(model_dir, tmp_path):
    again = build_tiny_animate(tmp_path / "again")
    assert tree_digest(again) == tree_digest(model_dir)
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert size < 4 * 1024 * 1024
