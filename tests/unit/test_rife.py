"""Our RIFE IFNet (``models/rife.py``) against the official forward, on the same random weights.

The reference below re-states, module for module and op for op, the inference path of
Practical-RIFE's ``train_log/IFNet_HDv3.py`` (v4.25, commit a1cffee) and ``model/warplayer.py``
(commit 8627b42): ``Head``, ``ResConv``, ``IFBlock``, ``IFNet.forward`` with ``training=False``,
``fastmode=True``, ``ensemble=False``, and the cached-grid ``warp``. It is written here because
the official module cannot be imported offline (it imports ``model.warplayer`` and picks a CUDA
device at import); it keeps their structure (timestep map built from ``x[:, :1]``, one block
call per level, the 1/scale resampling of input and flow) so that it answers for their code.
Ours differs in how it computes the same thing: both frames go through the encoder and every
warp in one batch, the warp grid is built from pixel coordinates, time is a per-sample tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cinesynth_batch.catalog.tiny.rife import TINY_CONFIG, build_tiny_rife
from cinesynth_batch.errors import StageError
from cinesynth_batch.models.rife import (IFNet, RifeConfig, RifeInterpolator, config_from_state_dict,
                                         convert_checkpoint, load_ifnet, load_rife)


# --- the official inference path, re-stated ------------------------------------------------------

def _ref_warp(ten_input, ten_flow):
    n, _, h, w = ten_flow.shape
    hor = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w).expand(n, -1, h, -1)
    ver = torch.linspace(-1.0, 1.0, h).view(1, 1, h, 1).expand(n, -1, -1, w)
    grid = torch.cat([hor, ver], 1)
    ten_flow = torch.cat([ten_flow[:, 0:1] / ((ten_input.shape[3] - 1.0) / 2.0),
                          ten_flow[:, 1:2] / ((ten_input.shape[2] - 1.0) / 2.0)], 1)
    g = (grid + ten_flow).permute(0, 2, 3, 1)
    return F.grid_sample(input=ten_input, grid=g, mode="bilinear", padding_mode="border", align_corners=True)


def _ref_conv(cin, cout, k=3, s=1, p=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=True), nn.LeakyReLU(0.2, True))


class _RefHead(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cnn0 = nn.Conv2d(3, c, 3, 2, 1)
        self.cnn1 = nn.Conv2d(c, c, 3, 1, 1)
        self.cnn2 = nn.Conv2d(c, c, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(c, c, 4, 2, 1)
        self.relu = nn.LeakyReLU(0.2, True)

    def forward(self, x):
        x = self.relu(self.cnn0(x))
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        return self.cnn3(x)


class _RefResConv(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1, dilation=1, groups=1)
        self.beta = nn.Parameter(torch.ones((1, c, 1, 1)))
        self.relu = nn.LeakyReLU(0.2, True)

    def forward(self, x):
        return self.relu(self.conv(x) * self.beta + x)


class _RefIFBlock(nn.Module):
    def __init__(self, in_planes, c, res):
        super().__init__()
        self.conv0 = nn.Sequential(_ref_conv(in_planes, c // 2, 3, 2, 1), _ref_conv(c // 2, c, 3, 2, 1))
        self.convblock = nn.Sequential(*[_RefResConv(c) for _ in range(res)])
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(c, 4 * 13, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x, flow=None, scale=1):
        x = F.interpolate(x, scale_factor=1. / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            flow = F.interpolate(flow, scale_factor=1. / scale, mode="bilinear", align_corners=False) * 1. / scale
            x = torch.cat((x, flow), 1)
        feat = self.conv0(x)
        feat = self.convblock(feat)
        tmp = self.lastconv(feat)
        tmp = F.interpolate(tmp, scale_factor=scale, mode="bilinear", align_corners=False)
        return tmp[:, :4] * scale, tmp[:, 4:5], tmp[:, 5:]


class _RefIFNet(nn.Module):
    def __init__(self, head=16, blocks=(192, 128, 96, 64, 32), res=8):
        super().__init__()
        for i, c in enumerate(blocks):
            cin = 7 + 2 * head if i == 0 else 8 + 4 + 8 + 2 * head
            setattr(self, f"block{i}", _RefIFBlock(cin, c, res))
        self.encode = _RefHead(head)
        self.n = len(blocks)

    def forward(self, x, timestep=0.5, scale_list=(16, 8, 4, 2, 1)):
        channel = x.shape[1] // 2
        img0, img1 = x[:, :channel], x[:, channel:]
        if not torch.is_tensor(timestep):
            timestep = (x[:, :1].clone() * 0 + 1) * timestep
        else:
            timestep = timestep.repeat(1, 1, img0.shape[2], img0.shape[3])
        f0, f1 = self.encode(img0[:, :3]), self.encode(img1[:, :3])
        warped_img0, warped_img1 = img0, img1
        flow = mask = feat = None
        for i in range(self.n):
            block = getattr(self, f"block{i}")
            if flow is None:
                flow, mask, feat = block(torch.cat((img0[:, :3], img1[:, :3], f0, f1, timestep), 1), None,
                                         scale=scale_list[i])
            else:
                wf0 = _ref_warp(f0, flow[:, :2])
                wf1 = _ref_warp(f1, flow[:, 2:4])
                fd, m0, feat = block(torch.cat((warped_img0[:, :3], warped_img1[:, :3], wf0, wf1, timestep, mask,
                                                feat), 1), flow, scale=scale_list[i])
                mask = m0
                flow = flow + fd
            warped_img0 = _ref_warp(img0, flow[:, :2])
            warped_img1 = _ref_warp(img1, flow[:, 2:4])
        mask = torch.sigmoid(mask)
        return warped_img0 * mask + warped_img1 * (1 - mask)


# --- the comparison ------------------------------------------------------------------------------

def _random_state(net: nn.Module, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in net.state_dict().items():
        if p.dim() == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            out[name] = torch.randn(p.shape, generator=gen, dtype=torch.float64) * (1.0 / fan_in ** 0.5)
        else:
            out[name] = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3 + (1 if "beta" in name else 0)
    return out


def _pair(ref: _RefIFNet, ours: IFNet, seed: int):
    sd = _random_state(ref, seed)
    assert set(sd) == set(ours.state_dict()), "our parameter names are the official ones"
    ref.load_state_dict(sd)
    ours.load_state_dict(sd)
    return ref.double().eval(), ours.double().eval()


@pytest.mark.parametrize("config", [dict(head=16, blocks=(192, 128, 96, 64, 32), res=8),
                                    dict(head=4, blocks=(8, 8, 8, 8, 8), res=2)],
                         ids=["official-widths", "tiny-widths"])
def test_ours_matches_the_official_forward(config, float64_default):
    torch.manual_seed(0)
    ref, ours = _pair(_RefIFNet(**config), IFNet(RifeConfig(config["head"], config["blocks"], config["res"])), 3)
    h, w = 128, 256 if config["head"] == 4 else 128
    img0 = torch.rand(2, 3, h, w, dtype=torch.float64)
    img1 = torch.rand(2, 3, h, w, dtype=torch.float64)
    with torch.no_grad():
        for t in (0.5, 0.25):
            want = ref(torch.cat((img0, img1), 1), t)
            got = ours(img0, img1, torch.full((2,), t, dtype=torch.float64))
            rel = ((got - want).norm() / want.norm()).item()
            assert rel < 1e-10, rel
        # per-sample times in one batch equal single-time calls; scale 0.5 (the official --scale)
        ts = torch.tensor([0.25, 0.75], dtype=torch.float64)
        want = torch.cat([ref(torch.cat((img0[i:i + 1], img1[i:i + 1]), 1), float(ts[i]),
                              [32, 16, 8, 4, 2]) for i in range(2)])
        got = ours(img0, img1, ts, [32, 16, 8, 4, 2])
        assert ((got - want).norm() / want.norm()).item() < 1e-10


def test_the_widths_are_read_off_the_weights(tmp_path):
    path = build_tiny_rife(tmp_path / "r.safetensors")
    net = load_ifnet(path)
    assert net.config == RifeConfig(TINY_CONFIG["head"], TINY_CONFIG["blocks"], TINY_CONFIG["res_convs"])
    with torch.device("meta"):
        full = IFNet()
    assert config_from_state_dict(full.state_dict()) == RifeConfig()
    assert sum(p.numel() for p in full.parameters()) > 5_000_000     # the 4.25 network's size class


def test_tiny_build_is_deterministic(tmp_path):
    a = build_tiny_rife(tmp_path / "a.safetensors").read_bytes()
    b = build_tiny_rife(tmp_path / "b.safetensors").read_bytes()
    assert a == b


def test_official_checkpoint_converts_without_pickled_code(tmp_path):
    """A DDP-saved state dict (``module.`` keys) becomes safetensors that load to the same net."""
    net = IFNet(RifeConfig(4, (8, 8, 8, 8, 8), 2))
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "flownet.pkl")
    out = convert_checkpoint(tmp_path / "flownet.pkl", tmp_path / "rife.safetensors")
    loaded = load_ifnet(out)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(StageError, match="must be a .safetensors file"):
        load_ifnet(tmp_path / "flownet.pkl")


def test_interpolator_pads_crops_and_keeps_the_ends(tmp_path):
    """Odd sizes are padded to the network's multiple and cropped back; t near 0 or 1 gives a
    frame close to that end (the blend mask cannot move the warp far with small flows)."""
    rife = RifeInterpolator(load_ifnet(build_tiny_rife(tmp_path / "r.safetensors")))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 70, 90, 3), dtype=np.uint8)
    out = rife.between(frames, [(0, 0.5), (1, 0.5), (1, 0.25)], batch=2)
    assert out.shape == (3, 70, 90, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0], out[1])
    # residency sizes and moves it through its network
    from cinesynth_batch.runtime.swap import model_nbytes
    assert model_nbytes(rife) == sum(p.numel() * 4 for p in rife.net.parameters())
    assert rife.to("cpu") is rife and rife.device.type == "cpu"


def test_loaded_in_float32_whatever_the_profile_dtype(tmp_path):
    rife = load_rife(build_tiny_rife(tmp_path / "r.safetensors"), dtype="bfloat16")
    assert {p.dtype for p in rife.net.parameters()} == {torch.float32}
