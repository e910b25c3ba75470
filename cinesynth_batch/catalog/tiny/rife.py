"""A tiny random RIFE IFNet (``models/rife.py``) as safetensors with the official key names."""

from __future__ import annotations

import math
from pathlib import Path

TINY_RIFE = "rife-v4.25.safetensors"
TINY_CONFIG = {"head": 4, "blocks": (8, 8, 8, 8, 8), "res_convs": 2}


def build_tiny_rife(path: str | Path, *, seed: int = 6101) -> Path:
    """Write the tiny IFNet's weights: small seeded draws (flows of a few pixels), betas at 1."""
    import torch
    from safetensors.torch import save_file

    from ...models.rife import IFNet, RifeConfig

    with torch.device("meta"):
        ref = IFNet(RifeConfig(**TINY_CONFIG))
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, p in sorted(ref.state_dict().items()):
        if name.endswith(".beta"):
            t = torch.ones(tuple(p.shape))
        elif p.dim() == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            t = torch.randn(tuple(p.shape), generator=gen) * (0.5 / math.sqrt(fan_in))
        else:
            t = torch.randn(tuple(p.shape), generator=gen) * 0.01
        sd[name] = t.to(torch.float32).contiguous()
    path = Path(path)
    save_file(sd, str(path), metadata={"format": "pt"})
    return path
