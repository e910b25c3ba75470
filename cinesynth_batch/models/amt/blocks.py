"""The convolutional parts of AMT, under the official parameter names.

* ``FeatureEncoder``: the correlation encoder (RAFT-style, instance-normalised): a 7x7 stride-2
  stem and stages of two residual units (plain 3x3 pairs, or 1x1-3x3-1x1 bottlenecks for AMT-S),
  strides 1, 2, 2 (and 1 for AMT-G's fifth stage), then a 1x1 projection. Output at 1/8.
* ``PyramidEncoder``: the context encoder: four stride-2 levels (1/2 .. 1/16) of two
  convolution + PReLU pairs each.
* ``Decoder``: one level of the coarse-to-fine decoder: convolution + PReLU, a residual block
  whose last ``side`` channels get their own convolutions, and a transposed convolution that
  doubles the size. What it is given and how its output is read is the network's business
  (``network.py``): the first level sees both frames' features and the time; the later ones the
  intermediate feature, both frames' features warped to it and the two flows.
* ``UpdateBlock``: refines the two flows and the intermediate feature from the correlations the
  flows point at; with ``scale`` it works at ``1/scale`` of its input and answers at full size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def conv_prelu(cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad), nn.PReLU(cout))


# --- correlation encoder ---------------------------------------------------------------------------

class _Unit(nn.Module):
    """Two (plain) or three (bottleneck) instance-normalised convolutions and a skip; a strided
    unit takes its skip through a strided 1x1 convolution."""

    def __init__(self, cin: int, c: int, stride: int, bottleneck: bool):
        super().__init__()
        if bottleneck:
            q = c // 4
            self.conv1 = nn.Conv2d(cin, q, 1, 1, 0)
            self.conv2 = nn.Conv2d(q, q, 3, stride, 1)
            self.conv3 = nn.Conv2d(q, c, 1, 1, 0)
            self.convs = ("conv1", "conv2", "conv3")
        else:
            self.conv1 = nn.Conv2d(cin, c, 3, stride, 1)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
            self.convs = ("conv1", "conv2")
        self.downsample = (nn.Sequential(nn.Conv2d(cin, c, 1, stride), nn.InstanceNorm2d(c))
                           if stride != 1 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for name in self.convs:
            y = F.relu(F.instance_norm(getattr(self, name)(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


#: The stages of the correlation encoder by position, and their strides.
FEATURE_STAGES = (("layer1", 1), ("layer2", 2), ("layer3", 2), ("layer3_2", 1))


class FeatureEncoder(nn.Module):
    def __init__(self, widths: Sequence[int], out_dim: int, bottleneck: bool):
        super().__init__()
        stem, stages = widths[0], widths[1:]
        if not 3 <= len(stages) <= len(FEATURE_STAGES):
            raise ValueError(f"the correlation encoder has 3 or 4 stages, not {len(stages)}")
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3)
        self.stages = []
        cin = stem
        for (name, stride), c in zip(FEATURE_STAGES, stages):
            self.add_module(name, nn.Sequential(_Unit(cin, c, stride, bottleneck), _Unit(c, c, 1, bottleneck)))
            self.stages.append(name)
            cin = c
        self.conv2 = nn.Conv2d(cin, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.instance_norm(self.conv1(x)))
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.conv2(x)


# --- context encoder and decoders --------------------------------------------------------------------

class PyramidEncoder(nn.Module):
    def __init__(self, channels: Sequence[int], wide_stem: bool):
        super().__init__()
        self.levels = len(channels)
        cin = 3
        for i, c in enumerate(channels, 1):
            k = 7 if wide_stem and i == 1 else 3
            self.add_module(f"pyramid{i}", nn.Sequential(conv_prelu(cin, c, k, 2, k // 2), conv_prelu(c, c)))
            cin = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i in range(1, self.levels + 1):
            x = getattr(self, f"pyramid{i}")(x)
            out.append(x)
        return out


class SideResBlock(nn.Module):
    """A residual block of five 3x3 convolutions; after the first and the third, the last
    ``side`` channels go through a convolution of their own before the next one sees them."""

    def __init__(self, c: int, side: int):
        super().__init__()
        self.side = side
        self.conv1 = conv_prelu(c, c)
        self.conv2 = conv_prelu(side, side)
        self.conv3 = conv_prelu(c, c)
        self.conv4 = conv_prelu(side, side)
        self.conv5 = nn.Conv2d(c, c, 3, 1, 1)
        self.prelu = nn.PReLU(c)

    def _side(self, x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        return torch.cat((x[:, :-self.side], conv(x[:, -self.side:])), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._side(self.conv1(x), self.conv2)
        out = self.conv5(self._side(self.conv3(out), self.conv4))
        return self.prelu(x + out)


class Decoder(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, side: int):
        super().__init__()
        self.convblock = nn.Sequential(conv_prelu(cin, mid), SideResBlock(mid, side),
                                       nn.ConvTranspose2d(mid, cout, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convblock(x)


# --- update ------------------------------------------------------------------------------------------

def _head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(hidden, cout, 3, 1, 1))


class UpdateBlock(nn.Module):
    """``(feature, flows, correlations) -> (feature delta, flows delta)``. The correlations go
    through one 1x1 convolution (two convolutions when ``corr_dim2`` is set: AMT-L and -G), the
    flows through a 7x7 and a 3x3; their product meets the flows and the feature again."""

    def __init__(self, cdim: int, hidden: int, flow_dim: int, corr_dim: int, corr_dim2: int | None,
                 fc_dim: int, corr_planes: int, scale: float | None):
        super().__init__()
        self.scale = scale
        self.convc1 = nn.Conv2d(corr_planes, corr_dim, 1, 1, 0)
        if corr_dim2 is not None:
            self.convc2 = nn.Conv2d(corr_dim, corr_dim2, 3, 1, 1)
        self.convf1 = nn.Conv2d(4, 2 * flow_dim, 7, 1, 3)
        self.convf2 = nn.Conv2d(2 * flow_dim, flow_dim, 3, 1, 1)
        self.conv = nn.Conv2d((corr_dim2 or corr_dim) + flow_dim, fc_dim, 3, 1, 1)
        self.gru = _head(fc_dim + 4 + cdim, hidden, hidden)
        self.feat_head = _head(hidden, hidden, cdim)
        self.flow_head = _head(hidden, hidden, 4)

    def forward(self, feat: torch.Tensor, flow: torch.Tensor, corr: torch.Tensor, corr_scale: float = 1.0):
        """``corr_scale``: ``corr`` is at ``1/corr_scale`` of the flows and is brought up to them.
        It is resized after the 1x1 convolution, not before as the official AMT-G does: the two
        are linear and bilinear weights sum to one, so the result is the same, for fewer
        channels on a quarter or a sixteenth of the pixels."""
        if self.scale is not None:
            feat = resize(feat, 1 / self.scale)
        c = self.convc1(corr)
        if corr_scale != 1.0:
            c = resize(c, corr_scale)
        c = F.leaky_relu(c, 0.1)
        if hasattr(self, "convc2"):
            c = F.leaky_relu(self.convc2(c), 0.1)
        f = F.leaky_relu(self.convf2(F.leaky_relu(self.convf1(flow), 0.1)), 0.1)
        x = F.leaky_relu(self.conv(torch.cat((c, f), 1)), 0.1)
        out = self.gru(torch.cat((x, flow, feat), 1))
        d_feat, d_flow = self.feat_head(out), self.flow_head(out)
        if self.scale is not None:
            d_feat = resize(d_feat, self.scale)
            d_flow = self.scale * resize(d_flow, self.scale)
        return d_feat, d_flow
