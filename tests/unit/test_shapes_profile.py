"""Profile ``shapes``: every role's production architecture at its real size, built on the meta
device here (no memory): parameter counts, configurations, dtypes and bytes equal the production
models'; the registry resolves it, plans name its revision, and a render on the CPU is refused
before anything runs."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from cinesynth_batch.catalog.registry import SHAPES_REVISION, Registry, describe
from cinesynth_batch.catalog.shapes import KINDS, SIZES, ShapesSource, shapes_nbytes, shapes_params
from cinesynth_batch.cli import app
from cinesynth_batch.errors import ModelError

# Published sizes (model cards / the released checkpoints' tensors), in parameters.
PUBLISHED = {
    ("flux2-klein-9b", "transformer"): 9_078_581_248,      # "9B"
    ("flux2-klein-9b", "text_encoder"): 8_190_735_360,     # Qwen3-8B, 8.19 B with its LM head
    ("wan2.2-i2v-a14b", "transformer"): 14_288_901_184,    # 14.29 B per expert
    ("wan2.2-i2v-a14b", "transformer_2"): 14_288_901_184,
    ("wan2.2-i2v-a14b", "text_encoder"): 5_680_910_336,    # UMT5-XXL encoder
    ("wan2.2-i2v-a14b", "vae"): 126_892_531,               # Wan2.1 VAE
    ("wan2.2-s2v-14b", "transformer"): 16_295_755_609,     # 16.30 B
    ("wan2.2-s2v-14b", "audio_model"): 315_472_545,        # wav2vec2-large-xlsr-53 (CTC head of 33)
    ("wan2.2-animate-14b", "transformer"): 17_274_816_884,  # 17.275 B
    ("wan2.2-animate-14b", "image_encoder"): 630_766_080,  # CLIP ViT-H/14 vision tower
    ("realesrgan-x2plus", "net"): 16_703_171,              # RRDBNet 64/23/32 x2
}


@pytest.fixture(scope="module")
def built():
    """Every shapes model on the meta device, once (a few seconds, no memory)."""
    from cinesynth_batch.catalog.shapes.build import BUILDERS, build_shapes

    return {name: build_shapes(name, "meta", "bfloat16") for name in BUILDERS}


def _components(name, pipe):
    import torch

    if name == "htdemucs":
        return {"model": pipe.models[0]}
    return {c.name: getattr(pipe, c.name) for c in SIZES[name]
            if isinstance(getattr(pipe, c.name, None), torch.nn.Module)}


def test_every_shapes_model_is_built_and_sized_as_recorded(built):
    import torch

    from cinesynth_batch.runtime.swap import model_nbytes

    assert set(built) == set(SIZES) == set(KINDS)
    for name, pipe in built.items():
        parts = _components(name, pipe)
        assert list(parts) == [c.name for c in SIZES[name]], name
        for comp in SIZES[name]:
            module = parts[comp.name]
            params = list(module.parameters())
            assert sum(p.numel() for p in params) == comp.params, (name, comp.name)
            assert sum(p.numel() for p in params if p.dtype == torch.float32) == comp.fp32_params, (name, comp.name)
            assert all(p.is_meta for p in params)
        assert model_nbytes(pipe) == shapes_nbytes(name, "bfloat16"), name


def test_parameter_counts_are_the_published_ones(built):
    for (name, comp), count in PUBLISHED.items():
        assert sum(p.numel() for p in _components(name, built[name])[comp].parameters()) == count, (name, comp)
    assert shapes_params("wan2.2-i2v-a14b") == 2 * 14_288_901_184 + 5_680_910_336 + 126_892_531


def test_pipelines_are_the_production_classes_and_configs(built):
    from cinesynth_batch.models.s2v.pipeline import WanS2VPipeline
    from cinesynth_batch.runtime.animate import DEVICE_ATTR

    flux = built["flux2-klein-9b"]
    assert type(flux).__name__ == "Flux2KleinPipeline" and flux.config.is_distilled is True
    base = built["flux2-klein-base-9b"]                  # the undistilled release: same shapes, CFG on
    assert type(base).__name__ == "Flux2KleinPipeline" and base.config.is_distilled is False
    assert base.transformer.config == flux.transformer.config
    t = flux.transformer.config
    assert (t.num_layers, t.num_single_layers, t.num_attention_heads, t.attention_head_dim,
            t.joint_attention_dim, t.in_channels) == (8, 24, 32, 128, 12288, 128)
    te = flux.text_encoder.config
    assert type(flux.text_encoder).__name__ == "Qwen3ForCausalLM"
    assert (te.num_hidden_layers, te.hidden_size, te.num_attention_heads, te.num_key_value_heads,
            te.intermediate_size, te.vocab_size) == (36, 4096, 32, 8, 12288, 151936)
    assert flux.vae.config.latent_channels == 32 and flux.vae.config.block_out_channels == (128, 256, 512, 512)

    i2v = built["wan2.2-i2v-a14b"]
    assert type(i2v).__name__ == "WanImageToVideoPipeline" and i2v.config.boundary_ratio == 0.9
    for expert in (i2v.transformer, i2v.transformer_2):
        c = expert.config
        assert (c.num_layers, c.num_attention_heads, c.attention_head_dim, c.ffn_dim, c.in_channels,
                c.text_dim, c.image_dim) == (40, 40, 128, 13824, 36, 4096, None)
    assert i2v.transformer is not i2v.transformer_2
    u = i2v.text_encoder.config
    assert (u.d_model, u.num_layers, u.num_heads, u.d_ff, u.vocab_size) == (4096, 24, 64, 10240, 256384)
    assert i2v.text_encoder.encoder.embed_tokens is i2v.text_encoder.shared
    assert i2v.vae.config.base_dim == 96 and i2v.vae.config.z_dim == 16

    s2v = built["wan2.2-s2v-14b"]
    assert isinstance(s2v, WanS2VPipeline)
    c = s2v.transformer.config
    assert (c.num_layers, c.num_heads, c.dim, c.ffn_dim, c.audio_dim) == (40, 40, 5120, 13824, 1024)
    a = s2v.audio_model.config
    assert (a.num_hidden_layers, a.hidden_size) == (24, 1024)

    animate = built["wan2.2-animate-14b"]
    assert type(animate).__name__ == "WanAnimatePipeline" and getattr(animate, DEVICE_ATTR) == "meta"
    c = animate.transformer.config
    assert (c.num_layers, c.num_attention_heads, c.image_dim, c.inject_face_latents_blocks) == (40, 40, 1280, 5)
    v = animate.image_encoder.config
    assert (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size) == (1280, 32, 14, 224)

    amt = built["amt-g"]
    assert type(amt).__name__ == "AmtInterpolator" and amt.net.config.refine_full      # AMT-G's structure
    assert type(amt.net).__name__ == "AMT" and amt.net.config.channels == (84, 96, 112, 128)

    up = built["realesrgan-x2plus"].net
    assert (up.scale, up.num_feat, up.num_block, up.num_grow_ch) == (2, 64, 23, 32)
    demucs = built["htdemucs"].models[0]
    assert (type(demucs).__name__, demucs.depth, demucs.samplerate, float(demucs.segment)) == ("HTDemucs", 4, 44100, 7.8)


def test_dtypes_follow_from_pretrained(built):
    """bf16 everywhere except what the libraries keep in fp32 (diffusers' Wan norms) and what the
    production loaders load in fp32 (wav2vec2, demucs)."""
    import torch

    i2v = built["wan2.2-i2v-a14b"]
    assert i2v.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert i2v.transformer.blocks[0].norm2.weight.dtype == torch.float32
    assert i2v.transformer.scale_shift_table.dtype == torch.float32
    assert i2v.text_encoder.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.bfloat16
    assert {p.dtype for p in built["wan2.2-s2v-14b"].audio_model.parameters()} == {torch.float32}
    assert {p.dtype for p in built["htdemucs"].parameters()} == {torch.float32}
    assert {p.dtype for p in built["amt-g"].net.parameters()} == {torch.float32}      # load_amt's dtype
    assert i2v.transformer.rope.freqs_cos.device.type == "meta"       # buffers go where the model goes


def test_materialize_fills_seeded_values_and_keeps_ties():
    """On a real device the same seed gives the same weights; norms are 1, biases 0; ties hold."""
    import torch
    from transformers import UMT5EncoderModel

    from cinesynth_batch.catalog.shapes.materialize import empty_model, materialize
    from cinesynth_batch.models.s2v.components import UMT5Arch, umt5_config

    arch = UMT5Arch(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_heads=4, num_layers=2, num_buckets=8)

    def make(seed):
        m = empty_model(lambda: UMT5EncoderModel(umt5_config(arch)))
        assert m.shared.weight.is_meta
        m.set_input_embeddings(m.shared)
        return materialize(m, "cpu", torch.bfloat16, seed)

    a, b, c = make(3), make(3), make(4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.shared.weight, c.shared.weight)
    assert a.encoder.embed_tokens.weight is a.shared.weight
    assert torch.equal(a.encoder.final_layer_norm.weight, torch.ones(16, dtype=torch.bfloat16))
    w = a.encoder.block[0].layer[1].DenseReluDense.wi_0.weight.float()
    assert w.dtype == torch.float32 and 0.15 < w.std().item() < 0.35      # N(0, 1/16): std 0.25
    assert not any(p.requires_grad for p in a.parameters())


def test_a_component_kept_in_host_ram_is_made_in_arenas_with_the_same_values(monkeypatch):
    """Drawn elsewhere (``draw_on``) into host RAM: the values are those made in place, every
    parameter is a view of an arena the model keeps (page-locked on CUDA), ties hold, and a small
    chunk size splits the parameters over several arenas without changing a value."""
    import torch
    from transformers import UMT5EncoderModel

    from cinesynth_batch.catalog.shapes import materialize as M
    from cinesynth_batch.models.s2v.components import UMT5Arch, umt5_config
    from cinesynth_batch.runtime import pinned

    arch = UMT5Arch(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_heads=4, num_layers=2, num_buckets=8)

    def make(**kw):
        m = M.empty_model(lambda: UMT5EncoderModel(umt5_config(arch)))
        m.set_input_embeddings(m.shared)
        return M.materialize(m, "cpu", torch.bfloat16, 5, **kw)

    plain, pooled = make(), make(draw_on="cpu")
    assert not hasattr(plain, M.ARENAS_ATTR)
    arenas = getattr(pooled, M.ARENAS_ATTR)
    assert len(arenas) == 1
    assert all(torch.equal(x, y) for x, y in zip(plain.state_dict().values(), pooled.state_dict().values()))
    base = arenas[0].buffer.data_ptr()
    params = list(pooled.parameters())
    assert all(base <= p.data_ptr() < base + arenas[0].nbytes for p in params)
    assert sum(p.numel() * p.element_size() for p in params) <= arenas[0].nbytes
    assert pooled.encoder.embed_tokens.weight is pooled.shared.weight
    assert not any(p.requires_grad for p in params)

    monkeypatch.setattr(pinned.chunks, "__defaults__", (4096,))     # runs of at most 4 KiB
    split = make(draw_on="cpu")
    assert len(getattr(split, M.ARENAS_ATTR)) > 2
    assert all(torch.equal(x, y) for x, y in zip(plain.state_dict().values(), split.state_dict().values()))


# --------------------------------------------------------------------------- registry


def test_registry_resolves_every_role_of_the_profile(tmp_path):
    reg = Registry.load("shapes", spec_dir=tmp_path, root=tmp_path, home=tmp_path)
    assert reg.dtype == "bfloat16"
    for role, name in (("image", "flux2-klein-9b"), ("image_base", "flux2-klein-base-9b"),
                       ("video", "wan2.2-i2v-a14b"), ("lipsync", "wan2.2-s2v-14b"),
                       ("animate", "wan2.2-animate-14b"), ("upscale", "realesrgan-x2plus"),
                       ("separate", "htdemucs"), ("interpolate_amt", "amt-g")):
        ident = reg.identity(role)
        assert ident == {"role": role, "kind": KINDS[name], "id": f"shapes/{name}", "revision": SHAPES_REVISION}
        assert reg.local_path(role) == ShapesSource(name, KINDS[name], SHAPES_REVISION)
    assert reg.spec("animate", "Wan22Animate/wan2.2_animate_14B_bf16").shapes == "wan2.2-animate-14b"
    assert reg.identity("tts")["id"] == "tiny/qwen3-tts"
    rows = {r["role"]: r for r in describe(reg)}
    assert rows["video"]["available"] is True and "built on the device" in rows["video"]["location"]
    assert not (tmp_path / "models").exists()          # nothing built or written


def test_a_models_file_can_extend_shapes_and_replace_a_role(tmp_path):
    (tmp_path / "models.yaml").write_text(textwrap.dedent("""
        extends: shapes
        models:
          upscale: {path: weights/RealESRGAN_x2plus.pth}
          image: {kind: flux2-klein, tiny: flux2-klein}
    """))
    reg = Registry.load("models.yaml", spec_dir=tmp_path, root=tmp_path, home=tmp_path)
    assert reg.spec("upscale").shapes is None and reg.spec("upscale").path == "weights/RealESRGAN_x2plus.pth"
    assert reg.spec("image").shapes is None and reg.identity("image")["id"] == "tiny/flux2-klein"
    assert reg.spec("video").shapes == "wan2.2-i2v-a14b"


@pytest.mark.parametrize("entry, message", [
    ("{kind: wan-i2v, shapes: wan2.2-t2v-5b}", "models.video.shapes: no shapes model named 'wan2.2-t2v-5b'"),
    ("{kind: wan-animate, shapes: wan2.2-i2v-a14b}",
     "models.video: shapes model 'wan2.2-i2v-a14b' is of kind 'wan-i2v', not 'wan-animate'"),
])
def test_a_wrong_shapes_entry_is_refused(tmp_path, entry, message):
    (tmp_path / "models.yaml").write_text(f"models:\n  video: {entry}\n")
    with pytest.raises(ModelError) as info:
        Registry.load("models.yaml", spec_dir=tmp_path, root=tmp_path, home=tmp_path)
    assert info.value.message == f"{tmp_path / 'models.yaml'}: {message}"


def test_residency_passes_the_source_to_the_loader_and_budgets_its_size(tmp_path):
    from cinesynth_batch.catalog.residency import Residency

    reg = Registry.load("shapes", spec_dir=tmp_path, root=tmp_path, home=tmp_path)
    seen = []
    sizes = {"video": shapes_nbytes("wan2.2-i2v-a14b"), "upscale": shapes_nbytes("realesrgan-x2plus")}

    def loader(kind, source, device, dtype, room):
        seen.append((kind, source, device, dtype, room))
        return {"role": source.name}

    res = Residency(reg, device="cpu", dtype="bfloat16", budget=70 << 30, host_budget=0, loader=loader,
                    sizer=lambda m: sizes["video" if m["role"] == "wan2.2-i2v-a14b" else "upscale"],
                    mover=lambda m, where: None)
    res.get("upscale")
    res.get("video")            # 64.2 GiB: fits beside the upscaler (70 GiB budget)
    assert res.resident() == ["upscale", "video"]
    assert seen[1] == ("wan-i2v", ShapesSource("wan2.2-i2v-a14b", "wan-i2v", SHAPES_REVISION), "cpu", "bfloat16",
                       (70 << 30) - sizes["upscale"])       # the room the upscaler leaves it
    res.budget = sizes["video"] + (1 << 20)
    res.release("video")
    res.get("video")            # does not fit beside it now: the upscaler leaves first
    assert res.resident() == ["video"] and res.evictions["upscale"] == 1
    assert seen[2][4] == res.budget             # loaded again with the whole budget as its room


def test_load_model_builds_a_shapes_source_and_checks_its_kind():
    from cinesynth_batch.catalog.loaders import load_model
    from cinesynth_batch.stages.base import StageError

    up = load_model("rrdbnet-x2", ShapesSource("realesrgan-x2plus", "rrdbnet-x2", SHAPES_REVISION), "meta",
                    "bfloat16")
    assert type(up).__name__ == "Upscaler" and up.net.num_block == 23
    with pytest.raises(StageError, match="shapes model 'htdemucs' is of kind 'demucs', not 'wan-i2v'"):
        load_model("wan-i2v", ShapesSource("htdemucs", "demucs", SHAPES_REVISION), "meta", "bfloat16")


# --------------------------------------------------------------------------- the CLI on this machine

SPEC = """
project: shapes
profile: shapes
defaults: {resolution: 64x64, seed: 3}
scenes:
  - id: a
    image: {prompt: "a cat", steps: 2}
    video: {prompt: "the cat walks", frames: 5, steps: 2}
"""


def test_validate_and_plan_work_on_the_cpu_and_name_the_revision(project):
    spec = project / "s.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    runner = CliRunner()
    assert runner.invoke(app, ["validate", str(spec)]).output == f"{spec}: ok (1 scene)\n"
    result = runner.invoke(app, ["plan", str(spec), "--format", "json"])
    assert result.exit_code == 0, result.output
    stages = {s["id"]: s for s in json.loads(result.output)["stages"]}
    assert stages["a.image"]["model"] == f"shapes/flux2-klein-9b@{SHAPES_REVISION}"
    assert stages["a.video"]["model"] == f"shapes/wan2.2-i2v-a14b@{SHAPES_REVISION}"
    assert stages["a.image"]["status"] == "run" and len(stages["a.image"]["key"]) == 64


def test_render_on_the_cpu_is_refused_before_anything_runs(project):
    spec = project / "s.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    result = CliRunner().invoke(app, ["render", str(spec), "--device", "cpu"])
    assert result.exit_code == 3, result.output
    gib = {n: f"{shapes_nbytes(n) / 2**30:.1f}" for n in ("flux2-klein-9b", "wan2.2-i2v-a14b")}
    assert (f"profile 'shapes' builds its models at full size on the render's device: they need CUDA "
            f"(shapes/flux2-klein-9b {gib['flux2-klein-9b']} GiB, shapes/wan2.2-i2v-a14b "
            f"{gib['wan2.2-i2v-a14b']} GiB in bfloat16); this render runs on cpu") in result.output
    assert "--device cuda" in result.output and "Traceback" not in result.output
    assert gib == {"flux2-klein-9b": "32.3", "wan2.2-i2v-a14b": "64.2"}
    assert not (project / "outputs").exists()


def test_models_list_names_every_role_of_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("CINESYNTH_HOME", str(tmp_path))
    out = CliRunner().invoke(app, ["models", "list", "--profile", "shapes"]).output
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ["animate", "detect", "image", "image_base", "interpolate",
                                                   "interpolate_amt", "lipsync", "segment", "separate", "tts",
                                                   "upscale", "video"]
    video = next(line for line in lines if line.split()[1] == "video")
    assert video.startswith("ok ") and f"shapes/wan2.2-i2v-a14b  rev {SHAPES_REVISION}" in video
    assert "built on the device" in video
