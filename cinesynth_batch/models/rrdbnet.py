"""RRDBNet, the ESRGAN / Real-ESRGAN generator, and a tiled image upscaler around it.

Parameter names follow basicsr's ``RRDBNet`` so official Real-ESRGAN checkpoints
(``RealESRGAN_x2plus.pth``, ``RealESRGAN_x4plus.pth``: ``{"params_ema": state_dict}``) load
strictly without any key renaming:

* ``conv_first``: 3x3 conv from the (pixel-unshuffled, for x2/x1) input to ``num_feat``.
* ``body.N.rdb{1,2,3}.conv{1..5}``: ``num_block`` residual-in-residual dense blocks.
* ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``.

The trunk always upsamples x4 (nearest x2, conv, nearest x2, conv); scale 2 and scale 1 are
obtained by pixel-unshuffling the input by 2 or 4 first, so ``conv_first`` takes
``in_ch * 4`` (x2) or ``in_ch * 16`` (x1) channels.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cinesynth_batch.errors import StageError

from ..runtime.dtypes import torch_dtype

__all__ = [
    "ResidualDenseBlock",
    "RRDB",
    "RRDBNet",
    "Upscaler",
    "load_rrdbnet",
    "infer_rrdbnet_config",
]

# Official RealESRGAN_x2plus / x4plus sizes.
OFFICIAL_NUM_FEAT = 64
OFFICIAL_NUM_BLOCK = 23
OFFICIAL_NUM_GROW_CH = 32

_UNSHUFFLE = {4: 1, 2: 2, 1: 4}  # network scale -> pixel-unshuffle factor applied to the input

class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; the output is scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, outer residual scaled by 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator with basicsr's layout. ``scale`` is 1, 2 or 4."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ):
        super().__init__()
        if scale not in _UNSHUFFLE:
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {scale}")
        self.scale = scale
        self.num_in_ch = num_in_ch
        self.num_out_ch = num_out_ch
        self.num_feat = num_feat
        self.num_block = num_block
        self.num_grow_ch = num_grow_ch
        unshuffle = _UNSHUFFLE[scale]
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle * unshuffle, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @property
    def input_multiple(self) -> int:
        """Input height and width must be multiples of this (the pixel-unshuffle factor)."""
        return _UNSHUFFLE[self.scale]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = _UNSHUFFLE[self.scale]
        feat = F.pixel_unshuffle(x, factor) if factor > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


_BODY_KEY = re.compile(r"^body\.(\d+)\.")


def _conv_weight(sd: Mapping[str, Any], key: str) -> torch.Tensor:
    t = sd.get(key)
    if not isinstance(t, torch.Tensor) or t.ndim != 4:
        raise KeyError(key)
    return t


def infer_rrdbnet_config(state_dict: Mapping[str, Any]) -> dict[str, int]:
    """Read ``num_in_ch, num_out_ch, scale, num_feat, num_block, num_grow_ch`` off the tensors.

    Raises ``KeyError``/``ValueError`` when the state dict is not a basicsr RRDBNet.
    """
    first = _conv_weight(state_dict, "conv_first.weight")
    last = _conv_weight(state_dict, "conv_last.weight")
    num_feat = int(first.shape[0])
    num_out_ch = int(last.shape[0])
    in_eff = int(first.shape[1])
    blocks = {int(m.group(1)) for k in state_dict if (m := _BODY_KEY.match(k))}
    num_block = len(blocks)
    if blocks != set(range(num_block)):
        raise ValueError(f"body blocks are not numbered 0..N-1: {sorted(blocks)}")
    if num_block:
        num_grow_ch = int(_conv_weight(state_dict, "body.0.rdb1.conv1.weight").shape[0])
    else:
        num_grow_ch = OFFICIAL_NUM_GROW_CH
    for scale, factor in ((4, 1), (2, 2), (1, 4)):
        if in_eff == num_out_ch * factor * factor:
            return {
                "num_in_ch": num_out_ch,
                "num_out_ch": num_out_ch,
                "scale": scale,
                "num_feat": num_feat,
                "num_block": num_block,
                "num_grow_ch": num_grow_ch,
            }
    raise ValueError(
        f"conv_first takes {in_eff} input channels and conv_last gives {num_out_ch}: expected "
        f"{num_out_ch} (x4), {num_out_ch * 4} (x2) or {num_out_ch * 16} (x1)"
    )


_EXPECTED = (
    "a basicsr RRDBNet state dict (as in Real-ESRGAN's RealESRGAN_x2plus.pth: "
    '{"params_ema": {...}} with keys conv_first.*, body.N.rdbK.convM.*, conv_body.*, '
    "conv_up1.*, conv_up2.*, conv_hr.*, conv_last.*)"
)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        raw: Any = load_file(str(path), device="cpu")
    else:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(raw, Mapping):
        for key in ("params_ema", "params"):
            if key in raw and isinstance(raw[key], Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping):
        raise ValueError(f"the file holds a {type(raw).__name__}, not a state dict")
    sd = {str(k): v for k, v in raw.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"non-tensor entries in the state dict: {bad[:5]}")
    return sd


class Upscaler:
    """A loaded RRDBNet plus tiled inference on ``uint8`` RGB images."""

    def __init__(self, net: RRDBNet, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = "float32", path: Path | None = None):
        self.dtype = torch_dtype(dtype)
        self.device = torch.device(device)
        self.path = path
        net.eval()
        net.requires_grad_(False)
        self.net = net.to(device=self.device, dtype=self.dtype)

    @property
    def scale(self) -> int:
        return self.net.scale

    @property
    def nbytes(self) -> int:
        """Bytes held by the network's parameters and buffers."""
        tensors = list(self.net.parameters()) + list(self.net.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: str | torch.device) -> "Upscaler":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def __repr__(self) -> str:
        n = self.net
        return (f"Upscaler(x{n.scale}, num_feat={n.num_feat}, num_block={n.num_block}, "
                f"num_grow_ch={n.num_grow_ch}, device={self.device}, dtype={self.dtype})")

    def upscale(
        self,
        img: np.ndarray,
        tile: int = 512,
        tile_pad: int = 10,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Upscale an ``(H, W, 3)`` ``uint8`` RGB image to ``(H*scale, W*scale, 3)`` ``uint8``.

        ``tile > 0`` runs the network on ``tile``-sized pieces of the input, each extended by
        ``tile_pad`` pixels of context on every side, and keeps only the centre of each output;
        ``tile = 0`` runs the whole image at once. For x2/x1 models ``tile`` and ``tile_pad``
        are rounded up to the pixel-unshuffle multiple. ``progress(done, total)`` is called
        after each tile.
        """
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
        if tile < 0 or tile_pad < 0:
            raise ValueError(f"tile and tile_pad must be >= 0, got {tile}, {tile_pad}")
        h, w = img.shape[:2]
        scale = self.scale
        mult = self.net.input_multiple

        x = torch.from_numpy(img.astype(np.float32) / np.float32(255.0))
        x = x.permute(2, 0, 1).unsqueeze(0)
        pad_h, pad_w = (-h) % mult, (-w) % mult
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        x = x.to(device=self.device, dtype=self.dtype)

        with torch.inference_mode():
            if tile <= 0:
                out = self.net(x).float().cpu()
                if progress is not None:
                    progress(1, 1)
            else:
                out = self._tiled(x, _round_up(tile, mult), _round_up(tile_pad, mult), progress)
            out = out[0, :, : h * scale, : w * scale].clamp(0.0, 1.0).mul_(255.0).round_()
            out = out.to(torch.uint8).permute(1, 2, 0).contiguous()
        return out.numpy().copy()

    def _tiled(self, x: torch.Tensor, tile: int, pad: int,
               progress: Callable[[int, int], None] | None) -> torch.Tensor:
        height, width = x.shape[-2:]
        s = self.scale
        out = torch.zeros((1, self.net.num_out_ch, height * s, width * s), dtype=torch.float32)
        tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
        total = tiles_x * tiles_y
        done = 0
        for ty in range(tiles_y):
            y0, y1 = ty * tile, min((ty + 1) * tile, height)
            py0, py1 = max(y0 - pad, 0), min(y1 + pad, height)
            for tx in range(tiles_x):
                x0, x1 = tx * tile, min((tx + 1) * tile, width)
                px0, px1 = max(x0 - pad, 0), min(x1 + pad, width)
                piece = self.net(x[:, :, py0:py1, px0:px1]).float().cpu()
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = \
                    piece[:, :, oy:oy + (y1 - y0) * s, ox:ox + (x1 - x0) * s]
                done += 1
                if progress is not None:
                    progress(done, total)
        return out


def _round_up(n: int, mult: int) -> int:
    return -(-int(n) // mult) * mult


def load_rrdbnet(path: str | Path, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = "float32") -> Upscaler:
    """Load a basicsr-layout RRDBNet checkpoint (``.pth`` or ``.safetensors``) as an ``Upscaler``.

    ``.pth`` files are read with ``weights_only=True``. Sizes and scale are inferred from the
    tensors; the load is strict. Any problem raises ``StageError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(
            f"upscale model file not found: {path}",
            hint="point the profile's upscale model at RealESRGAN_x2plus.pth (or a .safetensors "
                 "copy of its params_ema state dict)",
        )
    try:
        sd = _read_state_dict(path)
    except Exception as exc:
        raise StageError(
            f"cannot read upscale model {path}: {type(exc).__name__}: {exc}",
            hint=f"expected {_EXPECTED}; .pth files are loaded with weights_only=True",
        ) from exc
    try:
        cfg = infer_rrdbnet_config(sd)
    except (KeyError, ValueError) as exc:
        missing = f"missing or malformed tensor {exc}" if isinstance(exc, KeyError) else str(exc)
        raise StageError(
            f"{path} is not an RRDBNet (Real-ESRGAN) checkpoint: {missing}",
            hint=f"expected {_EXPECTED}",
        ) from exc
    if cfg["num_out_ch"] != 3:
        raise StageError(
            f"{path} is an RRDBNet with {cfg['num_out_ch']} channels; the upscaler needs RGB (3)",
            hint=f"expected {_EXPECTED}",
        )
    with torch.device("meta"):
        net = RRDBNet(**cfg)
    try:
        net.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        raise StageError(
            f"{path} does not match an RRDBNet x{cfg['scale']} with num_feat={cfg['num_feat']}, "
            f"num_block={cfg['num_block']}, num_grow_ch={cfg['num_grow_ch']}: {exc}",
            hint=f"expected {_EXPECTED}",
        ) from exc
    return Upscaler(net, device=device, dtype=dtype, path=path)
