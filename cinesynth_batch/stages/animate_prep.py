"""Preprocess a reference (driving) video for Wan2.2-Animate: one conditioning video per run.

params:

* ``output``: ``pose`` | ``face`` | ``mask`` | ``background`` (animate mode needs pose and
  face; replace mode also mask and background);
* ``fps`` (16), ``max_frames`` (601): the reference is sampled at ``fps``; the video has
  :func:`~cinesynth_batch.preprocess.frames.animate_frame_count` frames;
* ``width``, ``height``: the generation size (even); the reference is resized to cover it and
  centre-cropped. The face video is ``face_size`` square instead (512);
* ``backend``: ``mediapipe`` (default, models in the mediapipe wheel) or ``onnx`` (the official
  YOLO + ViTPose-H whole-body models: ``detector`` and ``pose_model`` are their paths);
* optional: ``min_detected`` (0.5: the fraction of frames that must show a person),
  ``face_size`` (512), ``mask_dilate`` (7: square kernel side), ``mask_iterations`` (3),
  ``mask_grid`` ([1, 1]: cells across and down; 1x1 makes the mask a rectangle), ``hands``
  (true: draw hands), ``mask_model`` (``pose`` | ``selfie``, mediapipe only).

inputs: ``{"video": Path}``. Writes one H.264 mp4 at ``fps``.

Detection runs on the same crop of the reference at a shorter side of at least 512 px (the
generation size may be tiny); keypoints and masks are scaled to ``width x height``, and the
face is cropped from those larger frames.

A video with no person, or with a person in fewer than ``min_detected`` of its frames, is an
error. Frames without a detection reuse the nearest frame's detection; the returned dict says
which (``filled_frames``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cinesynth_batch.spec.params import AnimatePrepParams, check
from cinesynth_batch.stages.base import StageContext, StageError

KIND = "animate_prep"
OUTPUT_EXT = ".mp4"
MODEL_ROLE = None

DETECT_MIN_SIDE = 512


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``; unset ones at their defaults); returns the values the
    run uses."""
    return check(AnimatePrepParams, params, KIND).model_dump()


def _resize(frame, width: int, height: int):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict:
    import numpy as np

    from cinesynth_batch.media.video_io import write_video
    from cinesynth_batch.preprocess import draw
    from cinesynth_batch.preprocess.detect import (
        DetectionCache, backend_key, file_identity, fill_faces, make_backend, require_person,
    )
    from cinesynth_batch.preprocess.frames import animate_frame_count, read_reference, video_duration
    from cinesynth_batch.preprocess.keypoints import FACE, face_box, resize_mask, scale_detection

    p = check_params(params)
    output, fps, max_frames, backend_name = p["output"], p["fps"], p["max_frames"], p["backend"]
    width, height, face_size = p["width"], p["height"], p["face_size"]
    k, iterations, grid, min_detected = p["mask_dilate"], p["mask_iterations"], p["mask_grid"], p["min_detected"]

    src = inputs.get("video")
    if src is None:
        raise StageError("animate_prep: no 'video' input", hint="give the node the reference video")
    src = Path(src)
    name = src.name

    try:
        duration = video_duration(src)
    except Exception as exc:  # PyAV raises its own error types
        raise StageError(f"animate_prep: cannot read video {src}: {exc}") from exc
    frames_n = animate_frame_count(duration, fps, max_frames)

    # Detection sees the same crop of the reference at a shorter side of at least
    # DETECT_MIN_SIDE px, whatever the generation size; results are scaled to width x height.
    scale = max(1.0, DETECT_MIN_SIDE / min(width, height))
    det_w, det_h = int(round(width * scale)), int(round(height * scale))
    try:
        det_frames = read_reference(src, fps, frames_n, det_w, det_h)
    except Exception as exc:
        raise StageError(f"animate_prep: cannot decode video {src}: {exc}") from exc
    if (det_w, det_h) == (width, height):
        frames = det_frames
    else:
        frames = np.stack([_resize(f, width, height) for f in det_frames])

    key = (file_identity(src), fps, frames_n, det_w, det_h, backend_key(backend_name, params, ctx.device))
    cache = ctx.memo.setdefault("animate_prep.detections", DetectionCache())
    dets = cache.get(key)
    if dets is None:
        try:
            backend = make_backend(
                backend_name, pose_model=params.get("pose_model"), detector=params.get("detector"),
                device=ctx.device, hands=bool(params.get("hands", True)),
                mask_model=str(params.get("mask_model", "pose")))
        except FileNotFoundError as exc:
            expected = getattr(exc, "expected", "")
            raise StageError(
                f"animate_prep: {exc}",
                hint=(f"get {expected} from Hugging Face Wan-AI/Wan2.2-Animate-14B "
                      f"(process_checkpoint/{expected}) and set detector/pose_model to its path"),
            ) from exc
        except (ImportError, ValueError) as exc:
            raise StageError(f"animate_prep: backend {backend_name}: {exc}") from exc
        try:
            dets = backend.detect(det_frames, progress=ctx.progress)
        except ImportError as exc:
            raise StageError(f"animate_prep: backend {backend_name}: {exc}",
                             hint="pip install mediapipe==0.10.14 (or onnxruntime for the onnx backend)") from exc
        cache.put(key, dets)

    try:
        dets, report = require_person(dets, name, float(min_detected))
    except ValueError as exc:
        raise StageError(str(exc), hint="use a reference video in which one person is clearly visible") from exc

    info: dict[str, Any] = {
        "output": output,
        "frames": frames_n,
        "width": width,
        "height": height,
        "fps": fps,
        "duration": round(float(duration), 4),
        "backend": backend_name,
        "detected": round(report.fraction, 4),
        "filled": len(report.filled),
        "filled_frames": report.filled,
    }

    if output == "face":
        # boxes and crops at the detection size: more pixels for the 512 px face
        boxes = [face_box(d.keypoints[FACE, :2], det_w, det_h) if draw.has_face_points(d) else None
                 for d in dets]
        valid = [b is not None for b in boxes]
        if not any(valid):
            raise StageError(f"no face found in 0 of {frames_n} frames of {name}: "
                             "the face video needs the person's face visible",
                             hint="use a reference video in which the face is visible")
        from_model = sum(1 for d, v in zip(dets, valid) if v and d.face and d.filled_from is None)
        dets, face_filled = fill_faces(dets, valid)
        boxes = [face_box(d.keypoints[FACE, :2], det_w, det_h) for d in dets]
        video = draw.face_frames(det_frames, boxes, face_size)
        info.update(width=face_size, height=face_size, face_detected=round(from_model / frames_n, 4),
                    face_filled=len(face_filled), face_filled_frames=face_filled)
    elif output == "pose":
        dets = [scale_detection(d, width / det_w, height / det_h, (height, width)) for d in dets]
        video = draw.pose_frames(dets, width, height, draw_hands=bool(params.get("hands", True)))
    else:
        # dilation and grid at the detection size (as the official code works at ~720p),
        # then down to width x height
        masks = []
        for d in dets:
            m = d.mask
            if m is None or not m.any():
                m = np.zeros((det_h, det_w), dtype=bool)
                if d.box is not None:
                    x0, y0, x1, y1 = (int(round(v)) for v in d.box)
                    m[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = True
            m = draw.replace_mask(m, k, iterations, int(grid[0]), int(grid[1]))
            masks.append(resize_mask(m, height, width))
        if output == "mask":
            video = draw.mask_frames(masks)
        else:
            video = draw.background_frames(frames, masks)
        info["mask_coverage"] = round(float(sum(m.mean() for m in masks) / len(masks)), 4)

    try:
        write_video(video, out, fps=fps)
    except (RuntimeError, ValueError) as exc:
        raise StageError(f"animate_prep: writing {output} video failed: {exc}") from exc
    return info
