"""A tiny random AMT (``models/amt/``) as safetensors with the official key names: AMT-G's
structure (wide stem, five-stage correlation encoder, second updates at full resolution) at a
fraction of its widths, with three correlation levels instead of four, so that frames of 64
pixels a side need no padding (``models/amt/runner.py``)."""

from __future__ import annotations

from pathlib import Path

from ...models.amt.network import AmtConfig

TINY_AMT = "amt-g.safetensors"
TINY_CONFIG = AmtConfig(channels=(4, 8, 8, 12), skip=4, flows=2, wide_stem=True, feat_widths=(8, 8, 12, 16, 16),
                        feat_dim=16, bottleneck=False, hidden=16, flow_dim=8, corr_dim=16, corr_dim2=12, fc_dim=12,
                        comb_kernel=3, refine_full=True, levels=3)


def build_tiny_amt(path: str | Path, *, seed: int = 6201) -> Path:
    """Write the tiny AMT's weights: small seeded draws (flows of a few pixels), PReLU slopes 0.25."""
    import torch

    from ...models.amt.network import AMT
    from .parts import small_draws

    with torch.device("meta"):
        ref = AMT(TINY_CONFIG)
    return small_draws(ref, seed, lambda name, p: 0.25 if p.dim() != 4 and name.endswith(".weight") else None,
                       path)
