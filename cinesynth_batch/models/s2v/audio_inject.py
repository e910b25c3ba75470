"""Audio path of the S2V transformer: the causal audio encoder and the audio injector.

``AudioFeatureEncoder`` (checkpoint prefix ``casual_audio_encoder``) turns the hidden states of
every wav2vec2 layer, one vector per *video* frame, into a few audio tokens per *latent* frame:

1. a learned softmax-like mix over layers: ``w = silu(weights)``, ``sum_l(feat_l * w_l) / sum(w)``;
2. three causal 1-D convolutions (kernel 3, left "replicate" padding), the last two with stride 2,
   so ``T`` frames become ``ceil(ceil(T / 2) / 2)`` steps (the VAE's 4x temporal compression);
3. a *local* branch producing ``num_audio_token`` tokens per step, plus one learned padding token;
   and, when AdaIN is enabled, a *global* branch producing one vector per step.

``AudioInjector`` (prefix ``audio_injector``) adds, after selected DiT blocks, a cross-attention
from each latent frame's video tokens to that frame's audio tokens. With ``enable_adain`` and
``adain_mode="attn_norm"`` the video tokens are first normalised by an adaptive LayerNorm whose
shift/scale come from the global audio vector of the frame.

The encoder runs in float32 (weights upcast), like the reference.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import S2VCrossAttention, compute_dtype

__all__ = ["audio_injector_slots", "AudioFeatureEncoder", "AudioAdaptiveNorm", "AudioInjector"]


def audio_injector_slots(num_layers: int, inject_layers: Sequence[int]) -> tuple[int, dict[int, int]]:
    """Number of injector modules and ``{block index: injector index}`` for a layer list.

    The checkpoint layout assigns injectors by matching block *names*: block ``n`` takes an
    injector for every listed ``i`` such that the decimal ``n`` starts with the decimal ``i``
    (blocks visited in order, the list in its order), and block ``i`` uses the last injector so
    assigned for ``i``. For the released model (40 blocks, layers 0,4,...,39) this is simply one
    injector per listed block, in order; for layer lists such as ``[1]`` with 12 blocks the
    checkpoint holds extra (unused) injectors, which must exist to load it.
    """
    count = 0
    slots: dict[int, int] = {}
    for block in range(num_layers):
        for layer in inject_layers:
            if str(block).startswith(str(layer)):
                slots[int(layer)] = count
                count += 1
    return count, slots


class _CausalConv1d(nn.Module):
    """Conv1d over time with ``kernel - 1`` frames of left replicate padding (prefix ``conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.left = kernel_size - 1
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, T], float32
        x = F.pad(x, (self.left, 0), mode="replicate")
        w, b = self.conv.weight, self.conv.bias
        return F.conv1d(x, w.to(x.dtype), None if b is None else b.to(x.dtype), stride=self.conv.stride)


class _AudioConvStack(nn.Module):
    """The convolutional part of the audio encoder (checkpoint prefix ``...encoder``)."""

    def __init__(self, in_dim: int, hidden_dim: int, num_tokens: int, with_global: bool):
        super().__init__()
        if hidden_dim % 4:
            raise ValueError(f"the transformer dim ({hidden_dim}) must be divisible by 4")
        quarter = hidden_dim // 4
        self.num_tokens = num_tokens
        self.with_global = with_global
        self.hidden_dim = hidden_dim
        self.conv1_local = _CausalConv1d(in_dim, quarter * num_tokens, 3, stride=1)
        if with_global:
            self.conv1_global = _CausalConv1d(in_dim, quarter, 3, stride=1)
        self.conv2 = _CausalConv1d(quarter, hidden_dim // 2, 3, stride=2)
        self.conv3 = _CausalConv1d(hidden_dim // 2, hidden_dim, 3, stride=2)
        if with_global:
            self.final_linear = nn.Linear(hidden_dim, hidden_dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, hidden_dim))

    @staticmethod
    def _norm_act(x: torch.Tensor) -> torch.Tensor:  # [N, T, C]: LayerNorm (no affine) + SiLU
        return F.silu(F.layer_norm(x, x.shape[-1:], eps=1e-6))

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, C/4]`` (already normalised) -> ``[N, T', C]`` through the strided convs."""
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)
        x = self._norm_act(x)
        x = self.conv3(x.transpose(1, 2)).transpose(1, 2)
        return self._norm_act(x)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``feats`` ``[B, audio_dim, T]`` float32 -> (local ``[B, T', tokens + 1, C]``,
        global ``[B, T', 1, C]`` or None)."""
        b, _, t = feats.shape
        local = self.conv1_local(feats)  # [B, tokens * C/4, T]
        local = local.unflatten(1, (self.num_tokens, -1)).permute(0, 1, 3, 2).flatten(0, 1)
        local = self._tail(self._norm_act(local))  # [B * tokens, T', C]
        local = local.unflatten(0, (b, self.num_tokens)).transpose(1, 2)  # [B, T', tokens, C]
        pad = self.padding_tokens.to(local.dtype).expand(b, local.shape[1], 1, -1)
        local = torch.cat([local, pad], dim=2)
        if not self.with_global:
            return local, None
        glob = self.conv1_global(feats).transpose(1, 2)  # [B, T, C/4]
        glob = self._tail(self._norm_act(glob))
        fl = self.final_linear
        glob = F.linear(glob, fl.weight.to(glob.dtype), fl.bias.to(glob.dtype))
        return local, glob.unsqueeze(2)


class AudioFeatureEncoder(nn.Module):
    """Causal audio encoder (checkpoint prefix ``casual_audio_encoder``)."""

    def __init__(
        self,
        audio_dim: int,
        out_dim: int,
        num_layers: int = 25,
        num_tokens: int = 4,
        with_global: bool = False,
    ):
        super().__init__()
        self.encoder = _AudioConvStack(audio_dim, out_dim, num_tokens, with_global)
        self.weights = nn.Parameter(torch.full((1, num_layers, 1, 1), 0.01))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``features`` ``[B, num_layers, audio_dim, T]`` -> (local, global), both float32."""
        if features.shape[1] != self.weights.shape[1]:
            raise ValueError(
                f"audio features hold {features.shape[1]} layers, the encoder mixes {self.weights.shape[1]}"
            )
        w = F.silu(self.weights.float())
        mixed = ((features.float() * w) / w.sum(dim=1, keepdim=True)).sum(dim=1)  # [B, C_a, T]
        return self.encoder(mixed)


class AudioAdaptiveNorm(nn.Module):
    """LayerNorm (eps 1e-5, no affine) with shift and scale predicted from a conditioning vector.

    Checkpoint names: ``linear`` (``dim -> 2 * dim``, output split as shift then scale).
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N, S, C]``; ``cond`` ``[N, C]``."""
        params = self.linear(F.silu(cond).to(compute_dtype(self.linear)))
        shift, scale = params.chunk(2, dim=-1)
        normed = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps)
        return normed * (1 + scale[:, None]) + shift[:, None]


class AudioInjector(nn.Module):
    """Per-frame audio cross-attention added after selected blocks (prefix ``audio_injector``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_layers: int,
        inject_layers: Sequence[int],
        enable_adain: bool = False,
        adain_mode: str = "attn_norm",
    ):
        super().__init__()
        count, self.block_to_injector = audio_injector_slots(num_layers, inject_layers)
        self.use_adain = bool(enable_adain) and adain_mode == "attn_norm"
        self.injector = nn.ModuleList([S2VCrossAttention(dim, num_heads, qk_norm=True, eps=1e-6) for _ in range(count)])
        # Plain LayerNorm used when the adaptive norm is off (no parameters).
        self.injector_pre_norm_feat = nn.ModuleList(
            [nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6) for _ in range(count)]
        )
        if enable_adain:
            self.injector_adain_layers = nn.ModuleList([AudioAdaptiveNorm(dim) for _ in range(count)])
            if adain_mode != "attn_norm":
                # Present in such checkpoints; the forward pass does not use them.
                self.injector_adain_output_layers = nn.ModuleList([nn.Linear(dim, dim) for _ in range(count)])

    def injects_after(self, block_idx: int) -> bool:
        return block_idx in self.block_to_injector

    def forward(
        self,
        block_idx: int,
        hidden: torch.Tensor,
        num_video_tokens: int,
        audio_tokens: torch.Tensor,
        audio_global: torch.Tensor | None,
    ) -> torch.Tensor:
        """Add the audio cross-attention of block ``block_idx`` to the first ``num_video_tokens``
        tokens of ``hidden`` ``[B, L, C]``.

        ``audio_tokens`` ``[B, F, tokens, C]`` and ``audio_global`` ``[B, F, 1, C]`` hold one entry
        per latent frame ``F``; the video tokens are grouped frame by frame.
        """
        slot = self.block_to_injector[block_idx]
        b, frames = audio_tokens.shape[:2]
        video = hidden[:, :num_video_tokens]
        per_frame = video.reshape(b * frames, num_video_tokens // frames, video.shape[-1])
        if self.use_adain:
            if audio_global is None:
                raise ValueError("adaptive audio norm needs the global audio embedding")
            normed = self.injector_adain_layers[slot](per_frame, audio_global.flatten(0, 1)[:, 0])
        else:
            normed = F.layer_norm(per_frame.float(), per_frame.shape[-1:], eps=1e-6)
        context = audio_tokens.flatten(0, 1)
        out = self.injector[slot](normed, context)
        out = out.reshape(b, num_video_tokens, -1)
        return torch.cat([video + out, hidden[:, num_video_tokens:]], dim=1)
