"""A tiny random RRDBNet (Real-ESRGAN's network) in the official checkpoint layout."""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path

import torch

from ...models.rrdbnet import RRDBNet


def _tiny_state_dict(seed: int, num_feat: int, num_block: int, num_grow_ch: int,
                     scale: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        ref = RRDBNet(3, 3, scale=scale, num_feat=num_feat, num_block=num_block,
                      num_grow_ch=num_grow_ch)
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, p in ref.state_dict().items():
        if name.endswith(".weight"):
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            t = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32) / math.sqrt(fan_in)
        else:
            t = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32) * 0.01
        sd[name] = t.contiguous()
    sd["conv_last.bias"] = sd["conv_last.bias"] + 0.5
    return sd


def build_tiny_rrdbnet(path: str | Path, *, seed: int = 0, num_feat: int = 8, num_block: int = 1,
                       num_grow_ch: int = 4, scale: int = 2) -> Path:
    """Write a small random RRDBNet in the official ``{"params_ema": state_dict}`` layout.

    The same arguments give the same bytes: the checkpoint is serialized to memory (so the
    archive's internal name does not depend on the file name) and then written atomically.
    """
    path = Path(path)
    sd = _tiny_state_dict(seed, num_feat, num_block, num_grow_ch, scale)
    buf = io.BytesIO()
    torch.save({"params_ema": sd}, buf)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
