"""Wan2.2-S2V (speech-to-video) transformer as a diffusers model.

:class:`WanS2VTransformer3DModel` reads the released ``Wan2.2-S2V-14B`` folder as is:
``config.json`` (the ``__init__`` arguments of the reference ``WanModel_S2V``) plus the sharded
``diffusion_pytorch_model-0000N-of-00004.safetensors`` with its index. Every parameter keeps its
checkpoint name (``blocks.N.self_attn.q``, ``casual_audio_encoder.*``, ``audio_injector.*``,
``frame_packer.*``, ...), so LoRA target names are the Wan ones too.

Sequence layout inside the model (one row per sample; all samples share shapes)::

    [ noisy video tokens | reference-image tokens | motion tokens ]
      F * H/2 * W/2        H/2 * W/2                 FramePack: H/2*W/2 + H/4*W/4 + 4*H/8*W/8

* RoPE frame positions: noisy frames ``0..F-1``, the reference frame at ``30``, FramePack motion
  tokens in the past (``-1``, ``-3``, ``-19..-4``).
* ``trainable_cond_mask`` adds a learned vector per token kind (0 noisy, 1 reference, 2 motion).
* With ``zero_timestep`` the reference and motion tokens are modulated with the embedding of
  timestep 0 and the noisy tokens with the real timestep.
* After the blocks listed in ``audio_inject_layers``, each latent frame's noisy tokens
  cross-attend to that frame's audio tokens (see ``audio_inject.py``).
* The head only decodes the noisy tokens: the output has the shape of ``hidden_states``.

See :func:`describe_inputs` for the exact tensors a pipeline passes.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import apply_lora_scale
from torch import nn

from .audio_inject import AudioFeatureEncoder, AudioInjector
from .blocks import (
    FP32LayerNorm,
    RopeTable,
    S2VOutputHead,
    S2VTransformerBlock,
    TokenGrid,
    build_rope,
    compute_dtype,
    run_fp32,
    timestep_sinusoid,
)
from .motion import FramePackMotionEncoder, MotionTransformer, initial_token_freqs, learned_rotations

__all__ = [
    "WanS2VTransformer3DModel",
    "S2V_14B_CONFIG",
    "S2V_14B_MOTION_FRAMES",
    "OFFICIAL_CONFIG_KEYS",
    "describe_inputs",
]

# RoPE frame position of the reference image token grid.
REF_FRAME_POSITION = 30
# Motioner width/depth are fixed in the checkpoint format.
MOTIONER_DIM = 2048
MOTIONER_LAYERS = 13
MOTIONER_HEADS = 16

# Pixel frames of history carried between segments by the released pipeline, and their latent
# count ((73 + 3) // 4): the ``motion_frames`` forward argument of the 14B model.
S2V_14B_MOTION_FRAMES = (73, 19)

# ``__init__`` arguments of the reference ``WanModel_S2V``, i.e. the keys its config.json may hold.
OFFICIAL_CONFIG_KEYS = (
    "cond_dim",
    "audio_dim",
    "num_audio_token",
    "enable_adain",
    "adain_mode",
    "audio_inject_layers",
    "zero_init",
    "zero_timestep",
    "enable_motioner",
    "add_last_motion",
    "enable_tsm",
    "trainable_token_pos_emb",
    "motion_token_num",
    "enable_framepack",
    "framepack_drop_mode",
    "model_type",
    "patch_size",
    "text_len",
    "in_dim",
    "dim",
    "ffn_dim",
    "freq_dim",
    "text_dim",
    "out_dim",
    "num_heads",
    "num_layers",
    "window_size",
    "qk_norm",
    "cross_attn_norm",
    "eps",
)

# The released Wan2.2-S2V-14B transformer (wan/configs/wan_s2v_14B.py values over the defaults).
S2V_14B_CONFIG: dict[str, Any] = {
    "cond_dim": 16,
    "audio_dim": 1024,
    "num_audio_token": 4,
    "enable_adain": True,
    "adain_mode": "attn_norm",
    "audio_inject_layers": [0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39],
    "zero_init": True,
    "zero_timestep": True,
    "enable_motioner": False,
    "add_last_motion": True,
    "enable_tsm": False,
    "trainable_token_pos_emb": False,
    "motion_token_num": 1024,
    "enable_framepack": True,
    "framepack_drop_mode": "padd",
    "model_type": "s2v",
    "patch_size": [1, 2, 2],
    "text_len": 512,
    "in_dim": 16,
    "dim": 5120,
    "ffn_dim": 13824,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 40,
    "num_layers": 40,
    "window_size": [-1, -1],
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "num_audio_layers": 25,
}


def describe_inputs(config: dict[str, Any] | None = None) -> str:
    """What to pass to :meth:`WanS2VTransformer3DModel.forward` (for pipeline authors).

    ``hidden_states``      ``[B, in_dim=16, F, H/8, W/8]`` noisy VAE latents of the segment
                           (``F = (infer_frames + 3 + 73) // 4 - 19``, e.g. 80 -> 20);
                           ``H/8`` and ``W/8`` even (patch (1, 2, 2)); for FramePack motion they
                           should be multiples of 8 (pixel sizes multiple of 64, as the reference).
    ``timestep``           ``[B]`` or scalar, in ``[0, 1000]`` (scheduler timesteps).
    ``encoder_hidden_states`` ``[B, L<=text_len, text_dim=4096]`` UMT5 states, trimmed to the real
                           tokens and zero-padded (zero-padding to ``text_len`` is done here).
    ``ref_latents``        ``[B, 16, 1, H/8, W/8]`` VAE latent of the reference image.
    ``motion_latents``     ``[B, 16, T_m, H/8, W/8]`` VAE latents of the last 73 pixel frames
                           (``T_m = 19``); for the first segment the latents of 73 zero frames
                           with ``drop_motion_frames=True``.
    ``audio_features``     ``[B, num_audio_layers=25, audio_dim=1024, infer_frames]``: all hidden
                           states of wav2vec2-large-xlsr-53 (embeddings + 24 layers), resampled to
                           one vector per *pixel* frame of this segment (16 fps).
    ``motion_frames``      ``(73, 19)``: pixel and latent frames of history. The audio is left-padded
                           with ``73`` copies of its first frame and, after the 4x temporal
                           compression of the audio encoder, the first ``19`` steps are dropped,
                           leaving exactly ``F`` audio steps.
    ``cond_states``        ``[B, cond_dim=16, F, H/8, W/8]`` pose latents, or None (= zeros, what the
                           reference passes without a pose video).
    ``drop_motion_frames`` True for the first segment (no motion tokens at all).

    Output: ``[B, 16, F, H/8, W/8]`` float32 flow prediction for the noisy frames.
    """
    doc = describe_inputs.__doc__ or ""
    if config is not None:
        doc += (
            f"\nThis config: in_dim={config.get('in_dim')}, text_dim={config.get('text_dim')}, "
            f"audio={config.get('num_audio_layers', 25)}x{config.get('audio_dim')}, "
            f"cond_dim={config.get('cond_dim')}, text_len={config.get('text_len')}."
        )
    return doc


def _zero_(module: nn.Module) -> None:
    for p in module.parameters():
        nn.init.zeros_(p)


class WanS2VTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    r"""The Wan2.2-S2V transformer.

    The configuration arguments are those of the reference ``WanModel_S2V`` (same names, same
    defaults), plus ``num_audio_layers`` (number of wav2vec2 hidden states mixed by the audio
    encoder; fixed to 25 in the reference). ``patch_size``, ``text_dim``, ``window_size``,
    ``qk_norm`` and ``cross_attn_norm`` are written to our config.json although the reference
    leaves them out of its own; a reference config.json lacking them gets the defaults, which are
    the released model's values.

    Only global attention is implemented (``window_size`` must be ``(-1, -1)``).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["S2VTransformerBlock", "_MotionBlock"]
    # fp8 weight storage (diffusers' layerwise casting) leaves these in the compute dtype, as
    # diffusers' Wan models leave their patch and condition embeddings and output projection
    _skip_layerwise_casting_patterns = ["patch_embedding", "^text_embedding", "^time_embedding", "^time_projection",
                                        "norm", "^head", "^trainable_cond_mask"]
    _sequence_split = None      # set by enable_sequence_parallel

    @register_to_config
    def __init__(
        self,
        cond_dim: int = 0,
        audio_dim: int = 5120,
        num_audio_token: int = 4,
        enable_adain: bool = False,
        adain_mode: str = "attn_norm",
        audio_inject_layers: Sequence[int] = (0, 4, 8, 12, 16, 20, 24, 27),
        zero_init: bool = False,
        zero_timestep: bool = False,
        enable_motioner: bool = True,
        add_last_motion: bool = True,
        enable_tsm: bool = False,
        trainable_token_pos_emb: bool = False,
        motion_token_num: int = 1024,
        enable_framepack: bool = False,
        framepack_drop_mode: str = "drop",
        model_type: str = "s2v",
        patch_size: Sequence[int] = (1, 2, 2),
        text_len: int = 512,
        in_dim: int = 16,
        dim: int = 2048,
        ffn_dim: int = 8192,
        freq_dim: int = 256,
        text_dim: int = 4096,
        out_dim: int = 16,
        num_heads: int = 16,
        num_layers: int = 32,
        window_size: Sequence[int] = (-1, -1),
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        num_audio_layers: int = 25,
    ):
        super().__init__()
        if model_type != "s2v":
            raise ValueError(f"model_type must be 's2v', got {model_type!r}")
        if enable_motioner and enable_framepack:
            raise ValueError("enable_motioner and enable_framepack are mutually exclusive")
        if tuple(window_size) != (-1, -1):
            raise ValueError("only global attention (window_size=(-1, -1)) is supported")
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} / num_heads {num_heads} must give an even head size")

        self.patch = tuple(int(p) for p in patch_size)
        self.head_dim = dim // num_heads

        # embeddings
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch, stride=self.patch)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))

        self.blocks = nn.ModuleList(
            [S2VTransformerBlock(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps) for _ in range(num_layers)]
        )
        self.head = S2VOutputHead(dim, out_dim, self.patch, eps)
        self._init_core_weights()

        if cond_dim > 0:
            self.cond_encoder = nn.Conv3d(cond_dim, dim, kernel_size=self.patch, stride=self.patch)
        self.casual_audio_encoder = AudioFeatureEncoder(
            audio_dim, dim, num_layers=num_audio_layers, num_tokens=num_audio_token, with_global=enable_adain
        )
        self.audio_injector = AudioInjector(
            dim, num_heads, num_layers, list(audio_inject_layers), enable_adain=enable_adain, adain_mode=adain_mode
        )
        self.trainable_cond_mask = nn.Embedding(3, dim)

        if zero_init:
            _zero_(self.trainable_cond_mask)
            if cond_dim > 0:
                _zero_(self.cond_encoder)
            for i, attn in enumerate(self.audio_injector.injector):
                _zero_(attn.o)
                if enable_adain:
                    _zero_(self.audio_injector.injector_adain_layers[i].linear)

        if enable_motioner:
            self.motioner = MotionTransformer(
                patch_size=(2, 4, 4),
                dim=MOTIONER_DIM,
                ffn_dim=MOTIONER_DIM,
                num_heads=MOTIONER_HEADS,
                num_layers=MOTIONER_LAYERS,
                qk_norm=True,
                eps=1e-6,
                motion_token_num=motion_token_num,
                enable_tsm=enable_tsm,
                motion_stride=4,
                expand_ratio=2,
                trainable_token_pos_emb=trainable_token_pos_emb,
            )
            self.zip_motion_out = nn.Sequential(FP32LayerNorm(MOTIONER_DIM), nn.Linear(MOTIONER_DIM, dim))
            _zero_(self.zip_motion_out[1])
            if trainable_token_pos_emb:
                self.token_freqs = nn.Parameter(initial_token_freqs(motion_token_num, self.head_dim))
        if enable_framepack:
            self.frame_packer = FramePackMotionEncoder(dim, num_heads, drop_mode=framepack_drop_mode)

        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ init

    def _init_core_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    # ------------------------------------------------------------------ motion tokens

    def _motion_tokens(
        self,
        motion_latents: torch.Tensor,
        add_last_motion: int,
        drop_motion_frames: bool,
    ) -> tuple[torch.Tensor | None, list[TokenGrid], torch.Tensor | None]:
        """Motion tokens ``[B, N, C]`` (or None), their grids and learned rotations if any."""
        cfg = self.config
        if cfg.enable_framepack:
            if drop_motion_frames:
                return None, [], None
            tokens, grids = self.frame_packer(motion_latents, add_last_motion)
            return tokens, grids, None

        if cfg.enable_motioner:
            h = motion_latents.shape[3] // self.patch[1]
            w = motion_latents.shape[4] // self.patch[2]
            parts, grids = [], []
            if not drop_motion_frames and add_last_motion:
                last = self.patch_embedding(motion_latents[:, :, -1:].to(self.patch_embedding.weight.dtype))
                parts.append(last.flatten(2).transpose(1, 2))
                grids.append(TokenGrid((-1, 0, 0), (1, h, w), (1, h, w)))
            zipped = self.motioner(motion_latents)
            norm, proj = self.zip_motion_out[0], self.zip_motion_out[1]
            zipped = proj(norm(zipped).to(compute_dtype(proj)))
            if drop_motion_frames:
                zipped = zipped * 0.0
            side = self.motioner.motion_side_len
            span_f = -1 if cfg.trainable_token_pos_emb else 1
            grids.append(TokenGrid((-1, 0, 0), (1, side, side), (span_f, h, w)))
            parts.append(zipped.to(parts[0].dtype) if parts else zipped)
            learned = learned_rotations(self.token_freqs) if cfg.trainable_token_pos_emb else None
            return torch.cat(parts, dim=1), grids, learned

        t_m = motion_latents.shape[2]
        if drop_motion_frames or t_m == 0:
            return None, [], None
        mot = self.patch_embedding(motion_latents.to(self.patch_embedding.weight.dtype))
        _, _, _, h, w = mot.shape
        grid = TokenGrid((-t_m, 0, 0), (t_m, h, w), (t_m, h, w))
        return mot.flatten(2).transpose(1, 2), [grid], None

    # ------------------------------------------------------------------ forward

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        ref_latents: torch.Tensor,
        motion_latents: torch.Tensor,
        audio_features: torch.Tensor,
        motion_frames: Sequence[int] = (17, 5),
        cond_states: torch.Tensor | None = None,
        add_last_motion: int = 2,
        drop_motion_frames: bool = False,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        r"""Predict the flow for the noisy frames of one segment.

        Args:
            hidden_states: ``[B, in_dim, F, H, W]`` noisy latents.
            timestep: ``[B]`` (or a scalar) diffusion timesteps.
            encoder_hidden_states: ``[B, L, text_dim]`` text states, ``L <= text_len``; zero-padded
                here to ``text_len`` (the padded positions take part in the cross-attention, as in
                the reference).
            ref_latents: ``[B, in_dim, 1, H_r, W_r]`` reference image latent (normally ``H_r=H``).
            motion_latents: ``[B, in_dim, T_m, H, W]`` latents of the previous segment's last
                frames (any ``T_m``; FramePack uses the last 19, zero-padding fewer).
            audio_features: ``[B, num_audio_layers, audio_dim, T_a]`` wav2vec2 hidden states, one
                vector per pixel frame; ``T_a`` pixel frames of this segment.
            motion_frames: ``(pixel, latent)`` history frames ``(M_p, M_l)``: the audio is
                left-padded with ``M_p`` copies of its first frame and the first ``M_l`` encoded
                audio steps are dropped; ``ceil(ceil((T_a + M_p) / 2) / 2) - M_l`` must equal ``F``.
                The reference default is ``(17, 5)``; the 14B pipeline passes ``(73, 19)``.
            cond_states: ``[B, cond_dim, F, H, W]`` pose latents; None means zeros (needs
                ``cond_dim > 0`` to be given).
            add_last_motion: 2 uses all motion buckets, 1 / 0 blank the nearest one / two
                (multiplied by the ``add_last_motion`` config flag, as in the reference).
            drop_motion_frames: ignore the motion latents (first segment).
            attention_kwargs: ``{"scale": s}`` scales LoRA adapters for this call.
            return_dict: return a ``Transformer2DModelOutput`` rather than a tuple.

        Returns:
            ``sample``: ``[B, out_dim, F, H, W]`` float32.
        """
        cfg = self.config
        dtype = self.patch_embedding.weight.dtype
        device = hidden_states.device
        b, _, frames, height, width = hidden_states.shape
        add_last_motion = int(bool(cfg.add_last_motion)) * int(add_last_motion)
        mp, ml = (int(v) for v in motion_frames)

        # audio tokens per latent frame
        if audio_features.dim() != 4:
            raise ValueError(f"audio_features must be [B, layers, dim, frames], got {tuple(audio_features.shape)}")
        audio = torch.cat([audio_features[..., :1].expand(-1, -1, -1, mp), audio_features], dim=-1)
        audio_local, audio_global = self.casual_audio_encoder(audio)
        audio_local = audio_local[:, ml:]
        audio_global = None if audio_global is None else audio_global[:, ml:]
        if audio_local.shape[1] != frames:
            raise ValueError(
                f"audio gives {audio_local.shape[1]} latent steps after dropping {ml}, the latents have "
                f"{frames} frames (audio frames {audio_features.shape[-1]}, motion_frames {(mp, ml)})"
            )

        # noisy tokens (+ pose condition)
        x = self.patch_embedding(hidden_states.to(dtype))
        if cfg.cond_dim > 0:
            if cond_states is None:
                cond = self.cond_encoder.bias.to(dtype)[None, :, None, None, None]
            else:
                cond = self.cond_encoder(cond_states.to(dtype))
            x = x + cond
        elif cond_states is not None:
            raise ValueError("cond_states given but the model has no cond_encoder (cond_dim=0)")
        grid_f, grid_h, grid_w = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        num_video = x.shape[1]
        grids = [TokenGrid((0, 0, 0), (grid_f, grid_h, grid_w), (grid_f, grid_h, grid_w))]

        # reference tokens
        if ref_latents.shape[2] != 1:
            raise ValueError(f"ref_latents must hold one latent frame, got {ref_latents.shape[2]}")
        ref = self.patch_embedding(ref_latents.to(dtype))
        ref_h, ref_w = ref.shape[3:]
        ref = ref.flatten(2).transpose(1, 2)
        grids.append(TokenGrid((REF_FRAME_POSITION, 0, 0), (1, ref_h, ref_w), (1, ref_h, ref_w)))

        # motion tokens
        mot, mot_grids, learned = self._motion_tokens(motion_latents, add_last_motion, bool(drop_motion_frames))
        parts = [x, ref] + ([mot.to(x.dtype)] if mot is not None and mot.shape[1] > 0 else [])
        x = torch.cat(parts, dim=1)
        grids += mot_grids
        rope = build_rope(grids, self.head_dim, device=device, learned=learned)
        if len(rope) != x.shape[1]:
            raise RuntimeError(f"RoPE covers {len(rope)} tokens, the sequence has {x.shape[1]}")

        kinds = torch.zeros(x.shape[1], dtype=torch.long, device=device)
        kinds[num_video : num_video + ref.shape[1]] = 1
        kinds[num_video + ref.shape[1] :] = 2
        x = x + self.trainable_cond_mask(kinds).to(x.dtype)[None]

        # timestep embeddings (float32)
        t = torch.as_tensor(timestep, device=device).reshape(-1)
        if t.numel() == 1 and b > 1:
            t = t.expand(b)
        if cfg.zero_timestep:
            t = torch.cat([t, t.new_zeros(1)])
        e = run_fp32(self.time_embedding, timestep_sinusoid(t, cfg.freq_dim).float())
        e0 = run_fp32(self.time_projection, e).unflatten(1, (6, -1))
        if cfg.zero_timestep:
            e, zero_e0, e0 = e[:-1], e0[-1:], e0[:-1]
            temb = torch.stack([e0, zero_e0.expand_as(e0)], dim=2)  # [B, 6, 2, C]
            split = num_video
        else:
            temb = e0.unsqueeze(2).expand(-1, -1, 2, -1)
            split = 0

        # text context, zero-padded to text_len
        ctx = encoder_hidden_states
        if ctx.shape[1] > cfg.text_len:
            raise ValueError(f"text has {ctx.shape[1]} tokens, more than text_len={cfg.text_len}")
        if ctx.shape[1] < cfg.text_len:
            ctx = torch.cat([ctx, ctx.new_zeros(ctx.shape[0], cfg.text_len - ctx.shape[1], ctx.shape[2])], dim=1)
        first = self.text_embedding[0]
        context = self.text_embedding(ctx.to(compute_dtype(first)))

        sp = self._sequence_split
        if sp is not None:          # this rank keeps its share of the tokens through the blocks
            sp.check(x.shape[1])
            split = sp.local_split(split, x.shape[1])
            x = sp.share(x, 1)
            rope = RopeTable(sp.share(rope.cos, 0), sp.share(rope.sin, 0))

        for idx, block in enumerate(self.blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, temb, split, rope.cos, rope.sin, context)
            else:
                x = block(x, temb, split, rope.cos, rope.sin, context)
            if self.audio_injector.injects_after(idx):
                if sp is not None:  # per-frame audio attention needs the whole sequence
                    x = sp.gather(x, 1)
                x = self.audio_injector(idx, x, num_video, audio_local, audio_global)
                if sp is not None:
                    x = sp.share(x, 1)

        if sp is not None:
            x = sp.gather(x, 1)
        out = self.head(x[:, :num_video], e)
        out = self._unpatchify(out, (grid_f, grid_h, grid_w))
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)

    def enable_sequence_parallel(self, group: Any) -> None:
        """Split every forward over the ranks of ``group`` (Ulysses; see ``sequence.py``)."""
        from .sequence import SequenceSplit

        split = SequenceSplit.over(group)
        if self.config.num_heads % split.degree:
            raise ValueError(f"{self.config.num_heads} attention heads do not split over {split.degree} ranks")
        self._sequence_split = split
        for block in self.blocks:
            block.self_attn.sequence_split = split

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, f*h*w, p_t*p_h*p_w*C]`` -> ``[B, C, f*p_t, h*p_h, w*p_w]``."""
        b = x.shape[0]
        f, h, w = grid
        pt, ph, pw = self.patch
        c = self.config.out_dim
        x = x.reshape(b, f, h, w, pt, ph, pw, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, c, f * pt, h * ph, w * pw)
