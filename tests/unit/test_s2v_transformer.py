"""The Wan2.2-S2V transformer: checkpoint format (14B key/shape list from the reference model),
config names, forward on a tiny config, sharded save/load, LoRA and conditioning inputs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from cinesynth_batch.models.s2v.audio_inject import audio_injector_slots  # noqa: E402
from cinesynth_batch.models.s2v.transformer import (  # noqa: E402
    S2V_14B_CONFIG,
    S2V_14B_MOTION_FRAMES,
    WanS2VTransformer3DModel,
    describe_inputs,
)
from cinesynth_batch.catalog.tiny.s2v import tiny_s2v_config  # noqa: E402

torch.set_flush_denormal(True)

KEYS_FILE = Path(__file__).resolve().parents[1] / "data" / "s2v_14b_keys.txt"

# The __init__ arguments of the reference WanModel_S2V (wan/modules/s2v/model_s2v.py).
REFERENCE_ARGS = {
    "cond_dim", "audio_dim", "num_audio_token", "enable_adain", "adain_mode", "audio_inject_layers",
    "zero_init", "zero_timestep", "enable_motioner", "add_last_motion", "enable_tsm",
    "trainable_token_pos_emb", "motion_token_num", "enable_framepack", "framepack_drop_mode",
    "model_type", "patch_size", "text_len", "in_dim", "dim", "ffn_dim", "freq_dim", "text_dim",
    "out_dim", "num_heads", "num_layers", "window_size", "qk_norm", "cross_attn_norm", "eps",
}  # fmt: skip

# Tiny segment: 3 latent frames of 16x16 latents; audio for (73, 19) motion frames.
B, F, H, W = 2, 3, 16, 16
MP, ML = S2V_14B_MOTION_FRAMES
T_AUDIO = 4 * (F + ML) - MP  # ceil(ceil((T + 73) / 2) / 2) - 19 == F


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-degenerate weights (the default init zeros the output head, like the reference)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> WanS2VTransformer3DModel:
    torch.manual_seed(0)
    return _randomize(WanS2VTransformer3DModel(**tiny_s2v_config()))


@pytest.fixture(scope="module")
def inputs() -> dict:
    cfg = tiny_s2v_config()
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(B, cfg["in_dim"], F, H, W, generator=g),
        "timestep": torch.tensor([900.0, 250.0]),
        "encoder_hidden_states": torch.randn(B, 7, cfg["text_dim"], generator=g),
        "ref_latents": torch.randn(B, cfg["in_dim"], 1, H, W, generator=g),
        "motion_latents": torch.randn(B, cfg["in_dim"], ML, H, W, generator=g),
        "audio_features": torch.randn(B, cfg["num_audio_layers"], cfg["audio_dim"], T_AUDIO, generator=g),
        "cond_states": torch.randn(B, cfg["cond_dim"], F, H, W, generator=g),
        "motion_frames": (MP, ML),
    }


def _run(model, inputs, **over) -> torch.Tensor:
    with torch.no_grad():
        return model(**{**inputs, **over}).sample


# --------------------------------------------------------------------------- checkpoint format


def _reference_keys() -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split("\t")
        keys[name] = tuple(int(d) for d in shape.split(",") if d)
    return keys


def test_14b_state_dict_matches_reference_keys():
    expected = _reference_keys()
    assert len(expected) == 1260
    with torch.device("meta"):
        model = WanS2VTransformer3DModel(**S2V_14B_CONFIG)
    state = model.state_dict()
    ours = {k: tuple(v.shape) for k, v in state.items()}
    assert sorted(set(expected) - set(ours)) == []  # missing
    assert sorted(set(ours) - set(expected)) == []  # extra
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
    # Everything in the checkpoint is a parameter; the model holds no buffers.
    assert len(dict(model.named_parameters())) == len(state)
    assert list(model.buffers()) == []
    # LoRA targets keep the Wan names.
    for name in ("blocks.0.self_attn.q", "blocks.39.cross_attn.o", "blocks.3.ffn.0", "audio_injector.injector.11.k"):
        assert isinstance(model.get_submodule(name), torch.nn.Linear)


def test_config_json_uses_reference_names(tmp_path):
    with torch.device("meta"):
        model = WanS2VTransformer3DModel(**S2V_14B_CONFIG)
    model.save_config(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert REFERENCE_ARGS <= set(saved)
    assert set(saved) - REFERENCE_ARGS - {"num_audio_layers"} == {"_class_name", "_diffusers_version"}
    for k, v in S2V_14B_CONFIG.items():
        assert saved[k] == (list(v) if isinstance(v, tuple) else v), k


def test_reference_style_config_loads(tmp_path):
    # A config.json as the reference writes it: its class name, no patch_size/text_dim/
    # window_size/qk_norm/cross_attn_norm (ignored there), extra pipeline-only keys.
    cfg = {k: v for k, v in tiny_s2v_config().items() if k in REFERENCE_ARGS}
    for k in ("patch_size", "text_dim", "window_size", "qk_norm", "cross_attn_norm"):
        cfg.pop(k)
    cfg.update({"_class_name": "WanModel_S2V", "_diffusers_version": "0.33.1", "motion_frames": 73,
                "trainable_token": False, "audio_inject_layers": [0, 1]})  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    config = WanS2VTransformer3DModel.load_config(tmp_path)
    with torch.device("meta"):
        model = WanS2VTransformer3DModel.from_config(config)
    assert model.config.text_dim == 4096 and tuple(model.config.patch_size) == (1, 2, 2)
    assert model.config.num_audio_layers == 25
    assert model.get_submodule("casual_audio_encoder").weights.shape == (1, 25, 1, 1)


def test_audio_injector_slots_follow_block_names():
    assert audio_injector_slots(40, S2V_14B_CONFIG["audio_inject_layers"]) == (
        12,
        {layer: i for i, layer in enumerate(S2V_14B_CONFIG["audio_inject_layers"])},
    )
    # Block names "1", "10", "11" all start with "1": three injectors, block 1 uses the last.
    assert audio_injector_slots(12, [1]) == (3, {1: 2})


# --------------------------------------------------------------------------- forward


def test_tiny_forward_shape(tiny, inputs):
    out = _run(tiny, inputs)
    assert out.shape == inputs["hidden_states"].shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # Batch rows are independent.
    single = _run(tiny, {k: (v[1:] if torch.is_tensor(v) else v) for k, v in inputs.items()})
    torch.testing.assert_close(single, out[1:], rtol=1e-4, atol=1e-4)
    # A return tuple when asked.
    with torch.no_grad():
        (tup,) = tiny(**inputs, return_dict=False)
    torch.testing.assert_close(tup, out)
    assert "audio_features" in describe_inputs(tiny_s2v_config())


def test_motion_latents_condition_the_output(tiny, inputs):
    base = _run(tiny, inputs)
    moved = _run(tiny, inputs, motion_latents=inputs["motion_latents"] + 1.0)
    assert (moved - base).abs().max() > 1e-3
    # Dropped motion frames (first segment): the motion latents are ignored.
    dropped = _run(tiny, inputs, drop_motion_frames=True)
    dropped_moved = _run(tiny, inputs, drop_motion_frames=True, motion_latents=inputs["motion_latents"] + 1.0)
    assert (dropped - base).abs().max() > 1e-3
    torch.testing.assert_close(dropped, dropped_moved, rtol=0, atol=0)
    # Fewer history frames than FramePack's 19 are zero-padded.
    short = _run(tiny, inputs, motion_latents=inputs["motion_latents"][:, :, -2:])
    assert short.shape == base.shape and torch.isfinite(short).all()


def test_audio_features_condition_the_output(tiny, inputs):
    base = _run(tiny, inputs)
    silent = _run(tiny, inputs, audio_features=inputs["audio_features"] * 0.0)
    assert (silent - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="latent steps"):
        _run(tiny, inputs, audio_features=inputs["audio_features"][..., :-8])


def test_pose_and_reference_condition_the_output(tiny, inputs):
    base = _run(tiny, inputs)
    assert (_run(tiny, inputs, cond_states=None) - base).abs().max() > 1e-3
    assert (_run(tiny, inputs, ref_latents=inputs["ref_latents"] * -1) - base).abs().max() > 1e-3
    # No pose means zero pose latents (what the reference pipeline passes).
    torch.testing.assert_close(
        _run(tiny, inputs, cond_states=None), _run(tiny, inputs, cond_states=torch.zeros_like(inputs["cond_states"]))
    )


def test_bfloat16_weights_run_close_to_float32(inputs):
    torch.manual_seed(0)
    model = _randomize(WanS2VTransformer3DModel(**tiny_s2v_config()), seed=3)
    ref = _run(model, inputs)
    out = _run(model.to(torch.bfloat16), inputs)
    assert out.dtype == torch.float32
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.05, float(rel)


# --------------------------------------------------------------------------- save / load


def test_sharded_save_and_from_pretrained_roundtrip(tmp_path, tiny, inputs):
    total = sum(p.numel() * p.element_size() for p in tiny.parameters())
    tiny.save_pretrained(tmp_path, max_shard_size=f"{total // 4 // 1000}KB", safe_serialization=True)
    files = sorted(p.name for p in tmp_path.iterdir())
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) >= 2
    n = len(shards)
    assert shards == [f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert "diffusion_pytorch_model.safetensors.index.json" in files and "config.json" in files
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tiny.state_dict())

    loaded, info = WanS2VTransformer3DModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    a, b = tiny.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert strip(loaded.config) == strip(tiny.config)
    torch.testing.assert_close(_run(loaded.eval(), inputs), _run(tiny, inputs), rtol=0, atol=0)


# --------------------------------------------------------------------------- LoRA


def test_lora_adapter_on_wan_module_names(inputs):
    pytest.importorskip("peft")
    torch.manual_seed(0)
    model = _randomize(WanS2VTransformer3DModel(**tiny_s2v_config()), seed=5)
    base = _run(model, inputs)
    dim, rank = model.config.dim, 4
    g = torch.Generator().manual_seed(7)
    lora = {
        "transformer.blocks.0.self_attn.q.lora_A.weight": torch.randn(rank, dim, generator=g),
        "transformer.blocks.0.self_attn.q.lora_B.weight": torch.randn(dim, rank, generator=g),
    }
    model.load_lora_adapter(lora, adapter_name="talk", prefix="transformer")
    assert re.search(r"lora", type(model.get_submodule("blocks.0.self_attn.q")).__module__)
    on = _run(model, inputs)
    assert (on - base).abs().max() > 1e-3
    model.set_adapters(["talk"], weights=[0.0])
    torch.testing.assert_close(_run(model, inputs), base, rtol=1e-5, atol=1e-5)
    model.set_adapters(["talk"], weights=[1.0])
    torch.testing.assert_close(_run(model, inputs), on, rtol=1e-5, atol=1e-5)
