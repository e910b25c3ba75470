"""TeaCache hooks on tiny random Wan transformers, driven by a hand-written flow-matching loop
(and once through a tiny ``WanImageToVideoPipeline`` with two experts)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

from cinesynth_batch.runtime.teacache import (
    COEFFICIENTS,
    TeaCacheConfig,
    WanDiffusersAdapter,
    WanS2VAdapter,
    apply_teacache,
    apply_teacache_to_pipeline,
    default_adapter,
    expert_step_counts,
    remove_teacache,
)

torch.set_flush_denormal(True)

STEPS = 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_wan(seed: int, layers: int = 3):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=32,
        ffn_dim=32,
        num_layers=layers,
        cross_attn_norm=True,
        rope_max_seq_len=64,
    ).eval()


def denoise(models, steps=STEPS, boundary=None, contexts=True, guidance=3.0, seed=0, record=None, frames=3):
    """Flow-matching Euler with classifier-free guidance: a cond and an uncond call per step.
    ``boundary`` (timestep): ``models[0]`` at or above it, ``models[1]`` below (Wan2.2 A14B style)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, frames, 8, 8, generator=gen)
    cond = torch.randn(1, 8, 16, generator=gen)
    uncond = torch.randn(1, 8, 16, generator=gen)
    shift = 5.0
    s = torch.linspace(1, 0, steps + 1)
    sigmas = shift * s / (1 + (shift - 1) * s)
    with torch.no_grad():
        for i in range(steps):
            t = sigmas[i] * 1000
            model = models[0] if boundary is None or t >= boundary else models[1]
            preds = []
            for name, emb in (("cond", cond), ("uncond", uncond)):
                kw = dict(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=emb, return_dict=False)
                if contexts:
                    with model.cache_context(name):
                        preds.append(model(**kw)[0])
                else:
                    preds.append(model(**kw)[0])
            if record is not None:
                record.append(preds)
            v = preds[1] + guidance * (preds[0] - preds[1])
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def wan():
    return tiny_wan(0)


@pytest.fixture(scope="module")
def baseline(wan):
    return denoise([wan])


@pytest.fixture
def handle_guard():
    """Removes whatever a test installed, even when it fails."""
    handles = []
    yield handles
    for h in handles:
        h.remove()


# --------------------------------------------------------------------------- config


def test_presets_config_and_polynomial():
    # Every published Wan2.1 preset brings both fits; the default indicator is the `e` fit.
    for name, sets in COEFFICIENTS.items():
        assert set(sets) == {"timestep_embedding", "timestep_proj"}, name
        assert all(len(cs.values) == 5 and cs.source for cs in sets.values())
    cfg = TeaCacheConfig()
    assert (cfg.rel_l1_thresh, cfg.start_step, cfg.model) == (0.15, 1, "wan2.1-i2v-14b-480p")
    assert cfg.resolved_indicator == "timestep_embedding"
    assert cfg.coefficient_set.values[0] == pytest.approx(-3.02331670e02)
    x = 0.2
    assert cfg.rescale(x) == pytest.approx(float(np.poly1d(cfg.coefficient_set.values)(x)))
    assert cfg.rescale(0.01) == 0.0  # the polynomial is negative there: clamped
    assert TeaCacheConfig(use_coefficients=False).resolved_indicator == "modulated_input"
    assert TeaCacheConfig(use_coefficients=False).rescale(0.07) == 0.07
    assert TeaCacheConfig(coefficients=[2.0, 0.0]).rescale(0.1) == pytest.approx(0.2)
    ret = TeaCacheConfig(model="wan2.1-i2v-14b-720p", indicator="timestep_proj")
    assert ret.coefficient_set.values == COEFFICIENTS["wan2.1-i2v-14b-720p"]["timestep_proj"].values
    assert "borrowed" in COEFFICIENTS["wan2.2-i2v-a14b"]["timestep_embedding"].source
    with pytest.raises(ValueError, match="unknown TeaCache model"):
        TeaCacheConfig(model="wan9")
    with pytest.raises(ValueError, match="no published"):
        TeaCacheConfig(indicator="modulated_input")
    for bad in (dict(rel_l1_thresh=-1), dict(start_step=-1), dict(num_steps=0), dict(indicator="x"),
                dict(coefficients=[]), dict(coefficients=[float("nan")])):
        with pytest.raises(ValueError):
            TeaCacheConfig(**bad)


def test_adapter_detection_and_modulated_input_matches_the_block(wan):
    assert isinstance(default_adapter(wan), WanDiffusersAdapter)
    with pytest.raises(TypeError):
        default_adapter(nn.Linear(2, 2))
    # The adapter's modulated input is exactly what the first block feeds its self-attention.
    seen = {}
    block = wan.blocks[0]

    def keep(key, value):
        seen.setdefault(key, value)

    h1 = block.attn1.register_forward_pre_hook(lambda m, args: keep("attn_in", args[0]))
    h2 = block.register_forward_pre_hook(lambda m, args: keep("block_args", args))
    try:
        denoise([wan], steps=1)
    finally:
        h1.remove()
        h2.remove()
    mod = WanDiffusersAdapter().modulated_input(block, seen["block_args"], {})
    assert torch.equal(mod, seen["attn_in"])


# --------------------------------------------------------------------------- exactness and skipping


@pytest.mark.parametrize(
    "cfg",
    [
        TeaCacheConfig(rel_l1_thresh=0.0, use_coefficients=False),  # modulated input, raw distance
        TeaCacheConfig(rel_l1_thresh=0.0),  # preset: timestep embedding + I2V-480P polynomial
        TeaCacheConfig(rel_l1_thresh=0.0, indicator="timestep_proj", start_step=0),
    ],
    ids=["modulated", "preset-e", "preset-e0"],
)
def test_threshold_zero_is_bit_identical(wan, baseline, cfg, handle_guard):
    handle = apply_teacache(wan, cfg)
    handle_guard.append(handle)
    out = denoise([wan])
    assert torch.equal(out, baseline)
    s = handle.stats()["transformer"]
    assert (s["computed"], s["skipped"]) == (2 * STEPS, 0)
    assert s["branches"]["cond"]["pattern"] == "C" * STEPS


def test_threshold_skips_and_stays_close(wan, baseline, handle_guard):
    handle = apply_teacache(wan, TeaCacheConfig(rel_l1_thresh=0.15, use_coefficients=False))
    handle_guard.append(handle)
    out = denoise([wan])
    s = handle.stats()["transformer"]
    # The tiny model's modulated input moves ~0.04-0.14 (relative L1) per step, so 0.15 skips
    # 7 of 12 steps per branch: pattern CSSSCSSCSCSC.
    assert s["branches"]["cond"]["pattern"] == "CSSSCSSCSCSC"
    assert (s["computed"], s["skipped"]) == (10, 14)
    assert handle.totals() == (10, 14)
    assert s["skip_ratio"] == pytest.approx(14 / 24)
    assert "transformer 10/24 computed (cond 5/12, uncond 5/12)" in handle.summary()
    assert not torch.equal(out, baseline)
    # Relative L2 to the uncached result: 0.0051 measured; 0.02 allowed.
    assert 0 < rel_l2(out, baseline) < 0.02


def test_start_step_always_computes_and_last_step_is_forced(wan, handle_guard):
    huge = 1e9  # everything that is allowed to skip does
    handle = apply_teacache(wan, TeaCacheConfig(rel_l1_thresh=huge, start_step=4, use_coefficients=False))
    handle_guard.append(handle)
    denoise([wan])
    assert handle.stats()["transformer"]["branches"]["cond"]["pattern"] == "CCCC" + "S" * (STEPS - 4)
    handle.set_num_steps(STEPS)  # known step count: the last one computes too
    denoise([wan])
    for branch in ("cond", "uncond"):
        assert handle.stats()["transformer"]["branches"][branch]["pattern"] == "CCCC" + "S" * (STEPS - 5) + "C"
    handle.remove()
    handle = apply_teacache(wan, TeaCacheConfig(rel_l1_thresh=huge, start_step=0, use_coefficients=False))
    handle_guard.append(handle)
    denoise([wan])  # start_step 0: the first call still computes (nothing cached yet)
    assert handle.stats()["transformer"]["branches"]["cond"]["pattern"] == "C" + "S" * (STEPS - 1)
    handle.remove()
    cfg = TeaCacheConfig(rel_l1_thresh=huge, use_coefficients=False, max_skip_steps=2)
    handle = apply_teacache(wan, cfg)
    handle_guard.append(handle)
    denoise([wan])
    assert handle.stats()["transformer"]["branches"]["cond"]["pattern"] == "CSSCSSCSSCSS"


def test_cond_and_uncond_keep_separate_state(wan, handle_guard):
    cfg = TeaCacheConfig(rel_l1_thresh=1e9, use_coefficients=False)
    handle = apply_teacache(wan, cfg)
    handle_guard.append(handle)
    calls = []
    out_ctx = denoise([wan], record=calls)
    branches = handle.stats()["transformer"]["branches"]
    assert set(branches) == {"cond", "uncond"}
    assert branches["cond"]["pattern"] == branches["uncond"]["pattern"] == "C" + "S" * (STEPS - 1)
    # On a skipped step both branches see the same block input; only their own cached residuals
    # (different text conditioning) tell them apart. A shared state would give equal predictions.
    for cond_pred, uncond_pred in calls[1:]:
        assert not torch.allclose(cond_pred, uncond_pred)
    # Without `cache_context` the branch comes from call parity at each timestep: same result.
    handle.reset()
    assert handle.stats()["transformer"]["computed"] == 0
    out_parity = denoise([wan], contexts=False)
    assert torch.equal(out_parity, out_ctx)
    assert handle.stats()["transformer"]["branches"] == branches


def test_remove_restores_exact_uncached_behaviour(wan, baseline, handle_guard):
    handle = apply_teacache(wan, TeaCacheConfig(rel_l1_thresh=0.3, use_coefficients=False))
    handle_guard.append(handle)
    with pytest.raises(ValueError, match="already applied"):
        apply_teacache(wan, TeaCacheConfig())
    assert not torch.equal(denoise([wan]), baseline)
    handle.remove()
    assert remove_teacache(wan) is False
    for module in [wan, *wan.blocks, wan.condition_embedder.time_embedder]:
        registry = getattr(module, "_diffusers_hook", None)
        assert registry is None or not registry.hooks
    assert torch.equal(denoise([wan]), baseline)


def test_new_loop_resets_automatically(wan, handle_guard):
    handle = apply_teacache(wan, TeaCacheConfig(rel_l1_thresh=0.15, use_coefficients=False))
    handle_guard.append(handle)
    first = denoise([wan])
    pattern = handle.stats()["transformer"]["branches"]["cond"]["pattern"]
    second = denoise([wan])  # no reset: the timestep going back up starts a fresh loop
    assert torch.equal(first, second)
    s = handle.stats()["transformer"]
    assert s["loops"] == 2 and s["branches"]["cond"]["pattern"] == pattern
    assert (s["computed"], s["skipped"]) == (20, 28)  # counts add up until reset()
    handle.reset()
    assert handle.stats()["transformer"]["computed"] == 0
    handle.remove()
    # A different latent size starts a new loop too, even at a lower timestep: no stale residual.
    handle = apply_teacache(wan, TeaCacheConfig(rel_l1_thresh=1e9, use_coefficients=False))
    handle_guard.append(handle)
    text = torch.randn(1, 8, 16)
    with torch.no_grad(), wan.cache_context("cond"):
        for t, frames in ((500.0, 3), (400.0, 3), (300.0, 2), (200.0, 2)):
            wan(torch.randn(1, 4, frames, 8, 8), torch.tensor([t]), text, return_dict=False)
    s = handle.stats()["transformer"]
    assert s["loops"] == 2 and s["branches"]["cond"]["pattern"] == "CS"  # last loop only
    assert (s["computed"], s["skipped"]) == (2, 2)


# --------------------------------------------------------------------------- two experts


def test_two_transformers_keep_independent_state(handle_guard):
    high, low = tiny_wan(1), tiny_wan(2)
    boundary = 890.0  # 12 shifted steps: 5 at or above, 7 below
    cfg = TeaCacheConfig(rel_l1_thresh=1e9, use_coefficients=False)
    pipe = types.SimpleNamespace(transformer=high, transformer_2=low)
    handle = apply_teacache_to_pipeline(pipe, cfg)
    handle_guard.append(handle)
    assert handle.names == ["transformer", "transformer_2"]
    denoise([high, low], boundary=boundary)
    s = handle.stats()
    # transformer_2 computes its first call although transformer holds a residual: its own state.
    assert s["transformer"]["branches"]["cond"]["pattern"] == "CSSSS"
    assert s["transformer_2"]["branches"]["cond"]["pattern"] == "CSSSSSS"
    assert (s["transformer"]["computed"], s["transformer"]["skipped"]) == (2, 8)
    assert (s["transformer_2"]["computed"], s["transformer_2"]["skipped"]) == (2, 12)
    # exclusive: once transformer_2 runs, transformer's cached tensors are dropped.
    assert not handle._controllers["transformer"].branches
    assert set(handle._controllers["transformer_2"].branches) == {"cond", "uncond"}
    handle.set_num_steps({"transformer": 5, "transformer_2": 7})
    denoise([high, low], boundary=boundary)
    s = handle.stats()
    assert s["transformer"]["branches"]["uncond"]["pattern"] == "CSSSC"
    assert s["transformer_2"]["branches"]["uncond"]["pattern"] == "CSSSSSC"
    handle.remove()
    assert remove_teacache(high) is False and remove_teacache(low) is False


def test_wan_i2v_pipeline_two_experts(handle_guard):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from PIL import Image

    def expert(seed):
        torch.manual_seed(seed)
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=36, out_channels=16,
            text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=64,
        ).eval()

    torch.manual_seed(1)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True],
    ).eval()
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, image_processor=None,
        image_encoder=None, transformer=expert(2), transformer_2=expert(3), boundary_ratio=0.9,
    )
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 8, 16, generator=gen), torch.randn(1, 8, 16, generator=gen)
    image = Image.new("RGB", (32, 32), (120, 60, 30))

    def run():
        return pipe(
            image=image, prompt_embeds=pos, negative_prompt_embeds=neg, height=32, width=32, num_frames=5,
            num_inference_steps=10, guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).frames

    baseline = run()
    assert expert_step_counts(pipe, 10) == {"transformer": 4, "transformer_2": 6}

    handle = apply_teacache_to_pipeline(pipe, TeaCacheConfig(rel_l1_thresh=0.0, use_coefficients=False),
                                        num_inference_steps=10)
    handle_guard.append(handle)
    assert torch.equal(run(), baseline)
    handle.remove()

    handle = apply_teacache_to_pipeline(pipe, TeaCacheConfig(rel_l1_thresh=0.3, use_coefficients=False),
                                        num_inference_steps=10)
    handle_guard.append(handle)
    out = run()
    s = handle.stats()  # survives the pipeline's own end-of-call reset of stateful hooks
    assert s["transformer"]["branches"]["cond"]["pattern"] == "CSSC"
    assert s["transformer_2"]["branches"]["uncond"]["pattern"] == "CSSSSC"
    assert handle.totals() == (8, 12)
    assert 0 < rel_l2(out, baseline) < 0.05  # 0.0165 measured
    assert torch.equal(run(), out)  # next video: fresh state, same decisions
    assert handle.stats()["transformer"]["loops"] == 2
    handle.remove()
    assert torch.equal(run(), baseline)


# --------------------------------------------------------------------------- another Wan layout


class _OfficialBlock(nn.Module):
    """A minimal block with the official Wan S2V names and two modulation segments."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.cross = nn.Linear(dim, dim)

    def forward(self, x, e, context):
        e0, seg = e
        shift, scale, gate = [m.squeeze(1) for m in (self.modulation.unsqueeze(2) + e0).chunk(6, dim=1)[:3]]
        n = self.norm1(x)
        h = torch.cat([n[:, :seg] * (1 + scale[:, 0:1]) + shift[:, 0:1],
                       n[:, seg:] * (1 + scale[:, 1:2]) + shift[:, 1:2]], dim=1)
        self.last_modulated = h
        x = x + self.ffn(h) * gate[:, 0:1]
        return x + self.cross(context).mean(dim=1, keepdim=True)


class _OfficialS2VLike(nn.Module):
    def __init__(self, dim: int = 16, layers: int = 3, seg: int = 20):
        super().__init__()
        self.dim, self.seg = dim, seg
        self.embed = nn.Linear(4, dim)
        self.time_embedding = nn.Sequential(nn.Linear(32, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(_OfficialBlock(dim) for _ in range(layers))
        self.inject = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 4)

    def after_transformer_block(self, block_idx, hidden_states):
        if block_idx == 1:  # in place, like the official audio injection
            hidden_states[:, : self.seg] = hidden_states[:, : self.seg] + self.inject(hidden_states[:, : self.seg])
        return hidden_states

    def forward(self, x, t, context):
        freqs = torch.exp(-torch.arange(16) / 16 * 9.2)[None] * t[:, None]
        e = self.time_embedding(torch.cat([freqs.cos(), freqs.sin()], dim=1))
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))
        kwargs = dict(e=[e0.unsqueeze(2).repeat(1, 1, 2, 1), self.seg], context=context)
        h = self.embed(x)
        for idx, block in enumerate(self.blocks):
            h = block(h, **kwargs)
            h = self.after_transformer_block(idx, h)
        return self.head(h)


def _official_loop(model, steps=10):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 24, 4, generator=gen)
    cond, uncond = torch.randn(1, 5, 16, generator=gen), torch.randn(1, 5, 16, generator=gen)
    ts = torch.linspace(1000, 0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            vc = model(x, ts[i : i + 1], cond)
            vu = model(x, ts[i : i + 1], uncond)
            x = x + (ts[i + 1] - ts[i]) / 1000 * (vu + 2.0 * (vc - vu))
    return x


def test_official_wan_layout_through_the_s2v_adapter(handle_guard):
    torch.manual_seed(5)
    model = _OfficialS2VLike().eval()
    assert isinstance(default_adapter(model), WanS2VAdapter)
    baseline = _official_loop(model)
    handle = apply_teacache(model, TeaCacheConfig(rel_l1_thresh=0.0, use_coefficients=False))
    handle_guard.append(handle)
    assert torch.equal(_official_loop(model), baseline)
    # The adapter's modulated input is the block's own (both segments).
    block = model.blocks[0]
    x = torch.randn(1, 24, 16)
    e0 = torch.randn(1, 6, 2, 16)
    block(x, e=[e0, model.seg], context=torch.randn(1, 5, 16))
    assert torch.equal(WanS2VAdapter().modulated_input(block, (x,), {"e": [e0, model.seg]}), block.last_modulated)
    handle.remove()

    injected = []
    model.inject.register_forward_hook(lambda m, a, o: injected.append(1))
    handle = apply_teacache(model, TeaCacheConfig(rel_l1_thresh=0.3, use_coefficients=False))
    handle_guard.append(handle)
    out = _official_loop(model)
    s = handle.stats()["transformer"]
    assert s["branches"]["cond"]["pattern"] == s["branches"]["uncond"]["pattern"] == "CSSSSSCSSS"
    assert len(injected) == s["computed"] == 4  # the between-block injection is part of the region
    assert 0 < rel_l2(out, baseline) < 0.03  # 0.0086 measured
    handle.remove()
    assert "after_transformer_block" not in model.__dict__
    assert torch.equal(_official_loop(model), baseline)
    # The preset indicators come from `time_embedding` / `time_projection` outputs.
    handle = apply_teacache(model, TeaCacheConfig(rel_l1_thresh=0.0, indicator="timestep_proj"))
    handle_guard.append(handle)
    assert torch.equal(_official_loop(model), baseline)
    assert handle.stats()["transformer"]["indicator"] == "timestep_proj"
