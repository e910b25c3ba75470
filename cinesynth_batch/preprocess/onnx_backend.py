"""Detection with the official Wan2.2-Animate preprocessing models, run by onnxruntime.

The models come with ``Wan-AI/Wan2.2-Animate-14B`` (folder ``process_checkpoint/``):

* ``det/yolov10m.onnx``: a YOLO person detector. Input ``(1, 3, 640, 640)``: the frame
  resized (bilinear, aspect not kept) to 640x640, RGB, ``/255``. Output either
  ``(1, N, 6)`` rows ``x0, y0, x1, y1, score, class`` (YOLOv10, end-to-end) or
  ``(1, 84, N)`` (YOLOv8 layout: ``cx, cy, w, h`` and 80 class scores). Boxes are scaled
  back to the frame, suppressed (NMS, IoU 0.5, score >= 0.05) and the person (class 0) with
  the largest box is kept; a box whose longer side is under 0.4 of the longest person box
  seen is not chosen.
* ``pose2d/vitpose_h_wholebody.onnx``: ViTPose-H, 133 whole-body keypoints (COCO-WholeBody).
  Input ``(1, 3, 256, 192)``: the person box, centred, grown to the model's 3:4 aspect and
  by 1.25, cropped (zero padding outside the frame) and resized bilinearly; normalised with
  the ImageNet mean/std. The channels are fed in BGR order, as the official pipeline does
  (it converts its RGB frames with ``cvtColor(BGR2RGB)`` before this model; the detector
  gets RGB). Output: heatmaps ``(1, 133, 64, 48)``, decoded with DARK (distribution-aware:
  Gaussian modulation with an 11-tap kernel, log, second-order Taylor step at the argmax)
  and mapped back to frame pixels; the score is the heatmap maximum.

Without a detector the whole frame is the person box. There is no segmentation model here:
the person mask is the detector's box (with the default 1x1 grid the replace mask is a
rectangle anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .imageops import gaussian_blur_zero_pad, resize_bilinear
from .keypoints import Detection, has_body, keypoint_box

WEIGHTS_SOURCE = "Hugging Face Wan-AI/Wan2.2-Animate-14B, folder process_checkpoint/"
DETECTOR_FILE = "det/yolov10m.onnx"
POSE_FILE = "pose2d/vitpose_h_wholebody.onnx"

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
POSE_INPUT_BGR = True


class MissingWeights(FileNotFoundError):
    """A model file is not where the parameters say."""

    def __init__(self, what: str, path: Path, expected: str):
        self.what = what
        self.path = path
        self.expected = expected
        super().__init__(f"{what} not found: {path}")


def providers_for(device: str | None) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device and str(device).startswith("cuda") and "CUDAExecutionProvider" in available:
        index = str(device).split(":", 1)[1] if ":" in str(device) else "0"
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: Path, device: str | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers_for(device))


def _static_hw(shape, default: tuple[int, int]) -> tuple[int, int]:
    dims = list(shape)[2:4]
    if len(dims) == 2 and all(isinstance(d, int) and d > 0 for d in dims):
        return int(dims[0]), int(dims[1])
    return default


# ---------------------------------------------------------------- person detector (YOLO)


def yolo_preprocess(image: np.ndarray, size: tuple[int, int] = (640, 640)) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, h, w) in [0, 1]."""
    img = resize_bilinear(image, size[0], size[1]) / 255.0
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def nms(boxes_xywh: np.ndarray, scores: np.ndarray, score_thr: float, iou_thr: float) -> list[int]:
    """Greedy non-maximum suppression over ``(x, y, w, h)`` boxes; indices, best first."""
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_thr]
    keep: list[int] = []
    for i in order:
        x, y, w, h = boxes[i]
        ok = True
        for j in keep:
            xj, yj, wj, hj = boxes[j]
            iw = min(x + w, xj + wj) - max(x, xj)
            ih = min(y + h, yj + hj) - max(y, yj)
            inter = max(iw, 0) * max(ih, 0)
            union = w * h + wj * hj - inter
            if union > 0 and inter / union > iou_thr:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


def yolo_postprocess(output: np.ndarray, frame_hw: tuple[int, int], input_hw: tuple[int, int] = (640, 640),
                     conf: float = 0.05, iou: float = 0.5) -> np.ndarray:
    """Raw detector output -> rows ``x0, y0, x1, y1, score, class`` in frame pixels, after NMS."""
    out = np.squeeze(np.asarray(output, dtype=np.float64))
    if out.ndim == 1:
        out = out[None]
    if out.shape[0] == 84 and out.shape[-1] != 84:
        out = out.T  # YOLOv8 layout (84, N) -> (N, 84)
    fx = frame_hw[1] / input_hw[1]
    fy = frame_hw[0] / input_hw[0]
    if out.shape[-1] == 6:
        keep = out[:, 4] >= conf
        rows = out[keep]
        scores, classes = rows[:, 4], rows[:, 5]
        x0, y0 = rows[:, 0] * fx, rows[:, 1] * fy
        w, h = rows[:, 2] * fx - x0, rows[:, 3] * fy - y0
    else:
        cls_scores = out[:, 4:]
        best = cls_scores.max(axis=1)
        keep = best >= conf
        rows = out[keep]
        scores = best[keep]
        classes = cls_scores[keep].argmax(axis=1).astype(np.float64)
        cx, cy, bw, bh = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        x0, y0 = (cx - bw / 2) * fx, (cy - bh / 2) * fy
        w, h = bw * fx, bh * fy
    xywh = np.stack([x0, y0, w, h], axis=1).astype(np.int32)
    picked = nms(xywh, scores, conf, iou)
    res = [[xywh[i, 0], xywh[i, 1], xywh[i, 0] + xywh[i, 2], xywh[i, 1] + xywh[i, 3], scores[i], classes[i]]
           for i in picked]
    return np.array(res, dtype=np.float64).reshape(-1, 6)


def select_person(dets: np.ndarray, conf: float = 0.05, shape_ratio: float = 0.4) -> np.ndarray | None:
    """The largest person box ``x0, y0, x1, y1, score`` among detector rows, or None."""
    rows = [r for r in np.asarray(dets).reshape(-1, 6) if int(r[5]) == 0 and r[4] > conf]
    if not rows:
        return None
    longest = max(max(r[2] - r[0], r[3] - r[1]) for r in rows)
    best, best_area = None, -np.inf
    for r in rows:
        area = (r[2] - r[0]) * (r[3] - r[1])
        side = max(r[2] - r[0], r[3] - r[1])
        if area > best_area:
            if side < longest * shape_ratio:
                continue
            best, best_area, longest = r, area, side
    return None if best is None else np.asarray(best[:5], dtype=np.float64)


class YoloPersonDetector:
    def __init__(self, path: Path, device: str | None = None):
        self.session = _session(path, device)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_hw = (640, 640)

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        x = yolo_preprocess(frame, self.input_hw)[None]
        out = self.session.run(None, {self.input_name: x})[0]
        rows = yolo_postprocess(out[0] if out.ndim == 3 else out, frame.shape[:2], self.input_hw)
        return select_person(rows)


# ---------------------------------------------------------------- pose model (ViTPose)


def box_center_scale(box, input_hw: tuple[int, int] = (256, 192), rescale: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Centre and size (pixels, ``[w, h]``) of the model crop for a person box ``x0, y0, x1, y1``:
    grown to the input aspect and by ``rescale``."""
    ih, iw = input_hw
    aspect = ih / float(iw)
    x0, y0, x1, y1 = [float(v) for v in box[:4]]
    center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    size = max((x1 - x0) * aspect, y1 - y0)
    scale = np.array([size / aspect, size]) * rescale
    return center, scale


def _crop_transform(center, crop_h: float, input_hw) -> np.ndarray:
    ih, iw = input_hw
    h = crop_h
    w = h / (ih / float(iw))
    return np.array([
        [iw / w, 0.0, iw * (-center[0] / w + 0.5)],
        [0.0, ih / h, ih * (-center[1] / h + 0.5)],
        [0.0, 0.0, 1.0],
    ])


def _to_source(pt, center, crop_h, input_hw) -> np.ndarray:
    t = np.linalg.inv(_crop_transform(center, crop_h, input_hw))
    p = t @ np.array([pt[0] - 1.0, pt[1] - 1.0, 1.0])
    return np.round(p[:2]).astype(int) + 1


def crop_person(image: np.ndarray, center: np.ndarray, scale: np.ndarray, input_hw=(256, 192)) -> np.ndarray:
    """The model crop (float32, ``input_hw``) of ``image``: the box of ``scale`` pixels around
    ``center`` (integer-rounded corners), zeros outside the frame, bilinear resize."""
    ih, iw = input_hw
    crop_h = float(max(scale))
    ul = _to_source([1, 1], center, crop_h, input_hw) - 1
    br = _to_source([iw + 1, ih + 1], center, crop_h, input_hw) - 1
    h_img, w_img = image.shape[:2]
    out_h, out_w = int(br[1] - ul[1]), int(br[0] - ul[0])
    canvas = np.zeros((max(out_h, 1), max(out_w, 1)) + image.shape[2:], dtype=np.float32)
    nx0, nx1 = max(0, -ul[0]), min(br[0], w_img) - ul[0]
    ny0, ny1 = max(0, -ul[1]), min(br[1], h_img) - ul[1]
    ox0, ox1 = max(0, ul[0]), min(w_img, br[0])
    oy0, oy1 = max(0, ul[1]), min(h_img, br[1])
    if nx1 > nx0 and ny1 > ny0 and ox1 > ox0 and oy1 > oy0:
        canvas[ny0:ny1, nx0:nx1] = image[oy0:oy1, ox0:ox1]
    return resize_bilinear(canvas, ih, iw)


def vitpose_preprocess(frame_rgb: np.ndarray, box, input_hw=(256, 192), rescale: float = 1.25,
                       bgr: bool = POSE_INPUT_BGR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame + person box -> (model input (3, h, w) float32, crop centre, crop size [w, h])."""
    h, w = frame_rgb.shape[:2]
    if box is None or box[-1] <= 0 or (box[2] - box[0]) < 10 or (box[3] - box[1]) < 10:
        box = np.array([0.0, 0.0, w, h, 1.0])
    img = frame_rgb[..., ::-1] if bgr else frame_rgb
    center, scale = box_center_scale(box, input_hw, rescale)
    crop = crop_person(img, center, scale, input_hw)
    norm = (crop / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(norm.transpose(2, 0, 1), dtype=np.float32), center, scale


def heatmap_argmax(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) -> integer peak coordinates (N, K, 2) as ``x, y`` (-1 where the max <= 0)
    and the maxima (N, K, 1)."""
    n, k, _, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = flat.argmax(axis=2)
    maxvals = flat.max(axis=2)[..., None]
    preds = np.stack([idx % w, idx // w], axis=-1).astype(np.float64)
    preds = np.where(maxvals > 0.0, preds, -1.0)
    return preds, maxvals


def dark_refine(heatmaps: np.ndarray, preds: np.ndarray, kernel: int = 11) -> np.ndarray:
    """Distribution-aware sub-pixel refinement of integer peaks ``preds`` (N, K, 2)."""
    hm = np.asarray(heatmaps, dtype=np.float64)
    n, k, h, w = hm.shape
    blurred = gaussian_blur_zero_pad(hm, kernel)
    peak = hm.reshape(n, k, -1).max(axis=2)
    bpeak = blurred.reshape(n, k, -1).max(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bpeak != 0, peak / bpeak, 0.0)
    blurred *= ratio[..., None, None]
    logm = np.log(np.maximum(blurred, 1e-10))
    out = preds.copy()
    for i in range(n):
        for j in range(k):
            px, py = int(preds[i, j, 0]), int(preds[i, j, 1])
            if not (1 < px < w - 2 and 1 < py < h - 2):
                continue
            m = logm[i, j]
            dx = 0.5 * (m[py, px + 1] - m[py, px - 1])
            dy = 0.5 * (m[py + 1, px] - m[py - 1, px])
            dxx = 0.25 * (m[py, px + 2] - 2 * m[py, px] + m[py, px - 2])
            dxy = 0.25 * (m[py + 1, px + 1] - m[py - 1, px + 1] - m[py + 1, px - 1] + m[py - 1, px - 1])
            dyy = 0.25 * (m[py + 2, px] - 2 * m[py, px] + m[py - 2, px])
            det = dxx * dyy - dxy * dxy
            if det != 0:
                hess = np.array([[dxx, dxy], [dxy, dyy]])
                out[i, j] -= np.linalg.inv(hess) @ np.array([dx, dy])
    return out


def heatmaps_to_keypoints(heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray,
                          kernel: int = 11) -> np.ndarray:
    """(N, K, H, W) heatmaps of crops with ``center`` (N, 2) and ``scale`` (N, 2, pixels
    ``[w, h]``) -> (N, K, 3) keypoints ``x, y, score`` in frame pixels."""
    hm = np.asarray(heatmaps, dtype=np.float64)
    n, k, h, w = hm.shape
    preds, maxvals = heatmap_argmax(hm)
    preds = dark_refine(hm, preds, kernel)
    center = np.asarray(center, dtype=np.float64).reshape(n, 2)
    scale = np.asarray(scale, dtype=np.float64).reshape(n, 2)
    xy = np.empty_like(preds)
    xy[..., 0] = preds[..., 0] * (scale[:, None, 0] / w) + center[:, None, 0] - scale[:, None, 0] * 0.5
    xy[..., 1] = preds[..., 1] * (scale[:, None, 1] / h) + center[:, None, 1] - scale[:, None, 1] * 0.5
    return np.concatenate([xy, maxvals], axis=2).astype(np.float32)


class ViTPoseWholeBody:
    def __init__(self, path: Path, device: str | None = None):
        self.session = _session(path, device)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_hw = _static_hw(inp.shape, (256, 192))

    def __call__(self, frame: np.ndarray, box) -> np.ndarray:
        x, center, scale = vitpose_preprocess(frame, box, self.input_hw)
        heatmaps = self.session.run(None, {self.input_name: x[None]})[0]
        return heatmaps_to_keypoints(heatmaps, center[None], scale[None])[0]


# ---------------------------------------------------------------- backend


def check_weights(pose_model: str | Path | None, detector: str | Path | None) -> tuple[Path, Path | None]:
    if not pose_model:
        raise MissingWeights("ViTPose whole-body model (pose_model)", Path("<not set>"), POSE_FILE)
    pose_path = Path(pose_model).expanduser()
    if pose_path.is_dir():
        pose_path = pose_path / "end2end.onnx"
    if not pose_path.is_file():
        raise MissingWeights("ViTPose whole-body model (pose_model)", pose_path, POSE_FILE)
    det_path = None
    if detector:
        det_path = Path(detector).expanduser()
        if not det_path.is_file():
            raise MissingWeights("YOLO person detector (detector)", det_path, DETECTOR_FILE)
    return pose_path, det_path


class OnnxBackend:
    """``detect(frames)`` -> one :class:`Detection` per frame."""

    name = "onnx"

    def __init__(self, pose_model: str | Path | None, detector: str | Path | None = None,
                 device: str | None = None, mask: bool = True):
        self.pose_path, self.det_path = check_weights(pose_model, detector)
        self.device = device
        self.mask = mask

    def detect(self, frames: np.ndarray, progress: Callable[[int, int], None] | None = None) -> list[Detection]:
        pose = ViTPoseWholeBody(self.pose_path, self.device)
        det = YoloPersonDetector(self.det_path, self.device) if self.det_path else None
        frames = np.asarray(frames, dtype=np.uint8)
        out: list[Detection] = []
        for t, frame in enumerate(frames):
            h, w = frame.shape[:2]
            box = det(frame) if det is not None else None
            kp = pose(frame, box)
            person = has_body(kp) and (det is None or box is not None)
            pbox = tuple(float(v) for v in box[:4]) if box is not None else keypoint_box(kp[:23])
            mask = None
            if self.mask and pbox is not None:
                mask = np.zeros((h, w), dtype=bool)
                x0, y0, x1, y1 = (int(round(v)) for v in pbox)
                mask[max(y0, 0):max(min(y1, h), 0), max(x0, 0):max(min(x1, w), 0)] = True
            out.append(Detection(person=person, keypoints=kp, box=pbox, mask=mask, face=person))
            if progress is not None:
                progress(t + 1, len(frames))
        return out
