"""Detection with MediaPipe 0.10.14 (its wheel ships every model used here; runs offline).

Per frame (Pose and Hands in video, i.e. tracking, mode; FaceMesh on each frame on its own):

* body: ``Pose(model_complexity=1)`` (33 landmarks) mapped onto COCO-WholeBody body and
  feet points, the landmark visibility as score; its segmentation mask is the person mask;
* hands: ``Hands`` (21 landmarks each, same order as the whole-body hands), each hand given
  to the body wrist it is nearest to, the hand's detection score as point score;
* face: ``FaceMesh`` (468 points) mapped onto the 68 iBUG points, run on a square crop around
  the head that the body landmarks give, resized to 256 px (small faces are seen at a size
  the mesh handles); failing that on the whole frame; failing that, the face extent is
  estimated from the body's head landmarks (``Detection.face`` is then False).

``import mediapipe`` happens on first use (it loads OpenCV, not torch).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from .keypoints import (
    FACE,
    L_WRIST,
    LEFT_HAND,
    R_WRIST,
    RIGHT_HAND,
    Detection,
    empty_keypoints,
    keypoint_box,
)

# COCO-17 and feet (whole-body 0-22) <- MediaPipe Pose landmark index. MediaPipe has no small
# toe: its foot index point serves for both toes.
POSE_TO_WHOLEBODY = [
    0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28,
    31, 31, 29, 32, 32, 30,
]

# The 68 iBUG points (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67) <- FaceMesh
# vertex index (subject's right side first, as the 68-point scheme does).
MESH_TO_IBUG68 = [
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 197, 5, 4, 98, 97, 2, 326, 327,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    78, 81, 13, 311, 308, 402, 14, 178,
]

# MediaPipe Pose head landmarks: nose, eyes (inner, centre, outer), ears, mouth corners.
_HEAD = list(range(0, 11))
_VIS = 0.5


def _import_mediapipe():
    import mediapipe as mp

    return mp


def available() -> bool:
    try:
        _import_mediapipe()
    except ImportError:
        return False
    return True


class MediaPipeBackend:
    """``detect(frames)`` -> one :class:`Detection` per frame."""

    name = "mediapipe"

    def __init__(self, hands: bool = True, face: bool = True, mask: bool = True,
                 mask_model: str = "pose", min_detection_confidence: float = 0.5):
        if mask_model not in ("pose", "selfie"):
            raise ValueError(f"mask_model must be 'pose' or 'selfie', got {mask_model!r}")
        self.hands = hands
        self.face = face
        self.mask = mask
        self.mask_model = mask_model
        self.min_conf = min_detection_confidence

    def detect(self, frames: np.ndarray, progress: Callable[[int, int], None] | None = None) -> list[Detection]:
        try:
            mp = _import_mediapipe()
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("mediapipe is not installed (pip install mediapipe==0.10.14)") from exc
        sol = mp.solutions
        frames = np.asarray(frames, dtype=np.uint8)
        total = len(frames)
        dets: list[Detection] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protobuf deprecation chatter on every call
            pose = sol.pose.Pose(static_image_mode=False, model_complexity=1, smooth_landmarks=True,
                                 enable_segmentation=self.mask and self.mask_model == "pose",
                                 smooth_segmentation=True, min_detection_confidence=self.min_conf,
                                 min_tracking_confidence=0.5)
            hands = sol.hands.Hands(static_image_mode=False, max_num_hands=2, model_complexity=1,
                                    min_detection_confidence=self.min_conf) if self.hands else None
            mesh = sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                          min_detection_confidence=self.min_conf) if self.face else None
            crop_mesh = sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                               min_detection_confidence=self.min_conf) if self.face else None
            selfie = (sol.selfie_segmentation.SelfieSegmentation(model_selection=0)
                      if self.mask and self.mask_model == "selfie" else None)
            try:
                for t, frame in enumerate(frames):
                    frame = np.ascontiguousarray(frame)
                    dets.append(self._one(frame, pose, hands, mesh, crop_mesh, selfie))
                    if progress is not None:
                        progress(t + 1, total)
            finally:
                for g in (pose, hands, mesh, crop_mesh, selfie):
                    if g is not None:
                        g.close()
        return dets

    def _one(self, frame, pose, hands, mesh, crop_mesh, selfie) -> Detection:
        h, w = frame.shape[:2]
        kp = empty_keypoints()
        res = pose.process(frame)
        if res.pose_landmarks is None:
            return Detection(person=False, keypoints=kp)
        lm = _landmarks(res.pose_landmarks.landmark, w, h, with_visibility=True)
        kp[:23] = lm[POSE_TO_WHOLEBODY]
        mask = None
        if self.mask:
            if selfie is not None:
                seg = selfie.process(frame).segmentation_mask
            else:
                seg = res.segmentation_mask
            if seg is not None:
                mask = np.asarray(seg) > 0.5
        if hands is not None:
            self._hands(frame, hands, kp)
        face = False
        if mesh is not None:
            face = self._face(frame, mesh, crop_mesh, lm, kp)
        box = keypoint_box(kp[:23], min_score=_VIS)
        if mask is not None and mask.any():
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        return Detection(person=True, keypoints=kp, box=box, mask=mask, face=face)

    @staticmethod
    def _hands(frame, hands, kp) -> None:
        h, w = frame.shape[:2]
        res = hands.process(frame)
        if not res.multi_hand_landmarks:
            return
        parts = {"left": LEFT_HAND, "right": RIGHT_HAND}
        wrists = {"left": kp[L_WRIST], "right": kp[R_WRIST]}
        found: dict[str, tuple[float, np.ndarray]] = {}
        for i, hand in enumerate(res.multi_hand_landmarks):
            score = 1.0
            if res.multi_handedness and i < len(res.multi_handedness):
                score = float(res.multi_handedness[i].classification[0].score)
            pts = _landmarks(hand.landmark, w, h, with_visibility=False)
            pts[:, 2] = score
            best = None
            for part, wrist in wrists.items():
                if wrist[2] < 0.1:
                    continue
                dist = float(np.hypot(*(pts[0, :2] - wrist[:2])))
                if best is None or dist < best[0]:
                    best = (dist, part)
            if best is None:
                continue
            dist, part = best
            if part not in found or dist < found[part][0]:
                found[part] = (dist, pts)
        for part, (_, pts) in found.items():
            kp[parts[part]] = pts

    @staticmethod
    def _face(frame, mesh, crop_mesh, pose_lm, kp) -> bool:
        h, w = frame.shape[:2]
        pts = _mesh_on_head_crop(frame, crop_mesh, pose_lm)
        if pts is None:
            res = mesh.process(frame)
            if res.multi_face_landmarks:
                pts = _landmarks(res.multi_face_landmarks[0].landmark, w, h, with_visibility=False)
        if pts is not None:
            kp[FACE, :2] = pts[MESH_TO_IBUG68, :2]
            kp[FACE, 2] = 1.0
            return True
        est = head_face_extent(pose_lm)
        if est is not None:
            kp[FACE, :2] = _box_outline(*est, FACE.stop - FACE.start)
            kp[FACE, 2] = 0.5
        return False


CROP_SIZE = 256


def _mesh_on_head_crop(frame: np.ndarray, crop_mesh, pose_lm: np.ndarray) -> np.ndarray | None:
    """FaceMesh on a square crop around the head (three times the span of the body's head
    landmarks) resized to 256 px, so that small faces are seen at a size the mesh handles;
    the 468 points in frame pixels, or None."""
    from PIL import Image

    head = pose_lm[_HEAD]
    good = head[head[:, 2] >= _VIS]
    if len(good) < 2:
        return None
    cx, cy = good[:, :2].mean(axis=0)
    span = float(max(np.ptp(good[:, 0]), np.ptp(good[:, 1]), 4.0))
    side = int(round(span * 3.0))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    crop = _padded_crop(frame, x0, y0, side)
    if crop is None:
        return None
    img = np.asarray(Image.fromarray(crop).resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BICUBIC))
    res = crop_mesh.process(np.ascontiguousarray(img))
    if not res.multi_face_landmarks:
        return None
    pts = _landmarks(res.multi_face_landmarks[0].landmark, CROP_SIZE, CROP_SIZE, with_visibility=False)
    pts[:, 0] = x0 + pts[:, 0] * side / CROP_SIZE
    pts[:, 1] = y0 + pts[:, 1] * side / CROP_SIZE
    return pts


def head_face_extent(pose_lm: np.ndarray) -> tuple[float, float, float, float] | None:
    """Estimate the 68-point face extent from MediaPipe Pose head landmarks (pixels): as wide
    as the ears (or 2.2x the eye-to-mouth height, in profile), from a little above the eyes
    to below the chin."""
    eyes = pose_lm[[2, 5]]
    mouth = pose_lm[[9, 10]]
    head = pose_lm[_HEAD]
    good = head[head[:, 2] >= _VIS]
    if len(good) < 3 or eyes[:, 2].max() < _VIS or mouth[:, 2].max() < _VIS:
        return None
    eye_y = float(eyes[eyes[:, 2] >= _VIS, 1].mean())
    mouth_y = float(mouth[mouth[:, 2] >= _VIS, 1].mean())
    v = max(mouth_y - eye_y, 1.0)
    width = max(float(np.ptp(good[:, 0])), 2.2 * v)
    cx = float(good[:, 0].mean())
    y0 = eye_y - 0.3 * width
    return cx - width / 2, y0, cx + width / 2, y0 + 1.15 * width


def _box_outline(x0, y0, x1, y1, n) -> np.ndarray:
    """``n`` points whose extent is the box (alternating corners)."""
    pts = np.empty((n, 2), dtype=np.float32)
    pts[0::2] = (x0, y0)
    pts[1::2] = (x1, y1)
    return pts


def _padded_crop(frame: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray | None:
    if side < 8:
        return None
    h, w = frame.shape[:2]
    out = np.zeros((side, side, 3), dtype=np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    if sx1 <= sx0 or sy1 <= sy0:
        return None
    out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return out


def _landmarks(landmarks, w: int, h: int, with_visibility: bool) -> np.ndarray:
    return np.array([(p.x * w, p.y * h, p.visibility if with_visibility else 1.0) for p in landmarks],
                    dtype=np.float32)

