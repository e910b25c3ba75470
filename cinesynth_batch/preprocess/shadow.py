"""A floor shadow under the person of a clip, as the seed's ``shadow_postprocess.py`` draws it.

Per frame, a person mask (MediaPipe selfie segmentation, general model) gives the person's box;
the shadow is that mask squashed flat at the feet in two layers:

* **contact**: 8 % of the person's height, 1.15x their width, 0.5 % of the frame below the
  feet, lightly blurred (``max(11, blur // 3)``), at 0.7 x opacity;
* **ambient**: 22 % of the height, 1.4x the width, 1 % of the frame below the feet, blurred
  with ``max(51, min(151, width // 8))``, at 0.5 x opacity.

Their sum is capped at the opacity (0.45 by default) and cut away where the person is: no
shadow on the person. Lighting is read once, from the first frame with a mask: the brightest
cell of a 3x3 grid of the background sets the side the shadow leans to (up to 0.15 x the
person's width, away from the light), and the shadow's tint is 30 % of the mean colour of the
background in the frame's bottom quarter (the floor; dark grey when none shows). A frame is
blended towards the tint by the shadow's alpha. Frames where no person (or one under 10 px)
is found are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTACT = {"height": 0.08, "width": 1.15, "drop": 0.005, "weight": 0.7}
AMBIENT = {"height": 0.22, "width": 1.4, "drop": 0.01, "weight": 0.5}
LEAN = 0.15
TINT = 0.3
DEFAULT_TINT = (20, 20, 20)
MIN_PERSON = 10


@dataclass(frozen=True)
class Light:
    lean: float                       # shadow centre offset, as a fraction of the person's width
    tint: tuple[int, int, int]        # RGB


def read_light(frame: np.ndarray, mask: np.ndarray) -> Light:
    """Where the light comes from (the brightest background cell of a 3x3 grid) and the floor tint."""
    import cv2

    h, w = mask.shape
    background = 1.0 - mask
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) * background
    ch, cw = h // 3, w // 3
    brightness = np.zeros((3, 3), dtype=np.float32)
    for gy in range(3):
        for gx in range(3):
            cell = (slice(gy * ch, (gy + 1) * ch), slice(gx * cw, (gx + 1) * cw))
            seen = background[cell] > 0.5
            if seen.any():
                brightness[gy, gx] = gray[cell][seen].mean()
    _, gx = np.unravel_index(int(np.argmax(brightness)), brightness.shape)
    floor = slice(int(h * 0.75), None)
    seen = background[floor] > 0.5
    tint = DEFAULT_TINT
    if seen.any():
        tint = tuple(int(v) for v in (frame[floor][seen].mean(axis=0) * TINT).astype(np.uint8))
    return Light(lean=(1 - int(gx)) * LEAN, tint=tint)


def _odd(k: int) -> int:
    return k + 1 if k % 2 == 0 else k


def _layer(region: np.ndarray, size: tuple[int, int], centre_x: int, top: int, shape: tuple[int, int],
           blur: int) -> np.ndarray:
    """``region`` resized to ``size`` (w, h), placed centred on ``centre_x`` from row ``top``, blurred."""
    import cv2

    lw, lh = size
    canvas = np.zeros(shape, dtype=np.float32)
    if lw <= 0 or lh <= 0:
        return canvas
    flat = cv2.resize(region, (lw, lh), interpolation=cv2.INTER_AREA)
    x0 = centre_x - lw // 2
    dx0, dy0 = max(0, x0), max(0, top)
    dx1, dy1 = min(shape[1], x0 + lw), min(shape[0], top + lh)
    if dx1 > dx0 and dy1 > dy0:
        canvas[dy0:dy1, dx0:dx1] = flat[dy0 - top:dy1 - top, dx0 - x0:dx1 - x0]
    return cv2.GaussianBlur(canvas, (blur, blur), 0)


def shadow_alpha(mask: np.ndarray, opacity: float, light: Light) -> np.ndarray:
    """The shadow's alpha (0..opacity) for one frame's person mask (float, 0..1)."""
    h, w = mask.shape
    person = mask > 0.5
    rows, cols = np.flatnonzero(person.any(axis=1)), np.flatnonzero(person.any(axis=0))
    if not len(rows):
        return np.zeros((h, w), dtype=np.float32)
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    ph, pw = int(y1 - y0), int(x1 - x0)
    if ph < MIN_PERSON or pw < MIN_PERSON:
        return np.zeros((h, w), dtype=np.float32)
    region = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.float32)
    centre = (int(x0) + int(x1)) // 2 + int(pw * light.lean)
    blur = _odd(max(51, min(151, w // 8)))
    total = np.zeros((h, w), dtype=np.float32)
    for spec, k in ((CONTACT, _odd(max(11, blur // 3))), (AMBIENT, blur)):
        floor = 3 if spec is CONTACT else 5
        size = (int(pw * spec["width"]), max(floor, int(ph * spec["height"])))
        top = int(y1) + int(h * spec["drop"])
        total += _layer(region, size, centre, top, (h, w), k) * (opacity * spec["weight"])
    return np.clip(total, 0.0, opacity) * (1.0 - mask.astype(np.float32))


def composite(frame: np.ndarray, alpha: np.ndarray, tint: tuple[int, int, int]) -> np.ndarray:
    a = alpha[..., None]
    out = frame.astype(np.float32) * (1.0 - a) + np.asarray(tint, dtype=np.float32) * a
    return np.clip(out, 0, 255).astype(np.uint8)


class FloorShadow:
    """Shadows the frames of one clip, in order (the light is read from the first person seen)."""

    def __init__(self, opacity: float = 0.45):
        import mediapipe as mp

        self.opacity = opacity
        self.light: Light | None = None
        self.shaded = 0
        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        result = self._seg.process(np.ascontiguousarray(frame))
        mask = getattr(result, "segmentation_mask", None)
        if mask is None:
            return frame
        mask = np.clip(mask.astype(np.float32), 0.0, 1.0)
        if self.light is None:
            self.light = read_light(frame, mask)
        alpha = shadow_alpha(mask, self.opacity, self.light)
        if not alpha.any():
            return frame
        self.shaded += 1
        return composite(frame, alpha, self.light.tint)

    def close(self) -> None:
        self._seg.close()
