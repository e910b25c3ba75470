"""Decoded video rounded to uint8 on its device gives the bytes of the float (NumPy) path."""

import numpy as np
import pytest
import torch

from cinesynth_batch.runtime.pixels import signed_to_uint8, video_frames


def _unit_video(dtype):
    g = torch.Generator().manual_seed(7)
    video = torch.rand(1, 5, 3, 6, 10, generator=g) * 1.2 - 0.1          # over and under [0, 1]
    video[0, 0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255])   # halves
    return video.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_pt_video_gives_the_frames_of_the_numpy_path(dtype):
    video = _unit_video(dtype)
    as_numpy = video.permute(0, 1, 3, 4, 2).float().numpy()                # what output_type="np" returns
    expected = (np.clip(as_numpy, 0.0, 1.0) * 255.0).round().astype(np.uint8)[0]
    frames = video_frames(video)
    assert frames.dtype == np.uint8 and frames.shape == (5, 6, 10, 3) and frames.flags.c_contiguous
    assert np.array_equal(frames, expected)
    assert np.array_equal(video_frames(as_numpy), expected)               # the NumPy input path
    assert np.array_equal(video_frames(expected), expected)               # uint8 passes through
    if dtype == torch.float32:                                             # halves: to even, as NumPy
        assert frames[0, 0, :4, 0].tolist() == [0, 2, 2, 254]


def test_signed_pixels_round_as_the_s2v_float_path():
    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(1, 3, 4, 6, 8, generator=g) * 2 - 1)
    pixels[0, 0, 0, 0, :3] = torch.tensor([-1.0, 1.0, 0.5 / 127.5 - 1.0])
    expected = ((pixels[0].permute(1, 2, 3, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    got = signed_to_uint8(pixels)[0].permute(1, 2, 3, 0).numpy()
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert got[0, 0, :3, 0].tolist() == [0, 255, 0]
