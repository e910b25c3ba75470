"""A tiny random-weight Wan2.2-Animate pipeline, saved in the diffusers ``WanAnimatePipeline`` layout.

``build_tiny_animate(dst)`` writes ``dst/`` with ``save_pretrained``: ``model_index.json``,
``transformer/`` (``WanAnimateTransformer3DModel``: 2 blocks of width 24, a face adapter after
block 0, a 16x16 motion encoder), ``vae/`` (an ``AutoencoderKLWan`` with 4 base channels and 16
latent channels, x8 spatial and x4 temporal compression like the real one), ``text_encoder/`` +
``tokenizer/`` (a tiny UMT5 and a T5 tokenizer built offline), ``image_encoder/`` +
``image_processor/`` (a tiny ``CLIPVisionModel`` on 32x32 crops and its ``CLIPImageProcessor``) and
``scheduler/`` (flow-matching UniPC). At 64x64 a 2-step call takes about 0.4 s for 17 frames and
0.6 s for 33 on one CPU thread.

Every weight is drawn from a fixed seed, so two builds give byte-identical folders (about 0.5 MB).
``dst`` must not exist; callers that need atomic placement build into a temporary sibling and
rename it (``catalog/tiny/build.py`` does).

``write_tiny_animate_lora(path)`` writes a LoRA for that transformer in the original Wan key layout
(``diffusion_model.blocks.N.self_attn.q.lora_A.weight``), the layout of the LoRAs the Change
Character preset uses.
"""

from __future__ import annotations

from pathlib import Path
from .parts import seeded, t5_tokenizer, tiny_umt5

TINY_HEADS = 2
TINY_HEAD_DIM = 12
TINY_INNER = TINY_HEADS * TINY_HEAD_DIM
TINY_FFN = 32
TINY_LAYERS = 2
TINY_FACE_EVERY = 2          # a face adapter after block 0 only: the last block has none
TINY_TEXT_DIM = 16
TINY_IMAGE_DIM = 16          # CLIP hidden size = the transformer's image_dim
TINY_CLIP_SIZE = 32
TINY_MOTION_SIZE = 16        # face frames are resized to this by the pipeline

_SEED_TEXT = 5001
_SEED_VAE = 5002
_SEED_TRANSFORMER = 5003
_SEED_CLIP = 5004
_SEED_LORA = 5005


def tiny_transformer_config() -> dict:
    """The tiny ``WanAnimateTransformer3DModel`` configuration."""
    return dict(
        patch_size=(1, 2, 2),
        num_attention_heads=TINY_HEADS,
        attention_head_dim=TINY_HEAD_DIM,
        in_channels=36,
        latent_channels=16,
        out_channels=16,
        text_dim=TINY_TEXT_DIM,
        freq_dim=32,
        ffn_dim=TINY_FFN,
        num_layers=TINY_LAYERS,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=TINY_IMAGE_DIM,
        added_kv_proj_dim=TINY_INNER,
        rope_max_seq_len=1024,
        motion_encoder_channel_sizes={"4": 8, "8": 8, "16": 8},
        motion_encoder_size=TINY_MOTION_SIZE,
        motion_style_dim=16,
        motion_dim=4,
        motion_encoder_dim=16,
        face_encoder_hidden_dim=16,
        face_encoder_num_heads=2,
        inject_face_latents_blocks=TINY_FACE_EVERY,
        motion_encoder_batch_size=8,
    )


def _transformer():
    import torch
    from diffusers import WanAnimateTransformer3DModel

    with seeded(_SEED_TRANSFORMER):
        model = WanAnimateTransformer3DModel(**tiny_transformer_config()).eval()
        # Random weights of a visible size everywhere (some modules start at zero), drawn in a
        # fixed order so the bytes do not depend on module construction details.
        gen = torch.Generator().manual_seed(_SEED_TRANSFORMER)
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if name.endswith("padding_tokens"):
                    continue
                if param.dim() > 1:
                    fan_in = max(1, param[0].numel())
                    param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
                elif "norm" in name:
                    param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
                else:
                    param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    return model


def _text_encoder(vocab_size: int):
    return tiny_umt5(vocab_size, TINY_TEXT_DIM, _SEED_TEXT)


def _vae():
    from diffusers import AutoencoderKLWan

    with seeded(_SEED_VAE):
        return AutoencoderKLWan(
            base_dim=4,
            z_dim=16,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[False, True, True],
        ).eval()


def _image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with seeded(_SEED_CLIP):
        config = CLIPVisionConfig(
            hidden_size=TINY_IMAGE_DIM,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_CLIP_SIZE,
            patch_size=8,
            projection_dim=TINY_IMAGE_DIM,
        )
        return CLIPVisionModel(config).eval()


def _image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": TINY_CLIP_SIZE},
        crop_size={"height": TINY_CLIP_SIZE, "width": TINY_CLIP_SIZE},
    )


def build_tiny_animate(dst: Path) -> Path:
    """Write a tiny random ``WanAnimatePipeline`` folder at ``dst`` (which must not exist)."""
    from ...runtime.dtypes import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import UniPCMultistepScheduler, WanAnimatePipeline

    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} exists")
    with torch.no_grad():
        tokenizer = t5_tokenizer()
        pipe = WanAnimatePipeline(
            tokenizer=tokenizer,
            text_encoder=_text_encoder(len(tokenizer)),
            vae=_vae(),
            scheduler=UniPCMultistepScheduler(
                num_train_timesteps=1000,
                prediction_type="flow_prediction",
                use_flow_sigmas=True,
                flow_shift=5.0,
            ),
            image_processor=_image_processor(),
            image_encoder=_image_encoder(),
            transformer=_transformer(),
        )
        pipe.save_pretrained(dst)
    return dst


# --------------------------------------------------------------------------- LoRA

_LORA_SHAPES = {
    "self_attn.q": (TINY_INNER, TINY_INNER),
    "self_attn.k": (TINY_INNER, TINY_INNER),
    "self_attn.v": (TINY_INNER, TINY_INNER),
    "self_attn.o": (TINY_INNER, TINY_INNER),
    "cross_attn.q": (TINY_INNER, TINY_INNER),
    "cross_attn.o": (TINY_INNER, TINY_INNER),
    "ffn.0": (TINY_FFN, TINY_INNER),
    "ffn.2": (TINY_INNER, TINY_FFN),
}


def write_tiny_animate_lora(dst: Path, seed: int = _SEED_LORA, rank: int = 4, b_std: float = 0.5) -> Path:
    """A LoRA for the tiny Animate transformer, original Wan key names, saved as safetensors."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(TINY_LAYERS):
        for module, (out_f, in_f) in _LORA_SHAPES.items():
            a = torch.randn(rank, in_f, generator=gen) / in_f**0.5
            b = torch.randn(out_f, rank, generator=gen) * b_std
            sd[f"diffusion_model.blocks.{i}.{module}.lora_A.weight"] = a.contiguous()
            sd[f"diffusion_model.blocks.{i}.{module}.lora_B.weight"] = b.contiguous()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(dst), metadata={"format": "pt"})
    return dst
