"""AMT's bidirectional all-pairs correlation (after RAFT).

Every pixel of frame 0's 1/8 feature map is compared (dot product over sqrt(channels)) with every
pixel of frame 1's, once: the same volume read both ways gives, for a pixel of either frame, its
correlation with the whole other frame. Each way is average-pooled into ``levels`` coarser copies.
A lookup takes, around a position in the other frame, a ``(2r+1)^2`` window of bilinear samples
per level (zero outside). The window's first axis moves along x and its second along y: RAFT's
order, which the released weights were trained with.

Memory: each way holds ``(H/8 * W/8)^2`` values (and a third more for the pooled copies): at
1280x720 that is 0.83 GB per way in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def corr_bytes(height: int, width: int, element: int = 4) -> int:
    """Bytes of both ways' pyramids for one frame pair of ``height x width`` (as given to the net)."""
    n = (height // 8) * (width // 8)
    return 2 * n * n * element * 4 // 3


def _sample(volume: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``(N, 1, H, W)`` at pixel positions ``(N, h, w, 2)``, zero outside."""
    h, w = volume.shape[-2:]
    grid = torch.stack((at[..., 0] * (2.0 / (w - 1)) - 1.0, at[..., 1] * (2.0 / (h - 1)) - 1.0), -1)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class BidirectionalCorrelation:
    def __init__(self, fmap0: torch.Tensor, fmap1: torch.Tensor, levels: int, radius: int):
        b, d, h, w = fmap0.shape
        self.shape, self.radius = (b, h, w), radius
        scale = torch.tensor(float(d), dtype=fmap0.dtype, device=fmap0.device).sqrt()
        corr = torch.matmul(fmap0.flatten(2).transpose(1, 2), fmap1.flatten(2)) / scale   # (b, hw0, hw1)
        ways = [corr.reshape(b * h * w, 1, h, w), corr.transpose(1, 2).reshape(b * h * w, 1, h, w)]
        self.pyramids: list[list[torch.Tensor]] = []
        for volume in ways:
            levels_of = [volume]
            for _ in range(levels - 1):
                levels_of.append(F.avg_pool2d(levels_of[-1], 2, stride=2))
            self.pyramids.append(levels_of)

    def __call__(self, at0: torch.Tensor, at1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows around ``at0`` in frame 1 for frame 0's pixels and around ``at1`` in frame 0
        for frame 1's pixels (``(b, 2, h, w)`` positions, x then y, at 1/8): each
        ``(b, levels * (2r+1)^2, h, w)``."""
        b, h, w = self.shape
        r = self.radius
        line = torch.linspace(-r, r, 2 * r + 1, device=at0.device, dtype=at0.dtype)
        window = torch.stack(torch.meshgrid(line, line, indexing="ij"), -1).view(1, 2 * r + 1, 2 * r + 1, 2)
        out = []
        for pyramid, at in zip(self.pyramids, (at0, at1)):
            centres = at.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
            per_level = [_sample(volume, centres / 2 ** i + window).view(b, h, w, -1)
                         for i, volume in enumerate(pyramid)]
            out.append(torch.cat(per_level, -1).permute(0, 3, 1, 2).contiguous())
        return out[0], out[1]
