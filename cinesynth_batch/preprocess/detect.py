"""Choosing a backend, running it once per reference video, and the person checks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .keypoints import FACE, Detection, fill_missing

BACKENDS = ("mediapipe", "onnx")


class Backend(Protocol):
    name: str

    def detect(self, frames: np.ndarray, progress: Callable[[int, int], None] | None = None) -> list[Detection]:
        ...  # pragma: no cover - protocol


def make_backend(name: str, *, pose_model=None, detector=None, device: str | None = None,
                 hands: bool = True, mask_model: str = "pose") -> Backend:
    """A detection backend by name (``mediapipe`` or ``onnx``). The onnx backend raises
    :class:`~cinesynth_batch.preprocess.onnx_backend.MissingWeights` for a missing file."""
    if name == "mediapipe":
        from .mediapipe_backend import MediaPipeBackend

        return MediaPipeBackend(hands=hands, face=True, mask=True, mask_model=mask_model)
    if name == "onnx":
        from .onnx_backend import OnnxBackend

        return OnnxBackend(pose_model=pose_model, detector=detector, device=device, mask=True)
    raise ValueError(f"unknown backend {name!r} (choose one of {', '.join(BACKENDS)})")


# ---------------------------------------------------------------- one run per video


@dataclass
class _Entry:
    key: tuple
    dets: list[Detection]
    shapes: list[tuple[int, int] | None]


class DetectionCache:
    """Keeps the detections of the last reference video (masks bit-packed), so the pose,
    face, mask and background videos of one reference run the models once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: _Entry | None = None

    def get(self, key: tuple) -> list[Detection] | None:
        with self._lock:
            e = self._entry
            if e is None or e.key != key:
                return None
            return [replace(d, keypoints=d.keypoints.copy(), mask=_unpack(d.mask, s))
                    for d, s in zip(e.dets, e.shapes)]

    def put(self, key: tuple, dets: list[Detection]) -> None:
        packed, shapes = [], []
        for d in dets:
            if d.mask is not None:
                shapes.append(d.mask.shape)
                packed.append(replace(d, keypoints=d.keypoints.copy(), mask=np.packbits(d.mask, axis=None)))
            else:
                shapes.append(None)
                packed.append(replace(d, keypoints=d.keypoints.copy()))
        with self._lock:
            self._entry = _Entry(key, packed, shapes)

    def clear(self) -> None:
        with self._lock:
            self._entry = None


def _unpack(bits, shape):
    if bits is None or shape is None:
        return None
    n = int(np.prod(shape))
    return np.unpackbits(bits, count=n).astype(bool).reshape(shape)


def file_identity(path: str | Path | None) -> tuple | None:
    if not path:
        return None
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        return (str(p), None, None)
    return (str(p.resolve()), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------- checks


@dataclass
class PersonReport:
    frames: int
    found: int
    filled: list[int]

    @property
    def fraction(self) -> float:
        return self.found / self.frames if self.frames else 0.0


def require_person(dets: list[Detection], name: str, min_fraction: float) -> tuple[list[Detection], PersonReport]:
    """Check that a person was found in enough frames, then give the other frames the
    nearest good detection. Raises ValueError with the user-facing message otherwise."""
    total = len(dets)
    found = sum(1 for d in dets if d.person)
    if found == 0:
        raise ValueError(f"no person found in 0 of {total} frames of {name}: "
                         "pose extraction needs a visible person")
    if found < min_fraction * total:
        raise ValueError(f"a person was found in only {found} of {total} frames of {name} "
                         f"({100 * found / total:.0f} %, at least {100 * min_fraction:.0f} % needed): "
                         "pose extraction needs a person visible in most of the video")
    filled_dets, filled = fill_missing(dets, "person")
    return filled_dets, PersonReport(total, found, filled)


def fill_faces(dets: list[Detection], valid: list[bool]) -> tuple[list[Detection], list[int]]:
    """Give frames whose face is not ``valid`` the face points of the nearest valid frame."""
    good = np.array([i for i, v in enumerate(valid) if v])
    if len(good) == 0:
        return list(dets), []
    out, filled = [], []
    for i, d in enumerate(dets):
        if valid[i]:
            out.append(d)
            continue
        j = int(good[np.argmin(np.abs(good - i))])
        kp = d.keypoints.copy()
        kp[FACE] = dets[j].keypoints[FACE]
        out.append(replace(d, keypoints=kp))
        filled.append(i)
    return out, filled


def backend_key(name: str, params: dict[str, Any], device: str | None) -> tuple:
    if name == "onnx":
        return (name, file_identity(params.get("pose_model")), file_identity(params.get("detector")), str(device))
    return (name, bool(params.get("hands", True)), str(params.get("mask_model", "pose")))
