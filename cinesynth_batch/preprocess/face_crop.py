"""The head of a photo, cropped as the seed's ``crop_face_head`` does (WanAvatar ``server.py``
S:3143, the crop the Face Swap and Avatar Prepare workflows give the BFS head-swap LoRA).

1. A face is looked for with MediaPipe's BlazeFace short-range detector (Tasks ``FaceDetector``,
   ``min_detection_confidence`` 0.4) on the whole image, then on its top half, then on its top
   third (rows ``[0, h // 2)`` and ``[0, h // 3)``: the box keeps the full image's coordinates).
   The first detection of the first attempt that finds one is used; none at all: no crop.
2. A face that covers more than 15 % of the image (``fw · fh / (w · h)``) is already a head shot:
   no crop.
3. Otherwise the crop is a box around the face centre ``(fx + fw // 2, fy + fh // 2)`` with
   ``half = int(max(fw, fh) · 2.5 / 2)``: ``half`` to the left and right, ``int(half · 1.0)``
   above and ``int(half · 1.5)`` below, clipped to the image.

The detector's model is the BlazeFace short-range file the ``mediapipe`` wheel ships
(``modules/face_detection/face_detection_short_range.tflite``), run through the same Tasks API
the seed calls with its ``blaze_face_short_range.tflite``. ``import mediapipe`` happens on first
use (it loads OpenCV, not torch); the planner reads ``detector_identity`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

MODEL_FILE = "modules/face_detection/face_detection_short_range.tflite"
STRATEGIES = ("original", "upper_half", "upper_third")


@dataclass(frozen=True)
class Rule:
    """The numbers of ``crop_face_head`` (its defaults are the seed's)."""

    confidence: float = 0.4
    max_face_area: float = 0.15
    padding: float = 2.5
    above: float = 1.0
    below: float = 1.5


@dataclass(frozen=True)
class Face:
    """One detection, in pixels of the full image."""

    x: int
    y: int
    width: int
    height: int
    score: float
    strategy: str


def detector_identity() -> str:
    """What decides the detections: the mediapipe release whose wheel holds the model file
    (part of a ``face_crop`` stage's key). Reads no module: ``plan`` stays light."""
    try:
        return f"mediapipe-{version('mediapipe')}:face_detection_short_range"
    except PackageNotFoundError:
        return "mediapipe-missing:face_detection_short_range"


def model_path() -> Path:
    spec = find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mediapipe is not installed (pip install mediapipe==0.10.14)")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the mediapipe wheel has no {MODEL_FILE} (use mediapipe==0.10.14)")
    return path


def crop_box(width: int, height: int, face: Face | None, rule: Rule = Rule()) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)`` of the head crop of a ``width`` x ``height`` image, or None when the
    image is used as it is (no face, or a face over ``max_face_area`` of it)."""
    if face is None:
        return None
    if (face.width * face.height) / (width * height) > rule.max_face_area:
        return None
    cx, cy = face.x + face.width // 2, face.y + face.height // 2
    half = int(max(face.width, face.height) * rule.padding / 2)
    box = (max(0, cx - half), max(0, cy - int(half * rule.above)),
           min(width, cx + half), min(height, cy + int(half * rule.below)))
    return box if box[2] > box[0] and box[3] > box[1] else None   # a box off the image: no crop


class FaceFinder:
    """BlazeFace short range through MediaPipe Tasks, tried on the three regions in turn."""

    def __init__(self, confidence: float):
        import mediapipe as mp

        self._mp = mp
        options = mp.tasks.vision.FaceDetectorOptions(
            base_options=mp.tasks.BaseOptions(model_asset_path=str(model_path())),
            min_detection_confidence=confidence)
        self._detector = mp.tasks.vision.FaceDetector.create_from_options(options)

    def find(self, rgb: Any) -> Face | None:
        """The first face of the first region that shows one, in ``rgb`` (H x W x 3 uint8)."""
        import numpy as np

        h = rgb.shape[0]
        for strategy, rows in zip(STRATEGIES, (h, h // 2, h // 3)):
            if rows < 1:
                continue
            region = np.ascontiguousarray(rgb[:rows])
            result = self._detector.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=region))
            if result.detections:
                det = result.detections[0]
                box = det.bounding_box
                return Face(int(box.origin_x), int(box.origin_y), int(box.width), int(box.height),
                            float(det.categories[0].score), strategy)
        return None

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> "FaceFinder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
