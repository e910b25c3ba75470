"""Decoded video to ``uint8`` frames on the device that decoded it.

Rounding a float clip on the CPU costs more than copying it: 81 frames at 480x832 are 97 M
values, and NumPy's clip, scale, round and cast take about 2 s on two cores where the same four
operations on the GPU take milliseconds and leave a quarter of the bytes to copy back. The
operations and their order are those of the float path (float32 throughout, round half to even),
so the bytes are the same on every device.
"""

from __future__ import annotations

from typing import Any


def unit_to_uint8(pixels: Any) -> Any:
    """Pixels in [0, 1] (any float dtype) -> ``uint8``: clip, ``* 255``, round, in float32."""
    import torch

    return (pixels.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def signed_to_uint8(pixels: Any) -> Any:
    """Pixels in [-1, 1] (any float dtype) -> ``uint8``: ``(x + 1) * 127.5``, round, clip, in float32."""
    import torch

    return ((pixels.float() + 1.0) * 127.5).round().clamp(0.0, 255.0).to(torch.uint8)


def video_frames(video: Any) -> Any:
    """A diffusers ``output_type="pt"`` video (``[B, F, C, H, W]`` or ``[F, C, H, W]`` in [0, 1]) or
    a NumPy one (``[B, F, H, W, C]`` / ``[F, H, W, C]``, float in [0, 1] or ``uint8``) -> the first
    clip's frames as a contiguous ``uint8`` ``(F, H, W, 3)`` NumPy array."""
    import numpy as np

    if isinstance(video, np.ndarray) or isinstance(video, list):
        frames = np.asarray(video)
        if frames.ndim == 5:
            frames = frames[0]
        if frames.dtype != np.uint8:
            frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return np.ascontiguousarray(frames)
    if video.ndim == 5:
        video = video[0]
    return unit_to_uint8(video).permute(0, 2, 3, 1).contiguous().cpu().numpy()
