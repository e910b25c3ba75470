from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from cinesynth_batch.models.rrdbnet import (
    RRDBNet,
    Upscaler,
    infer_rrdbnet_config,
    load_rrdbnet,
)
from cinesynth_batch.catalog.tiny.rrdbnet import build_tiny_rrdbnet
from cinesynth_batch.stages import upscale as upscale_stage
from cinesynth_batch.stages.base import StageContext, StageError

torch.set_num_threads(1)
torch.set_flush_denormal(True)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return build_tiny_rrdbnet(tmp_path_factory.mktemp("rrdb") / "tiny_x2.pth")


@pytest.fixture(scope="module")
def tiny(tiny_path) -> Upscaler:
    return load_rrdbnet(tiny_path)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1),
                     (xx + yy) * 127 / max(h + w - 2, 1)], axis=-1)
    noise = rng.normal(0, 20, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _expected_keys(num_block: int) -> set[str]:
    keys = set()
    for name in ("conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"):
        keys |= {f"{name}.weight", f"{name}.bias"}
    for n in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 6):
                keys |= {f"body.{n}.rdb{r}.conv{c}.weight", f"body.{n}.rdb{r}.conv{c}.bias"}
    return keys


# ---------------------------------------------------------------- architecture


def test_official_x2_layout_names_shapes_and_size():
    with torch.device("meta"):
        net = RRDBNet(num_feat=64, num_block=23, num_grow_ch=32, scale=2)
    sd = net.state_dict()
    assert set(sd) == _expected_keys(23)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["conv_first.weight"] == (64, 12, 3, 3)
    assert shapes["body.0.rdb1.conv1.weight"] == (32, 64, 3, 3)
    assert shapes["body.0.rdb1.conv2.weight"] == (32, 96, 3, 3)
    assert shapes["body.0.rdb1.conv4.weight"] == (32, 160, 3, 3)
    assert shapes["body.22.rdb3.conv5.weight"] == (64, 192, 3, 3)
    assert shapes["body.22.rdb3.conv5.bias"] == (64,)
    assert shapes["conv_body.weight"] == (64, 64, 3, 3)
    assert shapes["conv_up1.weight"] == shapes["conv_up2.weight"] == shapes["conv_hr.weight"]
    assert shapes["conv_last.weight"] == (3, 64, 3, 3)
    assert sum(v.numel() for v in sd.values()) == 16_703_171  # ~16.7M, 67 MB in fp32
    cfg = infer_rrdbnet_config(sd)
    assert cfg == {"num_in_ch": 3, "num_out_ch": 3, "scale": 2, "num_feat": 64,
                   "num_block": 23, "num_grow_ch": 32}


def test_official_x4_layout_takes_rgb_directly():
    with torch.device("meta"):
        net = RRDBNet(scale=4)
    assert tuple(net.state_dict()["conv_first.weight"].shape) == (64, 3, 3, 3)
    assert infer_rrdbnet_config(net.state_dict())["scale"] == 4


def test_pixel_unshuffle_channel_order_matches_basicsr():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    b, c, hh, hw = x.shape
    ref = x.view(b, c, hh // 2, 2, hw // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, hh // 2,
                                                                               hw // 2)
    assert torch.equal(F.pixel_unshuffle(x, 2), ref)


def _functional_rrdbnet(sd: dict, x: torch.Tensor, num_block: int) -> torch.Tensor:
    def conv(name, t):
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    def lrelu(t):
        return F.leaky_relu(t, 0.2)

    b, c, h, w = x.shape
    feat = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2,
                                                                              w // 2)
    feat = conv("conv_first", feat)
    trunk = feat
    for n in range(num_block):
        block_in = trunk
        for r in (1, 2, 3):
            p = f"body.{n}.rdb{r}"
            outs = [trunk]
            for k in range(1, 5):
                outs.append(lrelu(conv(f"{p}.conv{k}", torch.cat(outs, 1))))
            trunk = conv(f"{p}.conv5", torch.cat(outs, 1)) * 0.2 + trunk
        trunk = trunk * 0.2 + block_in
    feat = feat + conv("conv_body", trunk)
    feat = lrelu(conv("conv_up1", feat.repeat_interleave(2, 2).repeat_interleave(2, 3)))
    feat = lrelu(conv("conv_up2", feat.repeat_interleave(2, 2).repeat_interleave(2, 3)))
    return conv("conv_last", lrelu(conv("conv_hr", feat)))


def test_forward_matches_functional_reference(tiny_path):
    sd = torch.load(tiny_path, map_location="cpu", weights_only=True)["params_ema"]
    sd = {k: v.double() for k, v in sd.items()}
    net = RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4).double().eval()
    net.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = net(x)
    want = _functional_rrdbnet(sd, x, num_block=1)
    assert got.shape == (1, 3, 24, 20)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- upscaler


@pytest.mark.parametrize("h,w", [(72, 80), (33, 47), (1, 5)])
def test_output_is_exactly_2x(tiny, h, w):
    img = _image(h, w)
    for tile, pad in ((0, 0), (16, 6), (15, 5)):
        out = tiny.upscale(img, tile=tile, tile_pad=pad)
        assert out.dtype == np.uint8
        assert out.shape == (2 * h, 2 * w, 3)


def test_tiled_equals_untiled_when_pad_covers_receptive_field(tiny):
    img = _image(72, 80)
    full = tiny.upscale(img, tile=0)
    calls = []
    tiled = tiny.upscale(img, tile=32, tile_pad=40, progress=lambda d, t: calls.append((d, t)))
    diff = np.abs(tiled.astype(int) - full.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3
    assert calls == [(i, 9) for i in range(1, 10)]  # 3 x 3 tiles of 32 on 80 x 72


def test_tiled_with_small_pad_is_close_and_padding_matters(tiny):
    img = _image(72, 80)
    full = tiny.upscale(img, tile=0).astype(int)
    pad8 = np.abs(tiny.upscale(img, tile=32, tile_pad=8).astype(int) - full)
    pad0 = np.abs(tiny.upscale(img, tile=32, tile_pad=0).astype(int) - full)
    assert pad8.max() <= 3
    assert (pad8 > 0).mean() < 0.05
    assert pad0.max() > pad8.max()  # the test can see seams


def test_tile_larger_than_image_is_whole_image(tiny):
    img = _image(30, 26)
    assert np.array_equal(tiny.upscale(img, tile=0), tiny.upscale(img, tile=64, tile_pad=10))


def test_rejects_non_rgb_uint8(tiny):
    with pytest.raises(ValueError):
        tiny.upscale(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError):
        tiny.upscale(np.zeros((8, 8, 3), np.float32))


def test_bfloat16_and_nbytes(tiny_path, tiny):
    half = load_rrdbnet(tiny_path, dtype="bfloat16")
    assert half.nbytes * 2 == tiny.nbytes
    assert tiny.nbytes == 4 * sum(p.numel() for p in tiny.net.parameters())
    img = _image(24, 20)
    diff = np.abs(half.upscale(img, tile=0).astype(int) - tiny.upscale(img, tile=0).astype(int))
    assert diff.mean() < 4
    assert tiny.to("cpu") is tiny


# ---------------------------------------------------------------- files


def test_tiny_file_is_official_layout_and_byte_stable(tmp_path, tiny_path):
    a = build_tiny_rrdbnet(tmp_path / "a.pth")
    b = build_tiny_rrdbnet(tmp_path / "other" / "b.pth")
    build_tiny_rrdbnet(a)  # overwrite in place
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert a.read_bytes() == tiny_path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "other"]  # no temp left
    assert build_tiny_rrdbnet(tmp_path / "c.pth", seed=1).read_bytes() != a.read_bytes()
    raw = torch.load(a, map_location="cpu", weights_only=True)
    assert list(raw) == ["params_ema"]
    assert set(raw["params_ema"]) == _expected_keys(1)
    assert tuple(raw["params_ema"]["conv_first.weight"].shape) == (8, 12, 3, 3)


def test_round_trip_layouts_give_same_network(tmp_path, tiny_path, tiny):
    from safetensors.torch import save_file

    sd = torch.load(tiny_path, map_location="cpu", weights_only=True)["params_ema"]
    torch.save({"params": sd}, tmp_path / "params.pth")
    torch.save(dict(sd), tmp_path / "bare.pth")
    save_file(dict(sd), str(tmp_path / "m.safetensors"))
    img = _image(20, 18)
    ref = tiny.upscale(img, tile=0)
    for name in ("params.pth", "bare.pth", "m.safetensors"):
        up = load_rrdbnet(tmp_path / name)
        assert up.scale == 2
        loaded = up.net.state_dict()
        assert set(loaded) == set(sd)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)
        assert np.array_equal(up.upscale(img, tile=0), ref)
    n = tiny.net
    assert (n.num_feat, n.num_block, n.num_grow_ch, n.scale) == (8, 1, 4, 2)
    assert not any(p.requires_grad for p in n.parameters())
    assert not n.training


def test_x4_file_loads_and_upscales_4x(tmp_path):
    up = load_rrdbnet(build_tiny_rrdbnet(tmp_path / "x4.pth", scale=4, num_block=2))
    assert up.scale == 4 and up.net.num_block == 2
    assert up.upscale(_image(9, 7), tile=4, tile_pad=2).shape == (36, 28, 3)


_marks: list = []


class _Sneaky:
    def __reduce__(self):
        return (_marks.append, ("unpickled",))


def test_bad_files_raise_stage_error(tmp_path, tiny_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(StageError, match="nope.pth"):
        load_rrdbnet(missing)

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_path.read_bytes()[:5000])
    with pytest.raises(StageError, match="truncated.pth") as ei:
        load_rrdbnet(truncated)
    assert "RRDBNet" in (ei.value.hint or "")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(StageError, match="garbage.safetensors"):
        load_rrdbnet(garbage)

    old_esrgan = tmp_path / "old.pth"
    torch.save({"model.0.weight": torch.zeros(64, 3, 3, 3)}, old_esrgan)
    with pytest.raises(StageError, match="conv_first"):
        load_rrdbnet(old_esrgan)

    sd = torch.load(tiny_path, map_location="cpu", weights_only=True)["params_ema"]
    missing_key = dict(sd)
    del missing_key["conv_hr.weight"]
    torch.save({"params_ema": missing_key}, tmp_path / "missing_key.pth")
    with pytest.raises(StageError, match="conv_hr.weight"):
        load_rrdbnet(tmp_path / "missing_key.pth")

    wrong_shape = dict(sd)
    wrong_shape["body.0.rdb2.conv3.weight"] = torch.zeros(4, 17, 3, 3)
    torch.save({"params_ema": wrong_shape}, tmp_path / "wrong_shape.pth")
    with pytest.raises(StageError, match="wrong_shape.pth"):
        load_rrdbnet(tmp_path / "wrong_shape.pth")

    weird_in = dict(sd)
    weird_in["conv_first.weight"] = torch.zeros(8, 7, 3, 3)
    torch.save(weird_in, tmp_path / "weird_in.pth")
    with pytest.raises(StageError, match="input channels"):
        load_rrdbnet(tmp_path / "weird_in.pth")

    torch.save({"params_ema": _Sneaky()}, tmp_path / "pickle.pth")
    with pytest.raises(StageError, match="pickle.pth"):
        load_rrdbnet(tmp_path / "pickle.pth")
    assert _marks == []


# ---------------------------------------------------------------- stage


class _Models:
    def __init__(self, upscaler):
        self.upscaler = upscaler
        self.roles: list[str] = []

    def get(self, role):
        self.roles.append(role)
        return self.upscaler


def _ctx(upscaler, progress=None) -> StageContext:
    ctx = StageContext(models=_Models(upscaler), resolve_lora=lambda n, f: Path(n))
    if progress is not None:
        ctx.progress = progress
    return ctx


def test_stage_constants():
    assert upscale_stage.KIND == "upscale"
    assert upscale_stage.OUTPUT_EXT == ".png"
    assert upscale_stage.MODEL_ROLE == "upscale"


def test_stage_writes_png_of_twice_the_size(tmp_path, tiny):
    src = tmp_path / "in.png"
    img = _image(30, 44)
    Image.fromarray(img).save(src)
    out = tmp_path / "out.tmp"
    calls = []
    ctx = _ctx(tiny, progress=lambda d, t: calls.append((d, t)))
    facts = upscale_stage.run({"scale": 2, "tile": 16, "tile_pad": 4}, {"image": src}, out, ctx)
    assert facts == {"width": 88, "height": 60}
    assert ctx.models.roles == ["upscale"]
    assert calls[-1] == (6, 6) and len(calls) == 6
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (88, 60) and im.mode == "RGB"
        written = np.asarray(im)
    assert np.array_equal(written, tiny.upscale(img, tile=16, tile_pad=4))


def test_stage_keeps_alpha(tmp_path, tiny):
    src = tmp_path / "rgba.png"
    rgba = np.dstack([_image(10, 12), np.full((10, 12), 128, np.uint8)])
    Image.fromarray(rgba).save(src)
    out = tmp_path / "out.png"
    upscale_stage.run({"scale": 2, "tile": 0, "tile_pad": 0}, {"image": src}, out, _ctx(tiny))
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.size == (24, 20)
        assert np.all(np.asarray(im)[..., 3] == 128)


def test_stage_errors(tmp_path, tiny):
    src = tmp_path / "in.png"
    Image.fromarray(_image(8, 8)).save(src)
    out = tmp_path / "out.png"
    with pytest.raises(StageError, match="x2") as ei:
        upscale_stage.run({"scale": 4, "tile": 0, "tile_pad": 0}, {"image": src}, out, _ctx(tiny))
    assert "scale: 2" in ei.value.hint
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(StageError, match="bad.png"):
        upscale_stage.run({"scale": 2, "tile": 0, "tile_pad": 0}, {"image": bad}, out, _ctx(tiny))
    with pytest.raises(StageError, match="tile"):
        upscale_stage.run({"scale": 2, "tile": -1, "tile_pad": 0}, {"image": src}, out, _ctx(tiny))
    assert not out.exists()
