"""Running AMT on uint8 RGB frames.

As the official inference (``utils.InputPadder``, ``demos/``), frames are padded by repeating
their edges, centred, to a multiple of ``16 / scale``; here also to at least ``128 / scale`` a side,
so that the coarsest correlation level keeps two pixels (smaller frames would divide by zero in
the lookup's normalisation). The output is cropped back, rounded to uint8.

Samples run in batches whose correlation volumes stay under ``CORR_BUDGET`` (a 720p pair needs
about 2.2 GB); the batch size is a function of the frame size only, so a render is repeatable
(other batchings agree up to float32 rounding: one level of uint8 here and there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .corr import corr_bytes
from .network import AMT
from .weights import load_amt_net

CORR_BUDGET = 4 << 30
MAX_BATCH = 8


def padding(size: int, scale: float, levels: int) -> tuple[int, int]:
    """(before, after) for one side of ``size`` pixels."""
    multiple = int(16 / scale)
    target = max(-(-size // multiple) * multiple, int(8 * 2 ** levels / scale))
    extra = target - size
    return extra // 2, extra - extra // 2


class AmtInterpolator:
    """A loaded AMT and how to run it on uint8 RGB frames (the same interface as ``RifeInterpolator``)."""

    def __init__(self, net: AMT, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.net = net.to(device=device, dtype=dtype)
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        """Where the network is now (residency may move it between calls)."""
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> "AmtInterpolator":
        self.net.to(device)
        return self

    def _tensor(self, frames: np.ndarray, pad: tuple[int, int, int, int]) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return F.pad(x.permute(0, 3, 1, 2).to(self.dtype) / 255.0, pad, mode="replicate")

    @torch.no_grad()
    def between(self, frames: np.ndarray, samples: Sequence[tuple[int, float]], scale: float = 1.0,
                batch: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """For each ``(i, t)`` the frame at ``t`` in (0, 1) between ``frames[i]`` and ``frames[i + 1]``."""
        n, h, w, _ = frames.shape
        levels = self.net.config.levels
        (top, bottom), (left, right) = padding(h, scale, levels), padding(w, scale, levels)
        pad = (left, right, top, bottom)
        if batch is None:
            per = corr_bytes(int((h + top + bottom) * scale), int((w + left + right) * scale))
            batch = max(1, min(MAX_BATCH, CORR_BUDGET // per))
        out = np.empty((len(samples), h, w, 3), dtype=np.uint8)
        for start in range(0, len(samples), batch):
            chunk = samples[start:start + batch]
            idx = np.array([i for i, _ in chunk])
            t = torch.tensor([t for _, t in chunk], device=self.device, dtype=self.dtype)
            mid = self.net(self._tensor(frames[idx], pad), self._tensor(frames[idx + 1], pad), t, scale)
            mid = mid[:, :, top:top + h, left:left + w]
            pixels = (mid.float() * 255.0).round().to(torch.uint8)
            out[start:start + len(chunk)] = pixels.permute(0, 2, 3, 1).cpu().numpy()
            if progress is not None:
                progress(start + len(chunk), len(samples))
        return out


def load_amt(path: str | Path, device: str = "cpu", dtype: str = "float32") -> AmtInterpolator:
    """The network runs in float32 whatever the profile's ``dtype``: flows and correlation
    lookups are pixel positions, which bfloat16 would round by several pixels on a 720p frame."""
    del dtype
    return AmtInterpolator(load_amt_net(path), device, torch.float32)
