"""Building blocks of the Wan2.2-S2V transformer: 3-axis RoPE over token groups, norms, attention,
the segment-modulated DiT block and the output head.

Numerics follow the reference implementation, which runs under ``autocast(bfloat16)`` with some
regions forced to float32:

* the residual stream is float32 from the first block's residual add onwards;
* matrix products (attention projections, FFN, text embedding, patch convolutions) run in the
  parameter dtype (``compute dtype``): inputs are cast to it just before them
  (:func:`compute_dtype`: the weight dtype, or the dtype a layer whose weights are stored in
  fp8 computes in);
* timestep embedding, AdaLN modulation arithmetic, layer norms and the output head run in float32
  (:func:`linear_fp32` upcasts the weights of plain ``nn.Linear`` layers);
* RoPE is applied in float32 to float32 copies of q and k (angles computed in float64).

Attention is ``torch.nn.functional.scaled_dot_product_attention`` over full, unpadded sequences.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "TokenGrid",
    "RopeTable",
    "rope_axis_pairs",
    "build_rope",
    "apply_rope",
    "timestep_sinusoid",
    "compute_dtype",
    "linear_fp32",
    "run_fp32",
    "FP32LayerNorm",
    "QKRMSNorm",
    "S2VSelfAttention",
    "S2VCrossAttention",
    "S2VTransformerBlock",
    "S2VOutputHead",
]

# RoPE angle tables of the reference are 1024 positions long; positions must stay below that.
ROPE_TABLE_LEN = 1024
ROPE_THETA = 10000.0


# --------------------------------------------------------------------------- rotary embedding


class TokenGrid(NamedTuple):
    """A run of tokens laid out as a (frames, height, width) grid, with its RoPE positions.

    ``start`` is the first position on each axis, ``count`` the number of tokens on each axis
    (the grid is flattened frame-major, then height, then width) and ``span`` the extent of
    positions the tokens are spread over: axis positions are
    ``trunc(linspace(start, start + span - 1, count))``, so a coarse grid (e.g. a 4x-compressed
    motion grid) covers the same positional extent as the fine grid it summarises.

    A negative frame ``start`` places the grid in the past: frame positions are then
    ``-trunc(linspace(-start, -start - span + 1, count))``. A negative frame ``span`` marks a
    grid whose rotations come from a learned table instead (see :func:`build_rope`).
    """

    start: tuple[int, int, int]
    count: tuple[int, int, int]
    span: tuple[int, int, int]

    @property
    def numel(self) -> int:
        return int(self.count[0]) * int(self.count[1]) * int(self.count[2])


class RopeTable(NamedTuple):
    """Per-token rotations, ``cos`` and ``sin`` of shape ``[L, head_dim // 2]`` (float32)."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __len__(self) -> int:  # number of tokens covered
        return int(self.cos.shape[0])


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs given to the frame, height and width axes for one attention head."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    per_hw = head_dim // 6
    return head_dim // 2 - 2 * per_hw, per_hw, per_hw


def _inv_freq(pairs: int) -> torch.Tensor:
    # Same exponent layout as a table built for ``2 * pairs`` channels: theta^(-2i / (2 * pairs)).
    width = 2 * pairs
    return 1.0 / torch.pow(ROPE_THETA, torch.arange(0, width, 2, dtype=torch.float64) / width)


def _axis_positions(start: int, count: int, span: int) -> np.ndarray:
    if start >= 0:
        return np.linspace(start, start + span - 1, count).astype(int)
    return -np.linspace(-start, -start - span + 1, count).astype(int)


def build_rope(
    grids: Sequence[TokenGrid],
    head_dim: int,
    device: torch.device | str | None = None,
    learned: torch.Tensor | None = None,
) -> RopeTable:
    """Rotations for the concatenation of ``grids`` (in order), for heads of ``head_dim``.

    ``learned``: a complex tensor ``[N, head_dim // 2]`` used, as is, for grids whose frame span
    is negative (their token count must be ``N``). Tables without learned parts are cached (the
    same layout is asked for at every denoising step).
    """
    if learned is None:
        key = tuple(
            TokenGrid(*(tuple(int(v) for v in part) for part in g)) for g in grids
        )
        return _cached_rope(key, int(head_dim), str(torch.device(device or "cpu")))
    return _build_rope(grids, head_dim, device, learned)


@functools.lru_cache(maxsize=8)
def _cached_rope(grids: tuple[TokenGrid, ...], head_dim: int, device: str) -> RopeTable:
    # Normal tensors even when first asked for under inference mode, so that a cached table can
    # later be used in autograd.
    with torch.inference_mode(False):
        return _build_rope(grids, head_dim, device, None)


def _build_rope(
    grids: Sequence[TokenGrid],
    head_dim: int,
    device: torch.device | str | None,
    learned: torch.Tensor | None,
) -> RopeTable:
    pairs = rope_axis_pairs(head_dim)
    inv = [_inv_freq(p) for p in pairs]
    cos_parts: list[torch.Tensor] = []
    sin_parts: list[torch.Tensor] = []
    for grid in grids:
        n = grid.numel
        if n <= 0:
            continue
        if grid.span[0] < 0:
            if learned is None:
                raise ValueError("a grid asks for learned rotations but none were given")
            if learned.shape[0] != n:
                raise ValueError(f"learned rotations hold {learned.shape[0]} tokens, grid has {n}")
            cos_parts.append(learned.real.to(device=device, dtype=torch.float32))
            sin_parts.append(learned.imag.to(device=device, dtype=torch.float32))
            continue
        axes = []
        for axis in range(3):
            pos = _axis_positions(int(grid.start[axis]), int(grid.count[axis]), int(grid.span[axis]))
            if np.abs(pos).max(initial=0) >= ROPE_TABLE_LEN:
                raise ValueError(f"RoPE position {int(np.abs(pos).max())} exceeds {ROPE_TABLE_LEN - 1}")
            axes.append(torch.outer(torch.from_numpy(pos).to(torch.float64), inv[axis]))
        f, h, w = (int(c) for c in grid.count)
        ang = torch.cat(
            [
                axes[0][:, None, None, :].expand(f, h, w, -1),
                axes[1][None, :, None, :].expand(f, h, w, -1),
                axes[2][None, None, :, :].expand(f, h, w, -1),
            ],
            dim=-1,
        ).reshape(n, -1)
        cos_parts.append(torch.cos(ang).to(device=device, dtype=torch.float32))
        sin_parts.append(torch.sin(ang).to(device=device, dtype=torch.float32))
    if not cos_parts:
        empty = torch.zeros(0, head_dim // 2, device=device)
        return RopeTable(empty, empty)
    return RopeTable(torch.cat(cos_parts), torch.cat(sin_parts))


def apply_rope(x: torch.Tensor, rope: RopeTable) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` ``[B, L, heads, head_dim]``; returns float32.

    Only the first ``len(rope)`` tokens are rotated, the rest pass through unchanged.
    """
    n = len(rope)
    xf = x.float()
    head = xf[:, :n].unflatten(-1, (-1, 2))
    re, im = head[..., 0], head[..., 1]
    cos = rope.cos[None, :, None, :]
    sin = rope.sin[None, :, None, :]
    rotated = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(-2)
    if n == xf.shape[1]:
        return rotated
    return torch.cat([rotated, xf[:, n:]], dim=1)


# --------------------------------------------------------------------------- small helpers


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[cos(t * f_i), sin(t * f_i)]`` with ``f_i = 10000^(-i / (dim / 2))``, computed in float64."""
    half = dim // 2
    t = t.to(torch.float64).reshape(-1)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    args = torch.outer(t, freqs)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def compute_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype ``layer`` multiplies in: its weight dtype, or, for weights stored in another dtype
    through diffusers' layerwise casting (fp8 storage), the dtype the hook casts them to."""
    for module in (layer, getattr(layer, "base_layer", None)):       # a PEFT wrapper holds the layer
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("layerwise_casting") if registry is not None else None
        if hook is not None:
            return hook.compute_dtype
    return layer.weight.dtype


def linear_fp32(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a linear layer in float32 whatever its storage dtype (float32 output).

    A plain ``nn.Linear`` is evaluated with upcast weights. A wrapped layer (e.g. a PEFT LoRA
    layer) is called normally, in its weight dtype, so its adapters stay active.
    """
    if type(layer) is nn.Linear:
        bias = None if layer.bias is None else layer.bias.float()
        return F.linear(x.float(), layer.weight.float(), bias)
    return layer(x.to(compute_dtype(layer))).float()


def run_fp32(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a ``Sequential`` of linear layers and activations in float32."""
    x = x.float()
    for layer in seq:
        x = linear_fp32(layer, x) if hasattr(layer, "weight") else layer(x)
    return x


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full attention; ``[B, L, heads, head_dim]`` in, ``[B, L, heads * head_dim]`` out."""
    dtype = v.dtype
    out = F.scaled_dot_product_attention(
        q.to(dtype).transpose(1, 2), k.to(dtype).transpose(1, 2), v.transpose(1, 2)
    )
    return out.transpose(1, 2).flatten(2)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32, result cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class QKRMSNorm(nn.Module):
    """RMS norm over the whole projection width (all heads together), as used on q and k."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


# --------------------------------------------------------------------------- attention


class _Projections(nn.Module):
    """q/k/v/o projections with optional RMS norm on q and k (checkpoint names q, k, v, o,
    norm_q, norm_k)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = QKRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = QKRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))


class S2VSelfAttention(_Projections):
    """Self-attention with RoPE on q and k. With ``sequence_split`` set (see ``sequence.py``)
    ``x`` is this rank's share of the tokens and attention still covers the whole sequence."""

    sequence_split = None

    def forward(self, x: torch.Tensor, rope: RopeTable) -> torch.Tensor:
        x = x.to(compute_dtype(self.q))
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(self.norm_k(self.k(x)))
        v = self._heads(self.v(x))
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if self.sequence_split is None:
            out = _attend(q, k, v)
        else:
            out = self.sequence_split.attend(q, k, v, _attend)
        return self.o(out.to(compute_dtype(self.o)))


class S2VCrossAttention(_Projections):
    """Cross-attention from ``x`` to a context sequence (text tokens, or audio tokens per frame)."""

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(self.q)
        x = x.to(dtype)
        context = context.to(dtype)
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(self.norm_k(self.k(context)))
        v = self._heads(self.v(context))
        return self.o(_attend(q, k, v).to(compute_dtype(self.o)))


# --------------------------------------------------------------------------- DiT block


def _segment_affine(
    h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, split: int
) -> torch.Tensor:
    """``h * (1 + scale) + shift`` with modulation slot 0 for tokens ``[:split]`` and slot 1 for
    the rest. ``shift``/``scale``: ``[B, 2, C]``."""
    head = h[:, :split] * (1 + scale[:, 0:1]) + shift[:, 0:1]
    tail = h[:, split:] * (1 + scale[:, 1:2]) + shift[:, 1:2]
    return torch.cat([head, tail], dim=1)


def _segment_gate(y: torch.Tensor, gate: torch.Tensor, split: int) -> torch.Tensor:
    return torch.cat([y[:, :split] * gate[:, 0:1], y[:, split:] * gate[:, 1:2]], dim=1)


class S2VTransformerBlock(nn.Module):
    """Wan DiT block (self-attn, text cross-attn, FFN) whose AdaLN modulation has two slots.

    Tokens before ``split`` (the noisy video) are modulated with the denoising timestep's
    embedding, tokens after it (reference and motion tokens) with the second slot (the embedding
    of timestep 0 when the model uses ``zero_timestep``).
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps)
        self.self_attn = S2VSelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = S2VCrossAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = FP32LayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        temb: torch.Tensor,
        split: int,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        """``x`` ``[B, L, C]``; ``temb`` ``[B, 6, 2, C]`` float32; ``context`` ``[B, L_text, C]``.

        Returns the float32 residual stream.
        """
        split = min(max(0, int(split)), x.shape[1])
        mod = self.modulation.float().unsqueeze(2) + temb
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(dim=1)
        rope = RopeTable(rope_cos, rope_sin)

        h = _segment_affine(self.norm1(x).float(), shift1, scale1, split)
        y = self.self_attn(h, rope)
        x = x + _segment_gate(y, gate1, split)

        x = x + self.cross_attn(self.norm3(x), context)

        h = _segment_affine(self.norm2(x).float(), shift2, scale2, split)
        first = self.ffn[0]
        y = self.ffn(h.to(compute_dtype(first)))
        return x + _segment_gate(y, gate2, split)


class S2VOutputHead(nn.Module):
    """Final AdaLN (shift, scale from the timestep embedding) and projection to patch pixels."""

    def __init__(self, dim: int, out_dim: int, patch_size: Sequence[int], eps: float = 1e-6):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, C]``; ``temb`` ``[B, C]`` float32. Returns float32 ``[B, L, out]``."""
        mod = self.modulation.float() + temb.float().unsqueeze(1)
        shift, scale = mod[:, 0:1], mod[:, 1:2]
        h = self.norm(x).float() * (1 + scale) + shift
        return linear_fp32(self.head, h)
