"""Small numpy image operations used by the preprocessing (no OpenCV dependency)."""

from __future__ import annotations

import numpy as np


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with pixel-centre alignment and no anti-aliasing, the sampling of
    OpenCV's ``INTER_LINEAR`` (what detector/pose-model inputs were prepared with).

    ``image`` is (H, W) or (H, W, C); the result is float32.
    """
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    ys = (np.arange(out_h, dtype=np.float64) + 0.5) * (h / out_h) - 0.5
    xs = (np.arange(out_w, dtype=np.float64) + 0.5) * (w / out_w) - 0.5
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0).astype(np.float32)
    wx = (xs - x0).astype(np.float32)
    if img.ndim == 3:
        wy = wy[:, None, None]
        wx = wx[None, :, None]
    else:
        wy = wy[:, None]
        wx = wx[None, :]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def _max_filter_1d(mask: np.ndarray, radius: int, axis: int) -> np.ndarray:
    if radius <= 0:
        return mask
    n = mask.shape[axis]
    out = mask.copy()
    for s in range(1, radius + 1):
        if s >= n:
            break
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(0, n - s), slice(s, n)
        out[tuple(lo)] |= mask[tuple(hi)]
        out[tuple(hi)] |= mask[tuple(lo)]
    return out


def dilate(mask: np.ndarray, k: int = 7, iterations: int = 3) -> np.ndarray:
    """Dilate a bool mask by a ``k x k`` square, ``iterations`` times (one square of side
    ``(k - 1) * iterations + 1``)."""
    m = np.asarray(mask, dtype=bool)
    if k <= 1 or iterations <= 0:
        return m.copy()
    radius = (k // 2) * iterations
    return _max_filter_1d(_max_filter_1d(m, radius, 0), radius, 1)


def grid_fill(mask: np.ndarray, w_len: int = 1, h_len: int = 1) -> np.ndarray:
    """Split the mask's bounding box into ``w_len x h_len`` cells and fill every cell that
    holds any mask pixel. ``1 x 1`` turns the mask into its bounding rectangle."""
    m = np.asarray(mask, dtype=bool).copy()
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return m
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    xe = np.linspace(x0, x1, max(int(w_len), 1) + 1).round().astype(int)
    ye = np.linspace(y0, y1, max(int(h_len), 1) + 1).round().astype(int)
    for i in range(len(ye) - 1):
        for j in range(len(xe) - 1):
            cell = m[ye[i]:ye[i + 1], xe[j]:xe[j + 1]]
            if cell.size and cell.any():
                cell[...] = True
    return m


def gaussian_kernel(size: int, sigma: float = 0.0) -> np.ndarray:
    """1-D Gaussian taps; ``sigma <= 0`` derives it from the size as OpenCV does for sizes > 7."""
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def gaussian_blur_zero_pad(maps: np.ndarray, size: int) -> np.ndarray:
    """Separable Gaussian blur of ``(..., H, W)`` maps with zeros outside."""
    k = gaussian_kernel(size)
    r = size // 2
    m = np.asarray(maps, dtype=np.float64)
    pad = [(0, 0)] * (m.ndim - 2)
    p = np.pad(m, pad + [(0, 0), (r, r)])
    h = sum(k[i] * p[..., :, i:i + m.shape[-1]] for i in range(size))
    p = np.pad(h, pad + [(r, r), (0, 0)])
    return sum(k[i] * p[..., i:i + m.shape[-2], :] for i in range(size))
