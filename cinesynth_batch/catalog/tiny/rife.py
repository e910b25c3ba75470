"""A tiny random RIFE IFNet (``models/rife.py``) as safetensors with the official key names."""

from __future__ import annotations

from pathlib import Path

TINY_RIFE = "rife-v4.25.safetensors"
TINY_CONFIG = {"head": 4, "blocks": (8, 8, 8, 8, 8), "res_convs": 2}


def build_tiny_rife(path: str | Path, *, seed: int = 6101) -> Path:
    """Write the tiny IFNet's weights: small seeded draws (flows of a few pixels), betas at 1."""
    import torch

    from ...models.rife import IFNet, RifeConfig
    from .parts import small_draws

    with torch.device("meta"):
        ref = IFNet(RifeConfig(**TINY_CONFIG))
    return small_draws(ref, seed, lambda name, p: 1.0 if name.endswith(".beta") else None, path)
