"""Preprocessing of a reference video for Wan2.2-Animate: pose, face, mask and background videos.

* :mod:`.frames`: the frame-count rule and sampling/fitting the reference video;
* :mod:`.keypoints`: the per-frame :class:`~.keypoints.Detection` (COCO-WholeBody keypoints,
  person box and mask), gap filling and the face box;
* :mod:`.mediapipe_backend` (default, offline) and :mod:`.onnx_backend` (the official YOLO +
  ViTPose whole-body models): ``detect(frames) -> list[Detection]``;
* :mod:`.detect`: backend choice, one detection run per video, the person checks;
* :mod:`.draw`: rendering the four videos.

Nothing here imports torch; mediapipe and onnxruntime are imported only by their backends.
"""

from .frames import animate_frame_count, fit_cover, read_reference, video_duration

__all__ = ["animate_frame_count", "fit_cover", "read_reference", "video_duration"]
