"""Our AMT (``models/amt/``) against the official forward, on the same random weights.

The reference below re-states, module for module and op for op, the inference path of
MCG-NKU/AMT at commit 70f988f: ``networks/AMT-S.py``, ``AMT-L.py``, ``AMT-G.py`` (``Model.forward``
with ``eval=True``), ``networks/blocks/raft.py`` (``BidirCorrBlock``, ``bilinear_sampler``,
``coords_grid``, ``SmallUpdateBlock``, ``BasicUpdateBlock``), ``networks/blocks/feat_enc.py``
(``SmallEncoder``, ``BasicEncoder``, ``LargeEncoder`` with instance norm), ``networks/blocks/ifrnet.py``
(``Encoder``, ``ResBlock``, ``InitDecoder``, ``IntermediateDecoder``), ``networks/blocks/multi_flow.py``
and ``utils/flow_utils.warp``. It is written here because the official modules cannot be imported
offline (they import ``utils.flow_utils``, which needs the repository on ``sys.path``, and
``networks/AMT-S.py`` is not an importable module name). It keeps their structure: the three
models' forwards level by level as written, both frames encoded separately, the correlation
volume built as a 6-D tensor and transposed, the per-level lookups with the meshgrid window, the
linspace warp grid. Where float64 cannot follow it: the official lookup returns ``.float()``
(float32), which the next float64 convolution would refuse; the reference casts to the default
dtype instead (float32 in the official runs). The correlation's ``sqrt(dim)`` stays the float32
scalar of the original: at the official widths (84 and 128 channels, whose roots float32 rounds)
that bounds the agreement near 1e-7; with a float64 root it is 1e-14, and at the tiny widths
(16 channels, root 4) it is 1e-15.

Ours differs in how it computes the same thing: both frames batched through each encoder and
every warp, the correlation read both ways from one matrix product, the three variants one module
whose configuration is read off the weights, and time a per-sample tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cinesynth_batch.catalog.tiny.amt import TINY_CONFIG, build_tiny_amt
from cinesynth_batch.errors import StageError
from cinesynth_batch.models.amt.network import AMT, VARIANTS, AmtConfig
from cinesynth_batch.models.amt.runner import AmtInterpolator, load_amt, padding
from cinesynth_batch.models.amt.weights import config_from_state_dict, convert_checkpoint, load_amt_net


# --- the official inference path, re-stated ------------------------------------------------------

def _resize(x, scale_factor):
    return F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=False)


def _warp(img, flow):
    B, _, H, W = flow.shape
    xx = torch.linspace(-1.0, 1.0, W).view(1, 1, 1, W).expand(B, -1, H, -1)
    yy = torch.linspace(-1.0, 1.0, H).view(1, 1, H, 1).expand(B, -1, -1, W)
    grid = torch.cat([xx, yy], 1).to(img)
    flow_ = torch.cat([flow[:, 0:1] / ((W - 1.0) / 2.0), flow[:, 1:2] / ((H - 1.0) / 2.0)], 1)
    return F.grid_sample(img, (grid + flow_).permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def _bilinear_sampler(img, coords):
    H, W = img.shape[-2:]
    xgrid, ygrid = coords.split([1, 1], dim=-1)
    xgrid = 2 * xgrid / (W - 1) - 1
    ygrid = 2 * ygrid / (H - 1) - 1
    return F.grid_sample(img, torch.cat([xgrid, ygrid], dim=-1), align_corners=True)


def _coords_grid(batch, ht, wd, device):
    coords = torch.meshgrid(torch.arange(ht, device=device), torch.arange(wd, device=device), indexing="ij")
    coords = torch.stack(coords[::-1], dim=0).float()
    return coords[None].repeat(batch, 1, 1, 1)


class _RefBidirCorrBlock:
    def __init__(self, fmap1, fmap2, num_levels=4, radius=4):
        self.num_levels, self.radius = num_levels, radius
        self.corr_pyramid, self.corr_pyramid_T = [], []
        corr = _RefBidirCorrBlock.corr(fmap1, fmap2)
        batch, h1, w1, dim, h2, w2 = corr.shape
        corr_T = corr.clone().permute(0, 4, 5, 3, 1, 2)
        corr = corr.reshape(batch * h1 * w1, dim, h2, w2)
        corr_T = corr_T.reshape(batch * h2 * w2, dim, h1, w1)
        self.corr_pyramid.append(corr)
        self.corr_pyramid_T.append(corr_T)
        for _ in range(self.num_levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            corr_T = F.avg_pool2d(corr_T, 2, stride=2)
            self.corr_pyramid.append(corr)
            self.corr_pyramid_T.append(corr_T)

    def __call__(self, coords0, coords1):
        r = self.radius
        coords0 = coords0.permute(0, 2, 3, 1)
        coords1 = coords1.permute(0, 2, 3, 1)
        batch, h1, w1, _ = coords0.shape
        out_pyramid, out_pyramid_T = [], []
        for i in range(self.num_levels):
            dx = torch.linspace(-r, r, 2 * r + 1, device=coords0.device)
            dy = torch.linspace(-r, r, 2 * r + 1, device=coords0.device)
            delta_lvl = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), axis=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
            coords_lvl_0 = coords0.reshape(batch * h1 * w1, 1, 1, 2) / 2 ** i + delta_lvl
            coords_lvl_1 = coords1.reshape(batch * h1 * w1, 1, 1, 2) / 2 ** i + delta_lvl
            out_pyramid.append(_bilinear_sampler(self.corr_pyramid[i], coords_lvl_0).view(batch, h1, w1, -1))
            out_pyramid_T.append(_bilinear_sampler(self.corr_pyramid_T[i], coords_lvl_1).view(batch, h1, w1, -1))
        out = torch.cat(out_pyramid, dim=-1)
        out_T = torch.cat(out_pyramid_T, dim=-1)
        dt = torch.get_default_dtype()          # the official `.float()`, see the module docstring
        return out.permute(0, 3, 1, 2).contiguous().to(dt), out_T.permute(0, 3, 1, 2).contiguous().to(dt)

    @staticmethod
    def corr(fmap1, fmap2):
        batch, dim, ht, wd = fmap1.shape
        corr = torch.matmul(fmap1.view(batch, dim, ht * wd).transpose(1, 2), fmap2.view(batch, dim, ht * wd))
        return corr.view(batch, ht, wd, 1, ht, wd) / torch.sqrt(torch.tensor(dim).float())


class _RefUpdateBlock(nn.Module):
    """``SmallUpdateBlock`` (``corr_dim2=None``) and ``BasicUpdateBlock``."""

    def __init__(self, cdim, hidden_dim, flow_dim, corr_dim, fc_dim, corr_dim2=None, corr_levels=4, radius=3,
                 scale_factor=None):
        super().__init__()
        cor_planes = corr_levels * (2 * radius + 1) ** 2
        self.scale_factor = scale_factor
        self.convc1 = nn.Conv2d(2 * cor_planes, corr_dim, 1, padding=0)
        if corr_dim2 is not None:
            self.convc2 = nn.Conv2d(corr_dim, corr_dim2, 3, padding=1)
        self.convf1 = nn.Conv2d(4, flow_dim * 2, 7, padding=3)
        self.convf2 = nn.Conv2d(flow_dim * 2, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d((corr_dim2 or corr_dim) + flow_dim, fc_dim, 3, padding=1)
        self.gru = nn.Sequential(nn.Conv2d(fc_dim + 4 + cdim, hidden_dim, 3, padding=1),
                                 nn.LeakyReLU(negative_slope=0.1, inplace=True),
                                 nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1))
        self.feat_head = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1),
                                       nn.LeakyReLU(negative_slope=0.1, inplace=True),
                                       nn.Conv2d(hidden_dim, cdim, 3, padding=1))
        self.flow_head = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1),
                                       nn.LeakyReLU(negative_slope=0.1, inplace=True),
                                       nn.Conv2d(hidden_dim, 4, 3, padding=1))
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)

    def forward(self, net, flow, corr):
        net = _resize(net, 1 / self.scale_factor) if self.scale_factor is not None else net
        cor = self.lrelu(self.convc1(corr))
        if hasattr(self, "convc2"):
            cor = self.lrelu(self.convc2(cor))
        flo = self.lrelu(self.convf1(flow))
        flo = self.lrelu(self.convf2(flo))
        inp = self.lrelu(self.conv(torch.cat([cor, flo], dim=1)))
        out = self.gru(torch.cat([inp, flow, net], dim=1))
        delta_net = self.feat_head(out)
        delta_flow = self.flow_head(out)
        if self.scale_factor is not None:
            delta_net = _resize(delta_net, scale_factor=self.scale_factor)
            delta_flow = self.scale_factor * _resize(delta_flow, scale_factor=self.scale_factor)
        return delta_net, delta_flow


class _RefUnit(nn.Module):
    """``BottleneckBlock`` / ``ResidualBlock`` with ``norm_fn='instance'``."""

    def __init__(self, in_planes, planes, bottleneck, stride=1):
        super().__init__()
        self.bottleneck = bottleneck
        if bottleneck:
            self.conv1 = nn.Conv2d(in_planes, planes // 4, kernel_size=1, padding=0)
            self.conv2 = nn.Conv2d(planes // 4, planes // 4, kernel_size=3, padding=1, stride=stride)
            self.conv3 = nn.Conv2d(planes // 4, planes, kernel_size=1, padding=0)
            self.norm1, self.norm2 = nn.InstanceNorm2d(planes // 4), nn.InstanceNorm2d(planes // 4)
            self.norm3 = nn.InstanceNorm2d(planes)
        else:
            self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
            self.norm1, self.norm2 = nn.InstanceNorm2d(planes), nn.InstanceNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 else nn.Sequential(
            nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), nn.InstanceNorm2d(planes))

    def forward(self, x):
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.bottleneck:
            y = self.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class _RefFeatEncoder(nn.Module):
    """``SmallEncoder`` (32/32/64/96, bottlenecks), ``BasicEncoder`` (64/64/72/128) and
    ``LargeEncoder`` (64/64/112/160 + ``layer3_2`` of 160)."""

    def __init__(self, output_dim, widths, bottleneck):
        super().__init__()
        self.norm1 = nn.InstanceNorm2d(widths[0])
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.in_planes = widths[0]
        self.layer1 = self._make_layer(widths[1], bottleneck, stride=1)
        self.layer2 = self._make_layer(widths[2], bottleneck, stride=2)
        self.layer3 = self._make_layer(widths[3], bottleneck, stride=2)
        self.large = len(widths) == 5
        if self.large:
            self.layer3_2 = self._make_layer(widths[4], bottleneck, stride=1)
        self.conv2 = nn.Conv2d(self.in_planes, output_dim, kernel_size=1)

    def _make_layer(self, dim, bottleneck, stride=1):
        layers = (_RefUnit(self.in_planes, dim, bottleneck, stride=stride), _RefUnit(dim, dim, bottleneck, stride=1))
        self.in_planes = dim
        return nn.Sequential(*layers)

    def forward(self, x):
        batch_dim = x[0].shape[0]
        x = torch.cat(x, dim=0)
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.large:
            x = self.layer3_2(x)
        x = self.conv2(x)
        return torch.split(x, [batch_dim, batch_dim], dim=0)


def _convrelu(in_channels, out_channels, kernel_size=3, stride=1, padding=1):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, 1, 1, bias=True),
                         nn.PReLU(out_channels))


class _RefResBlock(nn.Module):
    def __init__(self, in_channels, side_channels):
        super().__init__()
        self.side_channels = side_channels
        self.conv1 = _convrelu(in_channels, in_channels)
        self.conv2 = _convrelu(side_channels, side_channels)
        self.conv3 = _convrelu(in_channels, in_channels)
        self.conv4 = _convrelu(side_channels, side_channels)
        self.conv5 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1, bias=True)
        self.prelu = nn.PReLU(in_channels)

    def forward(self, x):
        out = self.conv1(x)
        res_feat, side_feat = out[:, :-self.side_channels], out[:, -self.side_channels:]
        out = self.conv3(torch.cat([res_feat, self.conv2(side_feat)], 1))
        res_feat, side_feat = out[:, :-self.side_channels], out[:, -self.side_channels:]
        out = self.conv5(torch.cat([res_feat, self.conv4(side_feat)], 1))
        return self.prelu(x + out)


class _RefEncoder(nn.Module):
    def __init__(self, channels, large=False):
        super().__init__()
        self.channels = channels
        prev_ch = 3
        for idx, ch in enumerate(channels, 1):
            k = 7 if large and idx == 1 else 3
            p = 3 if k == 7 else 1
            self.register_module(f"pyramid{idx}",
                                 nn.Sequential(_convrelu(prev_ch, ch, k, 2, p), _convrelu(ch, ch, 3, 1, 1)))
            prev_ch = ch

    def forward(self, in_x):
        fs = []
        for idx in range(len(self.channels)):
            in_x = getattr(self, f"pyramid{idx + 1}")(in_x)
            fs.append(in_x)
        return fs


class _RefInitDecoder(nn.Module):
    def __init__(self, in_ch, out_ch, skip_ch):
        super().__init__()
        self.convblock = nn.Sequential(_convrelu(in_ch * 2 + 1, in_ch * 2), _RefResBlock(in_ch * 2, skip_ch),
                                       nn.ConvTranspose2d(in_ch * 2, out_ch + 4, 4, 2, 1, bias=True))

    def forward(self, f0, f1, embt):
        h, w = f0.shape[2:]
        out = self.convblock(torch.cat([f0, f1, embt.repeat(1, 1, h, w)], 1))
        flow0, flow1 = torch.chunk(out[:, :4], 2, 1)
        return flow0, flow1, out[:, 4:]


class _RefIntermediateDecoder(nn.Module):
    def __init__(self, in_ch, out_ch, skip_ch):
        super().__init__()
        self.convblock = nn.Sequential(_convrelu(in_ch * 3 + 4, in_ch * 3), _RefResBlock(in_ch * 3, skip_ch),
                                       nn.ConvTranspose2d(in_ch * 3, out_ch + 4, 4, 2, 1, bias=True))

    def forward(self, ft_, f0, f1, flow0_in, flow1_in):
        f_in = torch.cat([ft_, _warp(f0, flow0_in), _warp(f1, flow1_in), flow0_in, flow1_in], 1)
        out = self.convblock(f_in)
        flow0, flow1 = torch.chunk(out[:, :4], 2, 1)
        flow0 = flow0 + 2.0 * _resize(flow0_in, scale_factor=2.0)
        flow1 = flow1 + 2.0 * _resize(flow1_in, scale_factor=2.0)
        return flow0, flow1, out[:, 4:]


class _RefMultiFlowDecoder(nn.Module):
    def __init__(self, in_ch, skip_ch, num_flows=3):
        super().__init__()
        self.num_flows = num_flows
        self.convblock = nn.Sequential(_convrelu(in_ch * 3 + 4, in_ch * 3), _RefResBlock(in_ch * 3, skip_ch),
                                       nn.ConvTranspose2d(in_ch * 3, 8 * num_flows, 4, 2, 1, bias=True))

    def forward(self, ft_, f0, f1, flow0, flow1):
        n = self.num_flows
        out = self.convblock(torch.cat([ft_, _warp(f0, flow0), _warp(f1, flow1), flow0, flow1], 1))
        delta_flow0, delta_flow1, mask, img_res = torch.split(out, [2 * n, 2 * n, n, 3 * n], 1)
        mask = torch.sigmoid(mask)
        flow0 = delta_flow0 + 2.0 * _resize(flow0, scale_factor=2.0).repeat(1, n, 1, 1)
        flow1 = delta_flow1 + 2.0 * _resize(flow1, scale_factor=2.0).repeat(1, n, 1, 1)
        return flow0, flow1, mask, img_res


def _multi_flow_combine(comb_block, img0, img1, flow0, flow1, mask, img_res, mean):
    b, c, h, w = flow0.shape
    num_flows = c // 2
    flow0 = flow0.reshape(b, num_flows, 2, h, w).reshape(-1, 2, h, w)
    flow1 = flow1.reshape(b, num_flows, 2, h, w).reshape(-1, 2, h, w)
    mask = mask.reshape(b, num_flows, 1, h, w).reshape(-1, 1, h, w)
    img_res = img_res.reshape(b, num_flows, 3, h, w).reshape(-1, 3, h, w)
    img0 = torch.stack([img0] * num_flows, 1).reshape(-1, 3, h, w)
    img1 = torch.stack([img1] * num_flows, 1).reshape(-1, 3, h, w)
    mean = torch.stack([mean] * num_flows, 1).reshape(-1, 1, 1, 1)
    img_warps = mask * _warp(img0, flow0) + (1 - mask) * _warp(img1, flow1) + mean + img_res
    img_warps = img_warps.reshape(b, num_flows, 3, h, w)
    return img_warps.mean(1) + comb_block(img_warps.view(b, -1, h, w))


#: The constructor arguments of ``networks/AMT-{S,L,G}.py`` (``corr_radius=3, corr_lvls=4`` from cfgs/).
_REF = {
    "amt-s": dict(num_flows=3, channels=[20, 32, 44, 56], skip_channels=20, large=False,
                  feat=(84, (32, 32, 64, 96), True),
                  update=dict(hidden_dim=76, flow_dim=20, corr_dim=64, fc_dim=68), comb_k=3),
    "amt-l": dict(num_flows=5, channels=[48, 64, 72, 128], skip_channels=48, large=True,
                  feat=(128, (64, 64, 72, 128), False),
                  update=dict(hidden_dim=128, flow_dim=48, corr_dim=256, corr_dim2=160, fc_dim=124), comb_k=7),
    "amt-g": dict(num_flows=5, channels=[84, 96, 112, 128], skip_channels=84, large=True,
                  feat=(128, (64, 64, 112, 160, 160), False),
                  update=dict(hidden_dim=192, flow_dim=64, corr_dim=256, corr_dim2=192, fc_dim=188), comb_k=7),
}


class _RefModel(nn.Module):
    """``Model`` of AMT-S, AMT-L or AMT-G (``giant``: the extra high-resolution updates)."""

    def __init__(self, variant, corr_radius=3, corr_lvls=4, **override):
        super().__init__()
        a = {**_REF[variant], **override}
        self.giant = a.get("giant", variant == "amt-g")
        self.radius, self.corr_levels, self.num_flows = corr_radius, corr_lvls, a["num_flows"]
        channels, skip_channels, u = a["channels"], a["skip_channels"], a["update"]
        self.feat_encoder = _RefFeatEncoder(*a["feat"])
        self.encoder = _RefEncoder(channels, large=a["large"])
        self.decoder4 = _RefInitDecoder(channels[3], channels[2], skip_channels)
        self.decoder3 = _RefIntermediateDecoder(channels[2], channels[1], skip_channels)
        self.decoder2 = _RefIntermediateDecoder(channels[1], channels[0], skip_channels)
        self.decoder1 = _RefMultiFlowDecoder(channels[0], skip_channels, self.num_flows)
        block = lambda cdim, sf: _RefUpdateBlock(cdim, scale_factor=sf, corr_levels=corr_lvls, radius=corr_radius, **u)
        self.update4 = block(channels[2], None)
        if self.giant:
            self.update3_low = block(channels[1], 2.0)
            self.update2_low = block(channels[0], 4.0)
            self.update3_high = block(channels[1], None)
            self.update2_high = block(channels[0], None)
        else:
            self.update3 = block(channels[1], 2.0)
            self.update2 = block(channels[0], 4.0)
        n, k = self.num_flows, a["comb_k"]
        self.comb_block = nn.Sequential(nn.Conv2d(3 * n, 6 * n, k, 1, k // 2), nn.PReLU(6 * n),
                                        nn.Conv2d(6 * n, 3, k, 1, k // 2))

    def _corr_scale_lookup(self, corr_fn, coord, flow0, flow1, embt, downsample=1):
        t1_scale = 1. / embt
        t0_scale = 1. / (1. - embt)
        if downsample != 1:
            inv = 1 / downsample
            flow0 = inv * _resize(flow0, scale_factor=inv)
            flow1 = inv * _resize(flow1, scale_factor=inv)
        corr0, corr1 = corr_fn(coord + flow1 * t1_scale, coord + flow0 * t0_scale)
        return torch.cat([corr0, corr1], dim=1), torch.cat([flow0, flow1], dim=1)

    def forward(self, img0, img1, embt, scale_factor=1.0):
        mean_ = torch.cat([img0, img1], 2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0 = img0 - mean_
        img1 = img1 - mean_
        img0_ = _resize(img0, scale_factor) if scale_factor != 1.0 else img0
        img1_ = _resize(img1, scale_factor) if scale_factor != 1.0 else img1
        b, _, h, w = img0_.shape
        coord = _coords_grid(b, h // 8, w // 8, img0.device)
        fmap0, fmap1 = self.feat_encoder([img0_, img1_])
        corr_fn = _RefBidirCorrBlock(fmap0, fmap1, radius=self.radius, num_levels=self.corr_levels)
        f0_1, f0_2, f0_3, f0_4 = self.encoder(img0_)
        f1_1, f1_2, f1_3, f1_4 = self.encoder(img1_)

        up_flow0_4, up_flow1_4, ft_3_ = self.decoder4(f0_4, f1_4, embt)
        corr_4, flow_4 = self._corr_scale_lookup(corr_fn, coord, up_flow0_4, up_flow1_4, embt, downsample=1)
        delta_ft_3_, delta_flow_4 = self.update4(ft_3_, flow_4, corr_4)
        delta_flow0_4, delta_flow1_4 = torch.chunk(delta_flow_4, 2, 1)
        up_flow0_4 = up_flow0_4 + delta_flow0_4
        up_flow1_4 = up_flow1_4 + delta_flow1_4
        ft_3_ = ft_3_ + delta_ft_3_

        up_flow0_3, up_flow1_3, ft_2_ = self.decoder3(ft_3_, f0_3, f1_3, up_flow0_4, up_flow1_4)
        corr_3, flow_3 = self._corr_scale_lookup(corr_fn, coord, up_flow0_3, up_flow1_3, embt, downsample=2)
        delta_ft_2_, delta_flow_3 = (self.update3_low if self.giant else self.update3)(ft_2_, flow_3, corr_3)
        delta_flow0_3, delta_flow1_3 = torch.chunk(delta_flow_3, 2, 1)
        up_flow0_3 = up_flow0_3 + delta_flow0_3
        up_flow1_3 = up_flow1_3 + delta_flow1_3
        ft_2_ = ft_2_ + delta_ft_2_
        if self.giant:
            corr_3 = _resize(corr_3, scale_factor=2.0)
            up_flow_3 = torch.cat([up_flow0_3, up_flow1_3], dim=1)
            delta_ft_2_, delta_up_flow_3 = self.update3_high(ft_2_, up_flow_3, corr_3)
            ft_2_ += delta_ft_2_
            up_flow0_3 += delta_up_flow_3[:, 0:2]
            up_flow1_3 += delta_up_flow_3[:, 2:4]

        up_flow0_2, up_flow1_2, ft_1_ = self.decoder2(ft_2_, f0_2, f1_2, up_flow0_3, up_flow1_3)
        corr_2, flow_2 = self._corr_scale_lookup(corr_fn, coord, up_flow0_2, up_flow1_2, embt, downsample=4)
        delta_ft_1_, delta_flow_2 = (self.update2_low if self.giant else self.update2)(ft_1_, flow_2, corr_2)
        delta_flow0_2, delta_flow1_2 = torch.chunk(delta_flow_2, 2, 1)
        up_flow0_2 = up_flow0_2 + delta_flow0_2
        up_flow1_2 = up_flow1_2 + delta_flow1_2
        ft_1_ = ft_1_ + delta_ft_1_
        if self.giant:
            corr_2 = _resize(corr_2, scale_factor=4.0)
            up_flow_2 = torch.cat([up_flow0_2, up_flow1_2], dim=1)
            delta_ft_1_, delta_up_flow_2 = self.update2_high(ft_1_, up_flow_2, corr_2)
            ft_1_ += delta_ft_1_
            up_flow0_2 += delta_up_flow_2[:, 0:2]
            up_flow1_2 += delta_up_flow_2[:, 2:4]

        up_flow0_1, up_flow1_1, mask, img_res = self.decoder1(ft_1_, f0_1, f1_1, up_flow0_2, up_flow1_2)
        if scale_factor != 1.0:
            up_flow0_1 = _resize(up_flow0_1, scale_factor=(1.0 / scale_factor)) * (1.0 / scale_factor)
            up_flow1_1 = _resize(up_flow1_1, scale_factor=(1.0 / scale_factor)) * (1.0 / scale_factor)
            mask = _resize(mask, scale_factor=(1.0 / scale_factor))
            img_res = _resize(img_res, scale_factor=(1.0 / scale_factor))
        imgt_pred = _multi_flow_combine(self.comb_block, img0, img1, up_flow0_1, up_flow1_1, mask, img_res, mean_)
        return torch.clamp(imgt_pred, 0, 1)


#: The tiny profile's reduced AMT-G shape in the reference's terms (and ``corr_lvls=3``).
_T = TINY_CONFIG
_TINY_REF = dict(num_flows=_T.flows, channels=list(_T.channels), skip_channels=_T.skip, large=_T.wide_stem,
                 feat=(_T.feat_dim, _T.feat_widths, _T.bottleneck),
                 update=dict(hidden_dim=_T.hidden, flow_dim=_T.flow_dim, corr_dim=_T.corr_dim, corr_dim2=_T.corr_dim2,
                             fc_dim=_T.fc_dim),
                 comb_k=_T.comb_kernel, giant=_T.refine_full)


# --- the comparison ------------------------------------------------------------------------------

def _random_state(net: nn.Module, seed: int) -> dict:
    """Weights N(0, 1/fan_in) (flows of a few pixels, so the warps and lookups move), biases and
    PReLU slopes around their usual values."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in net.state_dict().items():
        if p.dim() == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            out[name] = torch.randn(p.shape, generator=gen, dtype=torch.float64) * (1.0 / fan_in ** 0.5)
        else:
            prelu = p.dim() == 1 and name.endswith("weight")
            out[name] = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.1 + (0.25 if prelu else 0)
    return out


def _relative(got, want) -> float:
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("variant", ["amt-s", "amt-l", "amt-g", "tiny"])
def test_ours_matches_the_official_forward(variant, float64_default):
    """Relative L2 error of the interpolated frames, same random weights, float64, t = 0.5 and
    0.25 in one batch (each sample its own time, as the official ``embt`` of shape (B,1,1,1))."""
    ref = _RefModel("amt-g", corr_lvls=3, **_TINY_REF) if variant == "tiny" else _RefModel(variant)
    ours = AMT(TINY_CONFIG if variant == "tiny" else VARIANTS[variant])
    sd = _random_state(ref, 7)
    assert set(sd) == set(ours.state_dict()), "our parameter names are the official ones"
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ref.load_state_dict(sd)
    ours.load_state_dict(sd)
    ref, ours = ref.double().eval(), ours.double().eval()
    gen = torch.Generator().manual_seed(1)
    img0 = torch.rand(2, 3, 128, 128, generator=gen, dtype=torch.float64)
    img1 = (img0.roll(3, -1) * 0.8 + 0.2 * torch.rand(2, 3, 128, 128, generator=gen, dtype=torch.float64))
    t = torch.tensor([0.5, 0.25], dtype=torch.float64)
    with torch.no_grad():
        want = ref(img0, img1, t.view(2, 1, 1, 1))
        got = ours(img0, img1, t)
    rel = _relative(got, want)
    print(f"{variant}: relative L2 error {rel:.2e} (t = 0.5, 0.25)")
    assert rel < 1e-6, rel
    assert _relative(want[0:1], want[1:2]) > 1e-3            # the two times give different frames


def test_scale_below_one_matches_the_official_scale_factor(float64_default):
    """``scale=0.5`` (the official ``scale_factor``): flows estimated on half-size frames."""
    ref, ours = _RefModel("amt-g", corr_lvls=3, **_TINY_REF), AMT(TINY_CONFIG)
    sd = _random_state(ref, 8)
    ref.load_state_dict(sd)
    ours.load_state_dict(sd)
    ref, ours = ref.double().eval(), ours.double().eval()
    img0 = torch.rand(1, 3, 128, 128, dtype=torch.float64)
    img1 = torch.rand(1, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        rel = _relative(ours(img0, img1, torch.tensor([0.5]), 0.5), ref(img0, img1, torch.full((1, 1, 1, 1), 0.5), 0.5))
    assert rel < 1e-6, rel


# --- weights --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["amt-s", "amt-l", "amt-g"])
def test_official_checkpoints_convert_and_every_name_maps(variant, tmp_path):
    """A checkpoint in the official layout (``{"state_dict": ...}`` of the official module's
    names) converts to safetensors that load, name for name and value for value, into ours,
    whose configuration is read back as the variant's."""
    with torch.device("meta"):
        shapes = _RefModel(variant).state_dict()
    gen = torch.Generator().manual_seed(3)
    sd = {k: torch.randn(v.shape, generator=gen) for k, v in shapes.items()}
    torch.save({"state_dict": sd}, tmp_path / f"{variant}.pth")
    out, name = convert_checkpoint(tmp_path / f"{variant}.pth", tmp_path / f"{variant}.safetensors")
    assert name == variant
    net = load_amt_net(out)
    assert net.config == VARIANTS[variant]
    loaded = net.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k
    assert sum(v.numel() for v in sd.values()) == {"amt-s": 2_990_543, "amt-l": 12_935_367,
                                                   "amt-g": 30_638_919}[variant]


def test_conversion_refuses_what_is_not_amt(tmp_path):
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, tmp_path / "x.pth")
    with pytest.raises(StageError, match="not an AMT checkpoint"):
        convert_checkpoint(tmp_path / "x.pth", tmp_path / "x.safetensors")
    sd = AMT(TINY_CONFIG).state_dict()
    sd["decoder2.convblock.0.0.weight"] = sd["decoder2.convblock.0.0.weight"][:, :-1]
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(StageError, match="do not fit the network"):
        convert_checkpoint(tmp_path / "cut.pth", tmp_path / "cut.safetensors")
    with pytest.raises(StageError, match="must be a .safetensors file"):
        load_amt_net(tmp_path / "cut.pth")


def test_module_prefix_is_dropped_and_pickled_code_refused(tmp_path):
    """A DDP-saved state dict loads; a checkpoint that would run code on unpickling is refused."""
    net = AMT(TINY_CONFIG)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "ddp.pth")
    out, name = convert_checkpoint(tmp_path / "ddp.pth", tmp_path / "ddp.safetensors")
    assert name == "custom" and load_amt_net(out).config == TINY_CONFIG

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"state_dict": net.state_dict(), "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        convert_checkpoint(tmp_path / "evil.pth", tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()


# --- the tiny model and running on frames ---------------------------------------------------------

def test_tiny_build_is_deterministic_and_reduced(tmp_path):
    a = build_tiny_amt(tmp_path / "a.safetensors")
    assert a.read_bytes() == build_tiny_amt(tmp_path / "b.safetensors").read_bytes()
    net = load_amt_net(a)
    assert net.config == TINY_CONFIG and TINY_CONFIG.refine_full            # AMT-G's structure
    assert sum(p.numel() for p in net.parameters()) < 0.02 * 30_638_919       # under 2 % of AMT-G


@pytest.mark.parametrize("size,scale,levels,want", [
    (64, 1.0, 4, (32, 32)), (70, 1.0, 4, (29, 29)), (720, 1.0, 4, (0, 0)), (1080, 1.0, 4, (4, 4)),
    (720, 0.5, 4, (8, 8)), (100, 0.5, 4, (78, 78)), (64, 1.0, 3, (0, 0)), (70, 1.0, 3, (5, 5)),
])
def test_padding_is_centred_to_the_multiple_and_the_least_size(size, scale, levels, want):
    assert padding(size, scale, levels) == want


def test_interpolator_pads_crops_and_batches_alike(tmp_path):
    amt = load_amt(build_tiny_amt(tmp_path / "a.safetensors"), dtype="bfloat16")
    assert {p.dtype for p in amt.net.parameters()} == {torch.float32}
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 70, 90, 3), dtype=np.uint8)
    samples = [(0, 0.5), (1, 0.5), (1, 0.25)]
    out = amt.between(frames, samples)
    assert out.shape == (3, 70, 90, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[1], out[2])                       # the time counts
    one_by_one = amt.between(frames, samples, batch=1)                 # float32 rounding apart
    assert np.abs(out.astype(int) - one_by_one).max() <= 1 and (out == one_by_one).mean() > 0.99
    from cinesynth_batch.runtime.swap import model_nbytes
    assert model_nbytes(amt) == sum(p.numel() * 4 for p in amt.net.parameters())
    assert amt.to("cpu") is amt and amt.device.type == "cpu"
    assert isinstance(amt, AmtInterpolator)


def test_the_released_configs_are_read_off_the_weights():
    for name, config in VARIANTS.items():
        with torch.device("meta"):
            sd = AMT(config).state_dict()
        assert config_from_state_dict(sd) == config, name
        assert (config.radius, config.levels) == (3, 4)
    with torch.device("meta"):
        sd = AMT(AmtConfig(**{**vars(TINY_CONFIG), "levels": 2})).state_dict()
    assert config_from_state_dict(sd).levels == 2
