"""Rendering the four conditioning videos of Wan2.2-Animate from per-frame detections.

* pose: the 20-point body skeleton (limbs as filled ellipses at 60 % of their colour, joints
  as discs in full colour) and both hands (lines in a hue wheel, blue joints) on black, at
  the generation size. Body and hand points are drawn when their score is >= 0.5.
  Stick width ``max(min(H, W) // 200 - 1, 1)``; hands ``max(that // 2, 1)``.
* face: the face box of :func:`~cinesynth_batch.preprocess.keypoints.face_box` (scale 1.3)
  cropped from the frame and resized to ``face_size`` square (512 for Wan2.2-Animate).
* mask: the person mask dilated by a 7x7 square three times, then grid-filled (1x1: its
  bounding rectangle); person = 255 (white = region to generate), elsewhere 0.
* background: the frame with the mask region set to 0 (black).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .imageops import dilate, grid_fill
from .keypoints import FACE, LEFT_HAND, RIGHT_HAND, Detection, body20, face_box

POSE_THRESHOLD = 0.5

# Limbs between body20 points (0-based): shoulders, right arm, left arm, right leg, left leg,
# neck-nose, nose-eyes-ears, ankles-toes.
LIMBS = [
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7),
    (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
    (13, 18), (10, 19),
]

# RGB; limb i uses COLORS[i] (scaled by 0.6), point i uses COLORS[i].
COLORS = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
    (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
    (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
    (255, 0, 255), (255, 0, 170), (255, 0, 85), (200, 200, 0), (100, 100, 0),
]

HAND_EDGES = [
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8),
    (0, 9), (9, 10), (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16),
    (0, 17), (17, 18), (18, 19), (19, 20),
]
HAND_EDGE_COLORS = [
    tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
    for i in range(len(HAND_EDGES))
]
HAND_POINT_COLOR = (0, 0, 255)


def stick_width(width: int, height: int) -> int:
    return max(int(min(height, width) / 200) - 1, 1)


def hand_stick_width(width: int, height: int) -> int:
    return max(stick_width(width, height) // 2, 1)


def ellipse_polygon(cx: int, cy: int, half_len: int, half_width: int, angle_deg: int) -> list[tuple[int, int]]:
    """Vertices of a rotated ellipse, one per degree."""
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    pts = []
    for d in range(0, 361):
        t = math.radians(d)
        x = half_len * math.cos(t)
        y = half_width * math.sin(t)
        pts.append((int(round(cx + x * ca - y * sa)), int(round(cy + x * sa + y * ca))))
    return pts


def _disc(draw: ImageDraw.ImageDraw, x: float, y: float, r: int, color) -> None:
    xi, yi = int(x), int(y)
    draw.ellipse([xi - r, yi - r, xi + r, yi + r], fill=tuple(color))


def draw_pose(canvas: np.ndarray, keypoints: np.ndarray, threshold: float = POSE_THRESHOLD,
              draw_hands: bool = True) -> np.ndarray:
    """Draw the skeleton of (133, 3) whole-body ``keypoints`` onto ``canvas`` (H, W, 3 uint8)."""
    h, w = canvas.shape[:2]
    img = Image.fromarray(np.ascontiguousarray(canvas))
    draw = ImageDraw.Draw(img)
    sw = stick_width(w, h)
    body = body20(keypoints)
    for (i, j), color in zip(LIMBS, COLORS):
        p, q = body[i], body[j]
        if p[2] < threshold or q[2] < threshold:
            continue
        length = math.hypot(p[0] - q[0], p[1] - q[1])
        angle = math.degrees(math.atan2(p[1] - q[1], p[0] - q[0]))
        cx, cy = (p[0] + q[0]) / 2.0, (p[1] + q[1]) / 2.0
        poly = ellipse_polygon(int(cx), int(cy), int(length / 2), sw, int(angle))
        draw.polygon(poly, fill=tuple(int(c * 0.6) for c in color))
    for point, color in zip(body, COLORS):
        if point[2] < threshold:
            continue
        _disc(draw, point[0], point[1], sw, color)
    if draw_hands:
        hw = hand_stick_width(w, h)
        for part in (LEFT_HAND, RIGHT_HAND):
            _draw_hand(draw, np.asarray(keypoints)[part], hw, threshold)
    return np.asarray(img, dtype=np.uint8)


def _draw_hand(draw: ImageDraw.ImageDraw, hand: np.ndarray, width: int, threshold: float) -> None:
    eps = 0.01
    for (i, j), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
        p, q = hand[i], hand[j]
        if p[2] < threshold or q[2] < threshold:
            continue
        x1, y1, x2, y2 = int(p[0]), int(p[1]), int(q[0]), int(q[1])
        if min(x1, y1, x2, y2) > eps:
            draw.line([(x1, y1), (x2, y2)], fill=color, width=width)
    for p in hand:
        if p[2] < threshold:
            continue
        if int(p[0]) > eps and int(p[1]) > eps:
            _disc(draw, p[0], p[1], width, HAND_POINT_COLOR)


def pose_frames(dets: Sequence[Detection], width: int, height: int, draw_hands: bool = True) -> np.ndarray:
    out = np.zeros((len(dets), height, width, 3), dtype=np.uint8)
    for t, d in enumerate(dets):
        out[t] = draw_pose(out[t], d.keypoints, draw_hands=draw_hands)
    return out


def face_boxes(dets: Sequence[Detection], width: int, height: int, scale: float = 1.3) -> list[tuple[int, int, int, int] | None]:
    return [face_box(d.keypoints[FACE, :2], width, height, scale) if has_face_points(d) else None for d in dets]


def has_face_points(det: Detection) -> bool:
    return bool(det.keypoints[FACE, 2].max() > 0)


def face_frames(frames: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], size: int = 512) -> np.ndarray:
    """Crop each frame to its face box and resize to ``size x size``."""
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for t, (frame, box) in enumerate(zip(frames, boxes)):
        x0, y0, x1, y1 = box
        crop = Image.fromarray(np.ascontiguousarray(frame[y0:y1, x0:x1]))
        out[t] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out


def replace_mask(mask: np.ndarray, k: int = 7, iterations: int = 3, w_len: int = 1, h_len: int = 1) -> np.ndarray:
    """The region to regenerate: dilated person mask, grid-filled."""
    m = dilate(mask, k, iterations) if iterations > 0 else np.asarray(mask, dtype=bool)
    return grid_fill(m, w_len, h_len)


def mask_frames(masks: Sequence[np.ndarray]) -> np.ndarray:
    """bool (H, W) masks -> uint8 (T, H, W, 3), 255 inside."""
    m = np.stack([np.asarray(x, dtype=bool) for x in masks])
    return np.repeat((m.astype(np.uint8) * 255)[..., None], 3, axis=-1)


def background_frames(frames: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """The frames with the regenerated region blanked to black."""
    out = np.array(frames, dtype=np.uint8, copy=True)
    for t, m in enumerate(masks):
        out[t][np.asarray(m, dtype=bool)] = 0
    return out
