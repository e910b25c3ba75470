"""FlashAttention-4 (the ``flash-attn-4`` wheel: ``flash_attn.cute``) as a torch operator.

FA4 is written in the CUTLASS Python DSL and compiles each kernel configuration on first use.
Wrapping its forward in a custom operator with a shape-only fake lets ``torch.compile`` keep the
compiled blocks whole around it instead of tracing into the DSL. Inference only: no backward.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("cinesynth::fa4_attention", mutates_args=())
def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  softmax_scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """Attention over (batch, tokens, heads, head_dim) tensors."""
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal)
    return out[0] if isinstance(out, tuple) else out


@fa4_attention.register_fake
def _(q, k, v, softmax_scale=None, causal=False):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))
