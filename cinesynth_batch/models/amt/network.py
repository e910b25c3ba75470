"""AMT (Li et al., CVPR 2023: All-Pairs Multi-Field Transforms for Efficient Frame Interpolation).

For a time ``t`` in (0, 1) between two frames, AMT estimates two *bilateral* flows (from the new
frame back to each input) and an intermediate feature, coarse to fine:

1. Both frames, less their common mean, go through a correlation encoder (1/8) and a context
   encoder (a pyramid at 1/2 .. 1/16). The correlation features give an all-pairs correlation
   volume, read both ways (``corr.py``).
2. At 1/16 the first decoder turns both frames' coarsest features and ``t`` into the two flows and
   the intermediate feature at 1/8. Each later decoder warps both frames' features of its level
   with the flows, and doubles the resolution (1/4, 1/2), adding twice the upsampled flows.
3. After each of the first three decoders an update block refines the flows and the feature
   from correlations: the bilateral flow ``F_t->1`` scaled by ``1/t`` (``F_t->0`` by
   ``1/(1-t)``, a linear-motion assumption) points into the other frame, where the window of
   correlations is read, at 1/8 (the flows are brought down to it and the update answers at the
   decoder's size). AMT-G adds a second update per level at the decoder's own resolution, with
   the correlations upsampled to it (``UpdateBlock``: after its first, linear, convolution).
4. The last decoder (full size) makes ``flows`` pairs of flows from the one pair (the
   "multi-field"), each with an occlusion mask and a residual. Each pair warps both input frames;
   the candidates, blended by their masks plus their residuals and the mean, are averaged and
   corrected by two convolutions over all of them. The result is clamped to [0, 1].

``scale`` below 1 runs everything up to the last decoder on frames resized by ``scale`` (for
large frames, as the official ``scale_factor``); flows, masks and residuals are resized back.

The parameter names are the official ones (``feat_encoder.layer1.0.conv1.weight``,
``encoder.pyramid1.0.0.weight``, ``decoder4.convblock.1.conv2.0.weight``, ``update3_high.gru.0.weight``,
``comb_block.0.weight``, ...), so a converted official checkpoint loads as is. ``VARIANTS`` holds
the three released configurations (``networks/AMT-S.py``, ``AMT-L.py``, ``AMT-G.py``, each with
``corr_radius=3, corr_lvls=4`` as in ``cfgs/``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..warp import backward_warp
from .blocks import Decoder, FeatureEncoder, PyramidEncoder, UpdateBlock, resize
from .corr import BidirectionalCorrelation


@dataclass(frozen=True)
class AmtConfig:
    channels: tuple[int, int, int, int]   # context pyramid widths at 1/2, 1/4, 1/8, 1/16
    skip: int                             # side channels of the decoders' residual blocks
    flows: int                            # flow pairs of the last decoder
    wide_stem: bool                       # the pyramid's first convolution is 7x7 (else 3x3)
    feat_widths: tuple[int, ...]          # correlation encoder: stem, then 3 or 4 stages
    feat_dim: int                         # correlation features
    bottleneck: bool                      # the correlation encoder's units are bottlenecks
    hidden: int                           # update block: hidden width
    flow_dim: int                         # update block: flow encoding width
    corr_dim: int                         # update block: first correlation convolution
    corr_dim2: int | None                 # update block: second correlation convolution, if any
    fc_dim: int                           # update block: the joint encoding
    comb_kernel: int                      # kernel of the two combining convolutions
    refine_full: bool                     # a second update per level at the decoder's resolution
    radius: int = 3                       # correlation window radius
    levels: int = 4                       # correlation pyramid levels


VARIANTS: dict[str, AmtConfig] = {
    "amt-s": AmtConfig(channels=(20, 32, 44, 56), skip=20, flows=3, wide_stem=False, feat_widths=(32, 32, 64, 96),
                       feat_dim=84, bottleneck=True, hidden=76, flow_dim=20, corr_dim=64, corr_dim2=None, fc_dim=68,
                       comb_kernel=3, refine_full=False),
    "amt-l": AmtConfig(channels=(48, 64, 72, 128), skip=48, flows=5, wide_stem=True, feat_widths=(64, 64, 72, 128),
                       feat_dim=128, bottleneck=False, hidden=128, flow_dim=48, corr_dim=256, corr_dim2=160,
                       fc_dim=124, comb_kernel=7, refine_full=False),
    "amt-g": AmtConfig(channels=(84, 96, 112, 128), skip=84, flows=5, wide_stem=True,
                       feat_widths=(64, 64, 112, 160, 160), feat_dim=128, bottleneck=False, hidden=192, flow_dim=64,
                       corr_dim=256, corr_dim2=192, fc_dim=188, comb_kernel=7, refine_full=True),
}


def variant_name(config: AmtConfig) -> str:
    """``amt-s``, ``amt-l``, ``amt-g`` for the released configurations, else ``custom``."""
    return next((name for name, c in VARIANTS.items() if c == config), "custom")


class AMT(nn.Module):
    def __init__(self, config: AmtConfig):
        super().__init__()
        self.config = config
        c, n = config.channels, config.flows
        self.feat_encoder = FeatureEncoder(config.feat_widths, config.feat_dim, config.bottleneck)
        self.encoder = PyramidEncoder(c, config.wide_stem)
        self.decoder4 = Decoder(2 * c[3] + 1, 2 * c[3], c[2] + 4, config.skip)
        self.decoder3 = Decoder(3 * c[2] + 4, 3 * c[2], c[1] + 4, config.skip)
        self.decoder2 = Decoder(3 * c[1] + 4, 3 * c[1], c[0] + 4, config.skip)
        self.decoder1 = Decoder(3 * c[0] + 4, 3 * c[0], 8 * n, config.skip)
        planes = 2 * config.levels * (2 * config.radius + 1) ** 2
        low = "_low" if config.refine_full else ""
        self.updates = {4: "update4", 3: f"update3{low}", 2: f"update2{low}"}
        for level, cdim, scale in ((4, c[2], None), (3, c[1], 2.0), (2, c[0], 4.0)):
            self.add_module(self.updates[level], self._update(cdim, planes, scale))
        if config.refine_full:
            self.update3_high = self._update(c[1], planes, None)
            self.update2_high = self._update(c[0], planes, None)
        k = config.comb_kernel
        self.comb_block = nn.Sequential(nn.Conv2d(3 * n, 6 * n, k, 1, k // 2), nn.PReLU(6 * n),
                                        nn.Conv2d(6 * n, 3, k, 1, k // 2))

    def _update(self, cdim: int, planes: int, scale: float | None) -> UpdateBlock:
        c = self.config
        return UpdateBlock(cdim, c.hidden, c.flow_dim, c.corr_dim, c.corr_dim2, c.fc_dim, planes, scale)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The frame at time ``t`` (``(B,)``, strictly between 0 = ``img0`` and 1 = ``img1``)
        between ``(B, 3, H, W)`` frames in [0, 1]; ``H * scale`` and ``W * scale`` must be
        multiples of 16, and at least ``8 * 2**levels`` (128 for the released models) for every
        correlation level to keep two pixels (``runner.py`` pads to both)."""
        b = img0.shape[0]
        mean = torch.cat((img0, img1), 2).mean((1, 2, 3), keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        both = torch.cat((img0, img1), 0)
        if scale != 1.0:
            both = resize(both, scale)
        t = t.to(img0.dtype).view(b, 1, 1, 1)

        fmaps = self.feat_encoder(both)
        corr = BidirectionalCorrelation(fmaps[:b], fmaps[b:], self.config.levels, self.config.radius)
        f0, f1 = zip(*[(f[:b], f[b:]) for f in self.encoder(both)])
        h8, w8 = fmaps.shape[-2:]
        ys = torch.arange(h8, device=img0.device, dtype=img0.dtype).view(1, 1, h8, 1).expand(1, 1, h8, w8)
        xs = torch.arange(w8, device=img0.device, dtype=img0.dtype).view(1, 1, 1, w8).expand(1, 1, h8, w8)
        grid = torch.cat((xs, ys), 1)

        out = self.decoder4(torch.cat((f0[3], f1[3], t.expand(b, 1, *f0[3].shape[-2:])), 1))
        flow0, flow1, feat = out[:, 0:2], out[:, 2:4], out[:, 4:]
        for level, down in ((4, 1), (3, 2), (2, 4)):
            if level < 4:
                flow0, flow1, feat = self._decode(getattr(self, f"decoder{level}"), feat, f0[level - 1],
                                                  f1[level - 1], flow0, flow1)
            # correlations where the flows, stretched to the whole interval, point (at 1/8)
            small0 = flow0 if down == 1 else (1 / down) * resize(flow0, 1 / down)
            small1 = flow1 if down == 1 else (1 / down) * resize(flow1, 1 / down)
            c0, c1 = corr(grid + small1 * (1.0 / t), grid + small0 * (1.0 / (1.0 - t)))
            window = torch.cat((c0, c1), 1)
            d_feat, d_flow = getattr(self, self.updates[level])(feat, torch.cat((small0, small1), 1), window)
            flow0, flow1, feat = flow0 + d_flow[:, 0:2], flow1 + d_flow[:, 2:4], feat + d_feat
            if self.config.refine_full and level < 4:
                d_feat, d_flow = getattr(self, f"update{level}_high")(feat, torch.cat((flow0, flow1), 1), window,
                                                                      float(down))
                flow0, flow1, feat = flow0 + d_flow[:, 0:2], flow1 + d_flow[:, 2:4], feat + d_feat

        n = self.config.flows
        w0, w1 = backward_warp(torch.cat((f0[0], f1[0]), 0), torch.cat((flow0, flow1), 0)).chunk(2)
        out = self.decoder1(torch.cat((feat, w0, w1, flow0, flow1), 1))
        flows0, flows1, mask, residual = torch.split(out, [2 * n, 2 * n, n, 3 * n], 1)
        flows0 = flows0 + 2.0 * resize(flow0, 2.0).repeat(1, n, 1, 1)
        flows1 = flows1 + 2.0 * resize(flow1, 2.0).repeat(1, n, 1, 1)
        mask = torch.sigmoid(mask)
        if scale != 1.0:
            flows0, flows1 = resize(flows0, 1 / scale) * (1 / scale), resize(flows1, 1 / scale) * (1 / scale)
            mask, residual = resize(mask, 1 / scale), resize(residual, 1 / scale)
        return self._combine(img0, img1, flows0, flows1, mask, residual, mean).clamp(0, 1)

    @staticmethod
    def _decode(decoder: Decoder, feat, f0, f1, flow0, flow1):
        """A middle level: both frames' features warped by the flows, the resolution doubled."""
        w0, w1 = backward_warp(torch.cat((f0, f1), 0), torch.cat((flow0, flow1), 0)).chunk(2)
        out = decoder(torch.cat((feat, w0, w1, flow0, flow1), 1))
        return (out[:, 0:2] + 2.0 * resize(flow0, 2.0), out[:, 2:4] + 2.0 * resize(flow1, 2.0), out[:, 4:])

    def _combine(self, img0, img1, flows0, flows1, mask, residual, mean) -> torch.Tensor:
        """Each flow pair's candidate (both frames warped, blended by its mask, plus its residual
        and the mean), averaged, plus the combining convolutions' correction."""
        b, _, h, w = flows0.shape
        n = self.config.flows
        frames = torch.cat((img0.repeat_interleave(n, 0), img1.repeat_interleave(n, 0)), 0)
        warped = backward_warp(frames, torch.cat((flows0.reshape(b * n, 2, h, w), flows1.reshape(b * n, 2, h, w)), 0))
        w0, w1 = warped.chunk(2)
        m = mask.reshape(b * n, 1, h, w)
        candidates = (m * w0 + (1 - m) * w1 + mean.repeat_interleave(n, 0)
                      + residual.reshape(b * n, 3, h, w)).reshape(b, n, 3, h, w)
        return candidates.mean(1) + self.comb_block(candidates.reshape(b, 3 * n, h, w))
