"""A still fitted to a size: the seed's avatar rule (WanAvatar ``server.py`` ``/api/register-avatar``).

The image is cropped to the target's aspect when its own differs by more than ``tolerance``
(0.02, in width / height): a too wide image loses equal parts of its left and right sides
(``new_w = int(h · W / H)``, from ``(w − new_w) // 2``), a too tall one keeps its top and loses its
bottom (``new_h = int(w · H / W)``: the head stays). It is then resized to exactly ``W`` x ``H``
with a Lanczos filter (PIL's; the seed's is OpenCV's ``INTER_LANCZOS4``).
"""

from __future__ import annotations

from typing import Any


def fit_box(width: int, height: int, target_w: int, target_h: int,
            tolerance: float = 0.02) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` of the part of a ``width`` x ``height`` image that is kept."""
    target = target_w / target_h
    ratio = width / height
    if abs(ratio - target) <= tolerance:
        return 0, 0, width, height
    if ratio > target:                                   # too wide: crop the sides
        new_w = max(1, int(height * target))
        x = (width - new_w) // 2
        return x, 0, x + new_w, height
    new_h = max(1, int(width / target))                  # too tall: crop the bottom
    return 0, 0, width, new_h


def fit_still(image: Any, target_w: int, target_h: int, tolerance: float = 0.02) -> Any:
    """``image`` (PIL, RGB) cropped by ``fit_box`` and resized to ``target_w`` x ``target_h``."""
    from PIL import Image

    box = fit_box(image.width, image.height, target_w, target_h, tolerance)
    if box != (0, 0, image.width, image.height):
        image = image.crop(box)
    return image.resize((target_w, target_h), Image.Resampling.LANCZOS)
