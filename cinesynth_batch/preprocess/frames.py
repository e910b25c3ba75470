"""Reading the reference (driving) video for Wan2.2-Animate and the frame-count rule.

The reference is sampled on a regular grid ``t_k = k / fps`` (``k = 0 .. frames-1``), each
sample taking the source frame whose timestamp is nearest (ties take the earlier frame;
samples past the last frame take the last frame), then fitted to ``width x height`` by resizing
to cover and cropping the centre.

Frame count: every instant ``k / fps`` that lies within ``[0, duration]`` is one frame, so a
clip of ``duration`` seconds gives ``floor(duration * fps) + 1`` samples; that count is aligned
down to ``4k + 1`` (the Wan VAE's temporal stride), at least 5, and capped at ``max_frames``
(itself aligned down to ``4k + 1``). 2.0 s at 16 fps gives 33 frames, 5.1 s gives 81.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

MIN_FRAMES = 5


def align_4k1(n: int) -> int:
    """The largest ``4k + 1`` that is <= ``n`` (``n >= 1``)."""
    return ((int(n) - 1) // 4) * 4 + 1


def animate_frame_count(duration_s: float, fps: int = 16, max_frames: int = 601) -> int:
    """Frames of the pose/face/mask/background videos for a reference of ``duration_s``."""
    if not (duration_s >= 0) or math.isinf(duration_s):
        raise ValueError(f"duration must be a finite number >= 0, got {duration_s!r}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    if max_frames < MIN_FRAMES:
        raise ValueError(f"max_frames must be >= {MIN_FRAMES}, got {max_frames!r}")
    samples = math.floor(duration_s * fps + 1e-6) + 1
    n = max(align_4k1(samples), MIN_FRAMES)
    return min(n, align_4k1(max_frames))


def video_duration(path: str | Path) -> float:
    """Duration of the first video stream in seconds (not the container's, which may hold a
    longer audio track)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration:
            start = float(container.start_time / av.time_base) if container.start_time else 0.0
            return max(float(container.duration / av.time_base) - start, 0.0)
        rate = float(stream.average_rate) if stream.average_rate else None
        count = stream.frames or sum(1 for _ in container.decode(stream))
        if not rate:
            raise ValueError(f"{path}: cannot tell the video's duration")
        return count / rate


def fit_cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize ``image`` (H, W, 3 uint8) to cover ``width x height`` and crop the centre."""
    from PIL import Image

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return np.ascontiguousarray(image)
    scale = max(width / w, height / h)
    new_w = max(width, int(round(w * scale)))
    new_h = max(height, int(round(h * scale)))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    x0 = (new_w - width) // 2
    y0 = (new_h - height) // 2
    return np.asarray(resized.crop((x0, y0, x0 + width, y0 + height)), dtype=np.uint8)


def sample_times(fps: float, frames: int) -> np.ndarray:
    return np.arange(frames, dtype=np.float64) / float(fps)


def read_reference(path: str | Path, fps: float, frames: int, width: int, height: int) -> np.ndarray:
    """Sample ``frames`` frames of ``path`` at ``fps`` and fit each to ``width x height``.

    Returns ``uint8 (frames, height, width, 3)`` RGB. Decoding is streamed: only the frames
    that are picked are converted and kept.
    """
    import av

    if frames <= 0:
        raise ValueError(f"frames must be > 0, got {frames}")
    targets = sample_times(fps, frames)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    cache: dict[int, np.ndarray] = {}

    def fitted(idx: int, frame) -> np.ndarray:
        if idx not in cache:
            cache.clear()
            cache[idx] = fit_cover(frame.to_ndarray(format="rgb24"), width, height)
        return cache[idx]

    k = 0
    prev = None  # (index, frame, time)
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else None
        t0 = None
        for i, frame in enumerate(container.decode(stream)):
            t = frame.time
            if t is None:
                t = i / rate if rate else float(i)
            if t0 is None:
                t0 = t
            t -= t0
            while k < frames and t >= targets[k] - 1e-9:
                if prev is not None and (targets[k] - prev[2]) <= (t - targets[k]):
                    out[k] = fitted(prev[0], prev[1])
                else:
                    out[k] = fitted(i, frame)
                k += 1
            prev = (i, frame, t)
            if k >= frames:
                break
    if prev is None:
        raise ValueError(f"{path}: no video frames")
    while k < frames:
        out[k] = fitted(prev[0], prev[1])
        k += 1
    return out
