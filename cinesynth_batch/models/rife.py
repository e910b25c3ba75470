"""RIFE frame interpolation: the IFNet of Practical-RIFE 4.22-4.25 (``train_log/IFNet_HDv3.py``).

Five coarse-to-fine flow blocks estimate, for a time ``t`` between two frames, the flow from the
new frame back to each of them, a blend mask and 8 feature channels; each block refines the
last one's flow at a finer scale (1/16 .. 1/1 of the frame by default). A small shared encoder
(``encode``) gives both frames 16 feature channels that are warped with the flow. The result
is the two warped frames blended by the sigmoid of the mask.

Our module keeps the official parameter names (``block0.conv0.0.0.weight``,
``block1.convblock.3.beta``, ``encode.cnn3.weight``, ...), so a converted official checkpoint
loads as is; the widths (head channels, per-block channels, residual convolutions per block)
are read off the tensors, so one loader serves the production model and the tiny one.

Weights are read from safetensors only. ``convert_checkpoint`` turns the official
``flownet.pkl`` into one (``torch.load(weights_only=True)``: tensors only, no code), dropping
the ``module.`` prefix of checkpoints saved from ``DistributedDataParallel``:

    python -m cinesynth_batch.models.rife flownet.pkl weights/rife-v4.25.safetensors

``RifeInterpolator`` runs the network on uint8 RGB frames: it pads them (zeros, right and
bottom) to a multiple of ``max(128, 128 / scale)`` as the official inference script does,
batches the (frame pair, time) samples, and returns uint8 frames.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StageError
from .warp import backward_warp

#: The official 4.25 widths: 16 encoder channels, blocks of 192, 128, 96, 64, 32, 8 residual convs.
OFFICIAL = {"head": 16, "blocks": (192, 128, 96, 64, 32), "res_convs": 8}
FLOW, MASK, FEAT = 4, 1, 8          # what a block predicts per pixel (13 = 4 * 13 / PixelShuffle(2)**2)
SCALES = (16.0, 8.0, 4.0, 2.0, 1.0)


@dataclass(frozen=True)
class RifeConfig:
    head: int = 16
    blocks: tuple[int, ...] = (192, 128, 96, 64, 32)
    res_convs: int = 8


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class _Encoder(nn.Module):
    """Per-frame features at full resolution: stride-2 conv, two convs, transposed conv back."""

    def __init__(self, width: int):
        super().__init__()
        self.cnn0 = nn.Conv2d(3, width, 3, 2, 1)
        self.cnn1 = nn.Conv2d(width, width, 3, 1, 1)
        self.cnn2 = nn.Conv2d(width, width, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(width, width, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.cnn0(x), 0.2)
        x = F.leaky_relu(self.cnn1(x), 0.2)
        x = F.leaky_relu(self.cnn2(x), 0.2)
        return self.cnn3(x)


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(torch.addcmul(x, self.conv(x), self.beta), 0.2)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), _act())


class _FlowBlock(nn.Module):
    """One refinement level: works at 1/(4*scale) of the frame, answers at full size."""

    def __init__(self, cin: int, c: int, res_convs: int):
        super().__init__()
        self.conv0 = nn.Sequential(_down(cin, c // 2), _down(c // 2, c))
        self.convblock = nn.Sequential(*[_Residual(c) for _ in range(res_convs)])
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(c, 4 * (FLOW + MASK + FEAT), 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: float):
        if scale != 1:
            x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            if scale != 1:
                flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
            x = torch.cat((x, flow), 1)
        out = self.lastconv(self.convblock(self.conv0(x)))
        if scale != 1:
            out = F.interpolate(out, scale_factor=scale, mode="bilinear", align_corners=False)
        return out[:, :FLOW] * scale, out[:, FLOW:FLOW + MASK], out[:, FLOW + MASK:]


class IFNet(nn.Module):
    def __init__(self, config: RifeConfig = RifeConfig()):
        super().__init__()
        self.config = config
        head = config.head
        first_in = 6 + 2 * head + 1                              # both frames, both features, time
        later_in = 6 + 2 * head + 1 + MASK + FEAT + FLOW         # warped ones, mask, feat, flow
        for i, c in enumerate(config.blocks):
            self.add_module(f"block{i}", _FlowBlock(first_in if i == 0 else later_in, c, config.res_convs))
        self.encode = _Encoder(head)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: torch.Tensor,
                scales: Sequence[float] = SCALES) -> torch.Tensor:
        """The frame at time ``t`` (``(B,)``, 0 = ``img0``, 1 = ``img1``) between ``(B, 3, H, W)``
        frames in [0, 1]; H and W must be multiples of ``64 * max(scales) / 16``."""
        blocks = [getattr(self, f"block{i}") for i in range(len(self.config.blocks))]
        if len(scales) != len(blocks):
            raise ValueError(f"{len(blocks)} blocks need {len(blocks)} scales, got {list(scales)}")
        b, _, h, w = img0.shape
        time = t.to(img0.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
        feats = self.encode(torch.cat((img0, img1), 0))
        f0, f1 = feats[:b], feats[b:]
        flow = mask = feat = None
        warped0, warped1 = img0, img1
        for block, scale in zip(blocks, scales):
            if flow is None:
                flow, mask, feat = block(torch.cat((img0, img1, f0, f1, time), 1), None, scale)
            else:
                w_feats = backward_warp(torch.cat((f0, f1), 0), torch.cat((flow[:, :2], flow[:, 2:]), 0))
                x = torch.cat((warped0, warped1, w_feats[:b], w_feats[b:], time, mask, feat), 1)
                delta, mask, feat = block(x, flow, scale)
                flow = flow + delta
            both = backward_warp(torch.cat((img0, img1), 0), torch.cat((flow[:, :2], flow[:, 2:]), 0))
            warped0, warped1 = both[:b], both[b:]
        alpha = torch.sigmoid(mask)
        return warped0 * alpha + warped1 * (1 - alpha)


# --- weights -----------------------------------------------------------------------------------

_BLOCK = re.compile(r"^block(\d+)\.")
_RES = re.compile(r"^block0\.convblock\.(\d+)\.conv\.weight$")


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> RifeConfig:
    """The widths a state dict was trained with (official key names)."""
    try:
        head = int(sd["encode.cnn0.weight"].shape[0])
        n = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
        blocks = tuple(int(sd[f"block{i}.conv0.1.0.weight"].shape[0]) for i in range(n))
        res = 1 + max(int(m.group(1)) for k in sd if (m := _RES.match(k)))
    except (KeyError, ValueError) as exc:
        raise StageError(f"not a RIFE IFNet checkpoint: {type(exc).__name__}: {exc}",
                         hint="convert the official flownet.pkl with `python -m cinesynth_batch.models.rife`") from None
    return RifeConfig(head=head, blocks=blocks, res_convs=res)


def load_ifnet(path: str | Path) -> IFNet:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise StageError(f"RIFE weights must be a .safetensors file, not {path.name}",
                         hint="convert the official flownet.pkl with "
                              "`python -m cinesynth_batch.models.rife flownet.pkl out.safetensors`")
    try:
        sd = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise StageError(f"cannot read RIFE weights {path}: {exc}") from exc
    net = IFNet(config_from_state_dict(sd))
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise StageError(f"RIFE weights {path} do not fit the IFNet: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    return net.eval()


def convert_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """The official ``flownet.pkl`` (a plain state dict) as safetensors, ``module.`` dropped."""
    from safetensors.torch import save_file

    sd = torch.load(str(src), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise StageError(f"{src} does not hold a state dict")
    out = {k.removeprefix("module."): v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    config_from_state_dict(out)
    dst = Path(dst)
    save_file(out, str(dst), metadata={"format": "pt"})
    return dst


# --- running on frames -------------------------------------------------------------------------

class RifeInterpolator:
    """A loaded IFNet and how to run it on uint8 RGB frames."""

    def __init__(self, net: IFNet, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.net = net.to(device=device, dtype=dtype)
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        """Where the network is now (residency may move it between calls)."""
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> "RifeInterpolator":
        self.net.to(device)
        return self

    def _tensor(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return x.permute(0, 3, 1, 2).to(self.dtype) / 255.0

    @torch.no_grad()
    def between(self, frames: np.ndarray, samples: Sequence[tuple[int, float]], scale: float = 1.0,
                batch: int = 8, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """For each ``(i, t)`` the frame at ``t`` in (0, 1) between ``frames[i]`` and ``frames[i + 1]``."""
        n, h, w, _ = frames.shape
        multiple = max(128, int(128 / scale))
        ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        scales = [s / scale for s in SCALES[-len(self.net.config.blocks):]]
        out = np.empty((len(samples), h, w, 3), dtype=np.uint8)
        for start in range(0, len(samples), batch):
            chunk = samples[start:start + batch]
            idx = np.array([i for i, _ in chunk])
            img0 = F.pad(self._tensor(frames[idx]), (0, pw - w, 0, ph - h))
            img1 = F.pad(self._tensor(frames[idx + 1]), (0, pw - w, 0, ph - h))
            t = torch.tensor([t for _, t in chunk], device=self.device)
            mid = self.net(img0, img1, t, scales)[:, :, :h, :w]
            pixels = (mid.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
            out[start:start + len(chunk)] = pixels.permute(0, 2, 3, 1).cpu().numpy()
            if progress is not None:
                progress(start + len(chunk), len(samples))
        return out


def load_rife(path: str | Path, device: str = "cpu", dtype: str = "float32") -> RifeInterpolator:
    """The network runs in float32 whatever the profile's ``dtype``: the warp's sampling grid
    holds pixel positions, which bfloat16 would round by several pixels on a 720p frame."""
    del dtype
    return RifeInterpolator(load_ifnet(path), device, torch.float32)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m cinesynth_batch.models.rife FLOWNET.pkl OUT.safetensors", file=sys.stderr)
        return 2
    out = convert_checkpoint(argv[0], argv[1])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
