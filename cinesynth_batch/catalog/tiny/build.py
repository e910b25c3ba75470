"""Deterministic tiny random-weight models, saved in the same on-disk format as the real ones.

``build_tiny(root)`` writes, once:

* ``flux2-klein/``: a ``Flux2KleinPipeline`` folder (``save_pretrained`` layout, ``model_index.json``),
  step-distilled as FLUX.2-klein-9B is (``is_distilled=True``: no classifier-free guidance).
  Its Qwen3 text encoder has 28 narrow layers, so the pipeline's default
  ``text_encoder_out_layers=(9, 18, 27)`` works unchanged.
* ``flux2-klein-base/``: the same architecture, text encoder and VAE with a transformer of its own
  and ``is_distilled=False``, as FLUX.2-klein-base-9B (guidance > 1 runs classifier-free guidance).
* ``wan2.2-i2v/``: a ``WanImageToVideoPipeline`` folder in the Wan2.2-I2V-A14B layout (two experts
  ``transformer``/``transformer_2``, ``boundary_ratio`` 0.9, no image encoder).
* ``lora_adpts/img/tiny/style.safetensors`` (Flux2 transformer, diffusers key names) and
  ``lora_adpts/mov/tiny/{motion,camera}.safetensors`` (Wan transformer, original Wan key names),
  plus stand-ins under the names the presets' LoRAs carry (``ANIMATE_PRESET_LORAS``,
  ``FFLF_PRESET_LORAS``, ``IMAGE_PRESET_LORAS``).
* ``RealESRGAN_x2plus.pth``: a tiny x2 RRDBNet in the official checkpoint layout.
* ``htdemucs/``: a tiny HTDemucs (no transformer layers) as ``htdemucs.yaml`` + safetensors.
* ``rife-v4.25.safetensors``: a tiny RIFE IFNet (frame interpolation) with the official key names.
* ``amt-g.safetensors``: a tiny AMT of AMT-G's structure (frame interpolation), official key names.
* ``grounding-dino/`` and ``sam/``: the text-prompted mask's detector and segmenter
  (``catalog/tiny/segment.py``).
* ``tiny.json``: every component with the sha256 digest of its contents (used as model revisions).

Every weight is drawn from a fixed seed, so two builds give byte-identical files. Each component is
built in a temporary sibling and moved into place with ``os.replace``: a killed build leaves no half
folder, and concurrent builders each produce the same bytes, the first rename wins.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from ...procs import pid_alive
from .rrdbnet import build_tiny_rrdbnet
from .rife import TINY_RIFE, build_tiny_rife
from .amt import TINY_AMT, build_tiny_amt
from .animate import build_tiny_animate, write_tiny_animate_lora
from .demucs import TINY_DEMUCS, build_tiny_demucs
from .parts import seeded, t5_tokenizer, tiny_umt5
from .segment import TINY_DINO, TINY_SAM, build_tiny_grounding_dino, build_tiny_sam

FLUX2_KLEIN = "flux2-klein"
FLUX2_KLEIN_BASE = "flux2-klein-base"
WAN_I2V = "wan2.2-i2v"
RRDBNET_X2 = "RealESRGAN_x2plus.pth"
WAN_S2V = "wan2.2-s2v"
WAN_ANIMATE = "wan2.2-animate"
# Tiny stand-ins, under the same names, for the LoRAs of presets/change_character_v1_1.yaml.
ANIMATE_PRESET_LORAS = ("lightx2v_elite_it2v_animate_face", "WAN22_MoCap_fullbodyCOPY_ED",
                        "Wan2.2-Fun-A14B-InP-Fusion-Elite", "FullDynamic_Ultimate_Fusion_Elite",
                        "WanAnimate_relight_lora_fp16")
# Tiny stand-ins, under the same names, for the Wan I2V LoRAs of presets/fflf_auto_loop_v2.yaml.
FFLF_PRESET_LORAS = ("Wan_2_2_I2V_A14B_HIGH_lightx2v_4step_lora_v1030_rank_64_bf16",
                     "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022",
                     "Wan2.2-Fun-A14B-InP-low-noise-HPS2.1")
# Tiny stand-ins, under the same names, for the FLUX.2-klein LoRAs of the image presets
# (presets/face_swap_bfs.yaml, presets/fashion_change_tryon.yaml).
IMAGE_PRESET_LORAS = ("bfs_head_v1_flux-klein_9b_step3500_rank128", "KleinBase9B_TryOn")
LORA_ROOT = "lora_adpts"
LORA_IMG_STYLE = "lora_adpts/img/tiny/style.safetensors"
LORA_MOV_MOTION = "lora_adpts/mov/tiny/motion.safetensors"
LORA_MOV_CAMERA = "lora_adpts/mov/tiny/camera.safetensors"
MANIFEST = "tiny.json"
TINY_FORMAT = 1

# Component -> loader kind (see catalog/loaders.py).
KINDS = {
    FLUX2_KLEIN: "flux2-klein",
    FLUX2_KLEIN_BASE: "flux2-klein",
    WAN_I2V: "wan-i2v",
    RRDBNET_X2: "rrdbnet-x2",
    LORA_IMG_STYLE: "lora",
    LORA_MOV_MOTION: "lora",
    LORA_MOV_CAMERA: "lora",
    TINY_DEMUCS: "demucs",
    TINY_RIFE: "rife",
    TINY_AMT: "amt",
    TINY_DINO: "grounding-dino",
    TINY_SAM: "sam",
}

# Weights are drawn from torch's global RNG under fixed seeds: builds in one process take turns.
_BUILD_LOCK = threading.Lock()
_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}")

_QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
_QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)


# --------------------------------------------------------------------------- digests


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted relative paths and their file digests."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        rel = p.relative_to(path).as_posix()
        h.update(f"{rel}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- atomic placement


def _tmp_sibling(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _clean_stale_tmp(folder: Path, min_age_s: float = 60.0) -> None:
    """Remove temporaries left in ``folder`` by builders that were killed (dead pid, not recent)."""
    if not folder.is_dir():
        return
    now = time.time()
    for entry in folder.iterdir():
        m = _TMP_RE.match(entry.name)
        if not m or pid_alive(int(m.group(1))):
            continue
        try:
            old = now - entry.lstat().st_mtime > min_age_s
        except FileNotFoundError:
            continue
        if old:
            _remove(entry)


def _place(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; if another builder got there first keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if final.exists():
            _remove(tmp)
        else:
            raise


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _build_atomic(final: Path, write: Callable[[Path], None]) -> bool:
    """Build ``final`` with ``write(tmp)`` unless it exists. Returns True when this call built it."""
    if final.exists():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(final.parent)
    tmp = _tmp_sibling(final)
    try:
        write(tmp)
        _place(tmp, final)
    finally:
        if tmp.exists():
            _remove(tmp)
    return True


# --------------------------------------------------------------------------- tokenizers


def _qwen2_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {sym: i for i, sym in enumerate(alphabet)}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], chat_template=_QWEN_CHAT_TEMPLATE, model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": _QWEN_SPECIAL[1:]})
    return tok


# --------------------------------------------------------------------------- flux2-klein

_FLUX2_TEXT_HIDDEN = 16
_FLUX2_VAE_LATENT = 4


def _write_flux2_klein(dst: Path, distilled: bool = True) -> None:
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _qwen2_tokenizer()
    with seeded(1001):
        te_config = Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=_FLUX2_TEXT_HIDDEN,
            intermediate_size=32,
            num_hidden_layers=28,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            initializer_range=0.3,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )
        text_encoder = Qwen3ForCausalLM(te_config).eval()
    with seeded(1002):
        vae = AutoencoderKLFlux2(
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=_FLUX2_VAE_LATENT,
            norm_num_groups=4,
            sample_size=64,
        ).eval()
        with torch.no_grad():
            vae.bn.running_mean.normal_(0.0, 0.1)
            vae.bn.running_var.uniform_(0.5, 1.5)
    with seeded(1003 if distilled else 1004):
        transformer = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=_FLUX2_VAE_LATENT * 4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=3 * _FLUX2_TEXT_HIDDEN,
            timestep_guidance_channels=32,
            mlp_ratio=2.0,
            axes_dims_rope=(4, 4, 4, 4),
            guidance_embeds=False,
        ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )
    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    pipe.save_pretrained(dst)


# --------------------------------------------------------------------------- wan2.2 i2v

_WAN_TEXT_DIM = 16
_WAN_HEADS = 2
_WAN_HEAD_DIM = 12
_WAN_FFN = 32
_WAN_LAYERS = 2


def _wan_transformer(seed: int):
    from diffusers import WanTransformer3DModel

    with seeded(seed):
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=_WAN_HEADS,
            attention_head_dim=_WAN_HEAD_DIM,
            in_channels=36,
            out_channels=16,
            text_dim=_WAN_TEXT_DIM,
            freq_dim=32,
            ffn_dim=_WAN_FFN,
            num_layers=_WAN_LAYERS,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            image_dim=None,
            added_kv_proj_dim=None,
            rope_max_seq_len=1024,
        ).eval()


def _write_wan_i2v(dst: Path) -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline
    tokenizer = t5_tokenizer()
    text_encoder = tiny_umt5(len(tokenizer), _WAN_TEXT_DIM, 2001)
    with seeded(2002):
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[False, True, True],
        ).eval()
    transformer = _wan_transformer(2003)
    transformer_2 = _wan_transformer(2004)
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=5.0,
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=None,
        image_encoder=None,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.9,
    )
    pipe.save_pretrained(dst)


# --------------------------------------------------------------------------- LoRAs


def _lora_pair(gen, out_f: int, in_f: int, rank: int, b_std: float):
    import torch

    a = torch.randn(rank, in_f, generator=gen) / in_f**0.5
    b = torch.randn(out_f, rank, generator=gen) * b_std
    return a.contiguous(), b.contiguous()


def _write_flux2_lora(dst: Path, seed: int = 3001) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    inner = 2 * 16
    mlp_hidden = int(inner * 2.0)
    targets = [
        ("transformer_blocks.0.attn.to_q", inner, inner),
        ("transformer_blocks.0.attn.to_k", inner, inner),
        ("transformer_blocks.0.attn.to_v", inner, inner),
        ("transformer_blocks.0.attn.to_out.0", inner, inner),
        ("transformer_blocks.0.attn.add_q_proj", inner, inner),
        ("transformer_blocks.0.attn.add_v_proj", inner, inner),
        ("single_transformer_blocks.0.attn.to_qkv_mlp_proj", 3 * inner + 2 * mlp_hidden, inner),
        ("single_transformer_blocks.0.attn.to_out", inner, inner + mlp_hidden),
    ]
    sd = {}
    for name, out_f, in_f in targets:
        a, b = _lora_pair(gen, out_f, in_f, rank=4, b_std=0.5)
        sd[f"transformer.{name}.lora_A.weight"] = a
        sd[f"transformer.{name}.lora_B.weight"] = b
    save_file(sd, str(dst), metadata={"format": "pt"})


def _write_wan_lora(dst: Path, seed: int, modules: list[str]) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    inner = _WAN_HEADS * _WAN_HEAD_DIM
    shapes = {
        "self_attn.q": (inner, inner),
        "self_attn.k": (inner, inner),
        "self_attn.v": (inner, inner),
        "self_attn.o": (inner, inner),
        "cross_attn.q": (inner, inner),
        "cross_attn.k": (inner, inner),
        "cross_attn.v": (inner, inner),
        "cross_attn.o": (inner, inner),
        "ffn.0": (_WAN_FFN, inner),
        "ffn.2": (inner, _WAN_FFN),
    }
    sd = {}
    for i in range(_WAN_LAYERS):
        for m in modules:
            out_f, in_f = shapes[m]
            a, b = _lora_pair(gen, out_f, in_f, rank=4, b_std=0.5)
            sd[f"diffusion_model.blocks.{i}.{m}.lora_A.weight"] = a
            sd[f"diffusion_model.blocks.{i}.{m}.lora_B.weight"] = b
    save_file(sd, str(dst), metadata={"format": "pt"})


_FFLF_LORA_MODULES = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "ffn.0", "ffn.2"]


def _write_motion_lora(dst: Path) -> None:
    _write_wan_lora(dst, 3002, ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "ffn.0", "ffn.2"])


def _write_camera_lora(dst: Path) -> None:
    _write_wan_lora(dst, 3003, ["cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "self_attn.o"])


def _file_writer(write: Callable[[Path], None], suffix: str) -> Callable[[Path], None]:
    """Adapt a writer that needs a file name with a given suffix to a temporary path."""

    def run(tmp: Path) -> None:
        staging = tmp.with_name(tmp.name + suffix)
        try:
            write(staging)
            os.replace(staging, tmp)
        finally:
            if staging.exists():
                staging.unlink()

    return run


# --------------------------------------------------------------------------- entry point


def _write_wan_s2v(dst: Path) -> None:
    """A Wan2.2-S2V folder in the official layout: a sharded transformer, ``Wan2.1_VAE.pth``,
    the UMT5 ``.pth`` + tokenizer and a wav2vec2 folder, all tiny and random."""
    import torch

    from ...models.s2v.transformer import WanS2VTransformer3DModel
    from .s2v import TINY_T5_DIM, TINY_W2V_DIM, TINY_W2V_LAYERS, build_tiny_s2v_components, tiny_s2v_config

    config = {**tiny_s2v_config(), "text_dim": TINY_T5_DIM, "audio_dim": TINY_W2V_DIM,
              "num_audio_layers": TINY_W2V_LAYERS + 1}
    with seeded(4001):
        model = WanS2VTransformer3DModel(**config)
        gen = torch.Generator().manual_seed(4002)
        for _, param in sorted(model.named_parameters()):
            scale = 0.3 if param.dim() > 1 else 0.1
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    dst.mkdir(parents=True)
    model.save_pretrained(dst, safe_serialization=True, max_shard_size=nbytes // 4 + 4096)
    build_tiny_s2v_components(dst)


def build_tiny(root: Path) -> dict[str, Path]:
    """Build (where absent) every tiny model under ``root`` and return their paths.

    Keys are the components' paths relative to ``root`` (``"flux2-klein"``, ``"wan2.2-i2v"``,
    ``"RealESRGAN_x2plus.pth"``, ``"lora_adpts/img/tiny/style.safetensors"``, ...), plus
    ``"lora_adpts"`` (the LoRA root) and ``"tiny.json"`` (the manifest).
    """
    import torch

    from ...runtime.dtypes import quiet_libraries

    quiet_libraries()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _BUILD_LOCK, torch.no_grad():
        steps: list[tuple[str, Callable[[Path], None]]] = [
            (FLUX2_KLEIN, _write_flux2_klein),
            (FLUX2_KLEIN_BASE, functools.partial(_write_flux2_klein, distilled=False)),
            (WAN_I2V, _write_wan_i2v),
            (LORA_IMG_STYLE, _file_writer(_write_flux2_lora, ".safetensors")),
            (LORA_MOV_MOTION, _file_writer(_write_motion_lora, ".safetensors")),
            (LORA_MOV_CAMERA, _file_writer(_write_camera_lora, ".safetensors")),
            (RRDBNET_X2, _file_writer(build_tiny_rrdbnet, ".pth")),
            (WAN_S2V, _write_wan_s2v),
            (WAN_ANIMATE, build_tiny_animate),
            (TINY_DEMUCS, build_tiny_demucs),
            (TINY_RIFE, _file_writer(build_tiny_rife, ".safetensors")),
            (TINY_AMT, _file_writer(build_tiny_amt, ".safetensors")),
            *[(f"lora_adpts/mov/{name}.safetensors",
               _file_writer(functools.partial(write_tiny_animate_lora, seed=7100 + i), ".safetensors"))
              for i, name in enumerate(ANIMATE_PRESET_LORAS)],
            *[(f"lora_adpts/mov/{name}.safetensors",
               _file_writer(functools.partial(_write_wan_lora, seed=7200 + i, modules=_FFLF_LORA_MODULES),
                            ".safetensors"))
              for i, name in enumerate(FFLF_PRESET_LORAS)],
            (TINY_DINO, build_tiny_grounding_dino),
            (TINY_SAM, build_tiny_sam),
            *[(f"lora_adpts/img/{name}.safetensors",
               _file_writer(functools.partial(_write_flux2_lora, seed=7300 + i), ".safetensors"))
              for i, name in enumerate(IMAGE_PRESET_LORAS)],
        ]

        built = False
        for rel, write in steps:
            built |= _build_atomic(root / rel, write)

        paths = {rel: root / rel for rel, _ in steps}
        manifest_path = root / MANIFEST
        if built or not manifest_path.exists() or not _manifest_covers(manifest_path, paths):
            _write_manifest(manifest_path, root, paths)
    out = dict(paths)
    out[LORA_ROOT] = root / LORA_ROOT
    out[MANIFEST] = manifest_path
    return out


def _manifest_covers(manifest_path: Path, paths: dict[str, Path]) -> bool:
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    return data.get("format") == TINY_FORMAT and set(data.get("components", {})) == set(paths)


def _write_manifest(manifest_path: Path, root: Path, paths: dict[str, Path]) -> None:
    components = {
        rel: {"path": rel, "kind": KINDS.get(rel, "file"), "sha256": tree_digest(p)}
        for rel, p in sorted(paths.items())
    }
    text = json.dumps({"format": TINY_FORMAT, "components": components}, indent=2, sort_keys=True) + "\n"
    tmp = _tmp_sibling(manifest_path)
    try:
        tmp.write_text(text)
        os.replace(tmp, manifest_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_manifest(root: Path) -> dict:
    """The ``tiny.json`` of a built root: ``{"format": 1, "components": {rel: {path, kind, sha256}}}``."""
    return json.loads((Path(root) / MANIFEST).read_text())
