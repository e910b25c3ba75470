"""Motion-frame conditioning of the S2V transformer: how the latents of the previous segment's
last frames become extra tokens appended to the sequence.

Three variants exist in the checkpoint format; the released Wan2.2-S2V-14B uses FramePack.

* :class:`FramePackMotionEncoder` (``enable_framepack``, prefix ``frame_packer``): the last
  ``1 + 2 + 16 = 19`` motion latent frames (left zero-padded when fewer are given) are split,
  newest to oldest, into 1 frame patchified at (1, 2, 2), 2 frames at (2, 4, 4) and 16 frames at
  (4, 8, 8). Their RoPE frame positions lie in the past (-1, -3 and -19..-4) and the coarse grids
  are spread over the full-resolution spatial extent.
* :class:`MotionTransformer` (``enable_motioner``, prefixes ``motioner`` and ``zip_motion_out``):
  a small transformer compresses the motion latents into ``motion_token_num`` learned tokens.
* neither: the motion latents go through the main patch embedding, at frame positions
  ``-T .. -1`` (handled in the main model).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .blocks import (
    FP32LayerNorm,
    RopeTable,
    S2VSelfAttention,
    TokenGrid,
    build_rope,
    compute_dtype,
)

__all__ = ["FramePackMotionEncoder", "MotionTransformer", "tsm_sample_indices"]

# Frames per FramePack bucket, nearest first.
FRAMEPACK_BUCKETS = (1, 2, 16)


class FramePackMotionEncoder(nn.Module):
    """FramePack motion tokens (checkpoint names ``proj``, ``proj_2x``, ``proj_4x``)."""

    def __init__(
        self,
        inner_dim: int,
        num_heads: int,
        drop_mode: str = "drop",
        latent_channels: int = 16,
        buckets: Sequence[int] = FRAMEPACK_BUCKETS,
    ):
        super().__init__()
        self.proj = nn.Conv3d(latent_channels, inner_dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(latent_channels, inner_dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(latent_channels, inner_dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))
        self.buckets = tuple(int(b) for b in buckets)
        self.latent_channels = latent_channels
        self.head_dim = inner_dim // num_heads
        self.drop_mode = drop_mode

    def forward(
        self, motion_latents: torch.Tensor, add_last_motion: int = 2
    ) -> tuple[torch.Tensor, list[TokenGrid]]:
        """``motion_latents`` ``[B, C, T, H, W]`` -> tokens ``[B, N, inner_dim]`` and their grids.

        ``add_last_motion``: 2 keeps all buckets; 1 (0) blanks the nearest one (two) of them,
        by zeroing the frames (``drop_mode="padd"``) or removing their tokens (``"drop"``).
        """
        b, c, t, h, w = motion_latents.shape
        total = sum(self.buckets)
        dtype = compute_dtype(self.proj)
        packed = motion_latents.new_zeros(b, self.latent_channels, total, h, w, dtype=dtype)
        keep = min(total, t)
        if keep > 0:
            packed[:, :, total - keep :] = motion_latents[:, :, t - keep :].to(dtype)
        padding = self.drop_mode != "drop"
        if add_last_motion < 2 and padding:
            blank = sum(self.buckets[: len(self.buckets) - add_last_motion - 1])
            packed[:, :, total - blank :] = 0
        far, mid, near = packed.split(list(self.buckets[::-1]), dim=2)

        near_tok = self.proj(near).flatten(2).transpose(1, 2)
        mid_tok = self.proj_2x(mid).flatten(2).transpose(1, 2)
        far_tok = self.proj_4x(far).flatten(2).transpose(1, 2)
        keep_near = padding or add_last_motion >= 2
        keep_mid = padding or add_last_motion >= 1

        b0, b1, b2 = self.buckets
        tokens, grids = [], []
        if keep_near:
            tokens.append(near_tok)
            grids.append(TokenGrid((-b0, 0, 0), (b0, h // 2, w // 2), (b0, h // 2, w // 2)))
        if keep_mid:
            tokens.append(mid_tok)
            grids.append(TokenGrid((-(b0 + b1), 0, 0), (b1 // 2, h // 4, w // 4), (b1, h // 2, w // 2)))
        tokens.append(far_tok)
        grids.append(TokenGrid((-(b0 + b1 + b2), 0, 0), (b2 // 4, h // 8, w // 8), (b2, h // 2, w // 2)))
        return torch.cat(tokens, dim=1), grids


def tsm_sample_indices(num_frames: int, stride: int, expand_ratio: float, group: int) -> list[int]:
    """Frame indices (counted from the newest frame backwards) kept by temporal segment sampling:
    buckets grow geometrically into the past, each keeping ``stride`` samples of ``group``
    consecutive frames."""
    picked: list[int] = []
    begin = 0
    while begin < num_frames:
        width = int(stride * (expand_ratio ** (len(picked) / stride)))
        step = int(width / stride * group)
        end = min(num_frames, begin + width)
        bucket: list[int] = []
        for i in range(end - 1, begin - 1, -step):
            bucket.extend(i - j for j in range(group))
        picked += bucket[::-1]
        begin += width
    return picked


class _MotionBlock(nn.Module):
    """Pre-norm transformer block without modulation or cross-attention."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps)
        self.self_attn = S2VSelfAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = FP32LayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x).float(), RopeTable(rope_cos, rope_sin))
        h = self.norm2(x).float()
        return x + self.ffn(h.to(compute_dtype(self.ffn[0])))


def learned_rotations(freqs: torch.Tensor) -> torch.Tensor:
    """``[N, pairs, 2]`` learned parameters -> unit complex rotations ``[N, pairs]``."""
    f = freqs.to(torch.float64)
    return torch.view_as_complex((f / f.norm(dim=-1, keepdim=True)).contiguous())


def initial_token_freqs(num_tokens: int, head_dim: int) -> torch.Tensor:
    """Starting values for learned token rotations: the rotations of a square grid, scaled 0.01."""
    side = int(math.isqrt(num_tokens))
    rope = build_rope([TokenGrid((0, 0, 0), (1, side, side), (1, side, side))], head_dim)
    return torch.stack([rope.cos, rope.sin], dim=-1) * 0.01


class MotionTransformer(nn.Module):
    """Transformer motioner (checkpoint prefix ``motioner``): patchifies the motion latents at
    (2, 4, 4), appends ``motion_token_num`` learned tokens and returns those tokens after
    ``num_layers`` blocks."""

    def __init__(
        self,
        patch_size: Sequence[int] = (2, 4, 4),
        in_dim: int = 16,
        dim: int = 2048,
        ffn_dim: int = 2048,
        num_heads: int = 16,
        num_layers: int = 13,
        qk_norm: bool = True,
        eps: float = 1e-6,
        motion_token_num: int = 1024,
        enable_tsm: bool = False,
        motion_stride: int = 4,
        expand_ratio: float = 2,
        trainable_token_pos_emb: bool = False,
    ):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.head_dim = dim // num_heads
        self.enable_tsm = enable_tsm
        self.motion_stride = motion_stride
        self.expand_ratio = expand_ratio
        self.trainable_token_pos_emb = trainable_token_pos_emb
        self.motion_side_len = int(math.isqrt(motion_token_num))
        if self.motion_side_len**2 != motion_token_num:
            raise ValueError(f"motion_token_num must be a square, got {motion_token_num}")
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.blocks = nn.ModuleList(
            [_MotionBlock(dim, ffn_dim, num_heads, qk_norm, eps) for _ in range(num_layers)]
        )
        self.token = nn.Parameter(torch.zeros(1, motion_token_num, dim))
        if trainable_token_pos_emb:
            self.token_freqs = nn.Parameter(initial_token_freqs(motion_token_num, self.head_dim))
        self.gradient_checkpointing = False

    def forward(self, motion_latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` -> ``[B, motion_token_num, dim]``."""
        x = motion_latents
        sample_idx: list[int] | None = None
        if self.enable_tsm:
            sample_idx = tsm_sample_indices(x.shape[2], self.motion_stride, self.expand_ratio, self.patch_size[0])
            x = torch.flip(torch.flip(x, [2])[:, :, sample_idx], [2])
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))
        b, _, f, h, w = x.shape
        if sample_idx is None:
            grids = [TokenGrid((0, 0, 0), (f, h, w), (f, h, w))]
            token_frame = 0
        else:
            grids = [
                TokenGrid((idx, 0, 0), (1, h, w), (1, h, w))
                for idx in sample_idx[::-1][:: self.patch_size[0]]
            ]
            token_frame = sample_idx[-1] + 1
        side = self.motion_side_len
        span_f = -1 if self.trainable_token_pos_emb else 1
        grids.append(TokenGrid((token_frame, 0, 0), (1, side, side), (span_f, h, w)))
        learned = learned_rotations(self.token_freqs) if self.trainable_token_pos_emb else None
        rope = build_rope(grids, self.head_dim, device=x.device, learned=learned)

        x = x.flatten(2).transpose(1, 2)
        tokens = self.token.to(x.dtype).expand(b, -1, -1)
        x = torch.cat([x, tokens], dim=1)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = torch.utils.checkpoint.checkpoint(block, x, rope.cos, rope.sin, use_reentrant=False)
            else:
                x = block(x, rope.cos, rope.sin)
        return x[:, -tokens.shape[1] :]
