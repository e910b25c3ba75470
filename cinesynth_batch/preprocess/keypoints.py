"""The per-frame detection record shared by the backends, and what is derived from it.

Keypoints use the COCO-WholeBody layout of 133 points, ``(x, y, score)`` in pixels of the
processed frame (score 0 where a point is unknown):

* 0-16 body (COCO-17: nose, left/right eye, left/right ear, shoulders, elbows, wrists, hips,
  knees, ankles; left before right),
* 17-22 feet (left big toe, left small toe, left heel, right big toe, right small toe,
  right heel),
* 23-90 face (68 points, iBUG-300W order),
* 91-111 left hand, 112-132 right hand (21 points each: wrist, then thumb, index, middle,
  ring, little finger from base to tip).

The pose drawing of Wan2.2-Animate uses a 20-point body derived from these (OpenPose-18 order
plus the two toes): see :func:`body20`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

NUM_KEYPOINTS = 133
BODY = slice(0, 17)
FEET = slice(17, 23)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)

# COCO-17 indices.
NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 11, 12, 13, 14, 15, 16

# The 20-point body of the pose drawing: each point is the mean of two whole-body points
# (the same point twice where there is a direct counterpart). Order: nose, neck, right
# shoulder, right elbow, right wrist, left shoulder, left elbow, left wrist, right hip, right
# knee, right ankle, left hip, left knee, left ankle, right eye, left eye, right ear, left ear,
# left toe, right toe.
BODY20_A = np.array([0, 6, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, 17, 20])
BODY20_B = np.array([0, 5, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, 18, 21])

# A person counts as found when at least this many of the 17 body points score this much.
MIN_BODY_POINTS = 4
MIN_BODY_SCORE = 0.3


@dataclass
class Detection:
    """What a backend found in one frame.

    ``person``: a person was found. ``keypoints``: (133, 3) as above. ``box``: person box
    ``(x0, y0, x1, y1)`` in pixels. ``mask``: (H, W) bool person mask, when asked for.
    ``face``: the face points come from a face model (not estimated from the body).
    ``filled_from``: index of the frame whose detection this one reuses, if any.
    """

    person: bool
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((NUM_KEYPOINTS, 3), np.float32))
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    face: bool = False
    filled_from: int | None = None


def empty_keypoints() -> np.ndarray:
    return np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)


def body20(keypoints: np.ndarray) -> np.ndarray:
    """(20, 3) body of the pose drawing from (133, 3) whole-body keypoints (scores averaged)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    return (kp[BODY20_A] + kp[BODY20_B]) / 2.0


def has_body(keypoints: np.ndarray, min_points: int = MIN_BODY_POINTS, min_score: float = MIN_BODY_SCORE) -> bool:
    return int((np.asarray(keypoints)[BODY, 2] >= min_score).sum()) >= min_points


def keypoint_box(keypoints: np.ndarray, min_score: float = MIN_BODY_SCORE) -> tuple[float, float, float, float] | None:
    """Bounding box of the confident keypoints, or None."""
    kp = np.asarray(keypoints)
    good = kp[kp[:, 2] >= min_score, :2]
    if len(good) == 0:
        return None
    x0, y0 = good.min(axis=0)
    x1, y1 = good.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def fill_missing(dets: list[Detection], attr: str = "person") -> tuple[list[Detection], list[int]]:
    """Give each frame where ``attr`` is false the detection of the nearest frame where it is
    true (the earlier one on a tie). Returns the new list and the indices that were filled."""
    good = np.array([i for i, d in enumerate(dets) if getattr(d, attr)])
    if len(good) == 0:
        return list(dets), []
    out: list[Detection] = []
    filled: list[int] = []
    for i, d in enumerate(dets):
        if getattr(d, attr):
            out.append(d)
            continue
        j = int(good[np.argmin(np.abs(good - i))])
        src = dets[j]
        out.append(replace(src, filled_from=j))
        filled.append(i)
    return out, filled


def face_box(face_points: np.ndarray, width: int, height: int, scale: float = 1.3) -> tuple[int, int, int, int] | None:
    """The face crop box ``(x0, y0, x1, y1)`` of Wan2.2-Animate's preprocessing.

    From the extent of the face points, the area is grown by ``scale`` keeping the aspect
    ratio; the width grows equally on both sides, the height grows three parts upwards (the
    forehead, which the 68 points do not reach) and one part downwards. Clipped to the frame.
    Returns None when the points span no area.
    """
    pts = np.asarray(face_points, dtype=np.float64)[:, :2]
    x_min, y_min = pts.min(axis=0)
    x_max, y_max = pts.max(axis=0)
    w0, h0 = x_max - x_min, y_max - y_min
    if w0 <= 0 or h0 <= 0:
        return None
    area = w0 * h0 * scale
    new_w = np.sqrt(area * w0 / h0)
    new_h = np.sqrt(area * h0 / w0)
    dw = (new_w - w0) / 2.0
    dh = (new_h - h0) / 4.0
    x0 = int(max(x_min - dw, 0))
    x1 = int(min(x_max + dw, width))
    y0 = int(max(y_min - 3 * dh, 0))
    y1 = int(min(y_max + dh, height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


def scale_detection(det: Detection, sx: float, sy: float, out_hw: tuple[int, int]) -> Detection:
    """The detection in a frame scaled by ``sx, sy`` (keypoints, box; the mask resized to
    ``out_hw`` by area and thresholded at one half)."""
    kp = det.keypoints.copy()
    kp[:, 0] *= sx
    kp[:, 1] *= sy
    box = None
    if det.box is not None:
        x0, y0, x1, y1 = det.box
        box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    mask = None if det.mask is None else resize_mask(det.mask, *out_hw)
    return replace(det, keypoints=kp, box=box, mask=mask)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A bool mask resized by area, thresholded at one half."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (height, width):
        return mask
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((width, height), Image.Resampling.BOX)) >= 128
