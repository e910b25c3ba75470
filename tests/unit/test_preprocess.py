"""Reference-video preprocessing for Wan2.2-Animate (pose, face, mask, background videos).

The mediapipe tests run real detection on a video made from ``skimage.data.astronaut()``
moved and scaled over 32 frames. The onnx backend is tested with small synthetic ONNX graphs
standing in for the YOLO detector and the ViTPose model (no real weights here): they check
the pre/post-processing (resize, crop, channel order, normalisation, NMS, person choice,
heatmap decoding, mapping back to the frame), not the official networks themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cinesynth_batch.media.video_io import read_frames, write_video
from cinesynth_batch.preprocess import draw
from cinesynth_batch.preprocess.detect import fill_faces, require_person
from cinesynth_batch.preprocess.frames import animate_frame_count, fit_cover, read_reference, video_duration
from cinesynth_batch.preprocess.imageops import dilate, grid_fill
from cinesynth_batch.preprocess.keypoints import FACE, Detection, body20, empty_keypoints, face_box, fill_missing
from cinesynth_batch.stages import animate_prep
from cinesynth_batch.stages.base import StageContext, StageError

# ---------------------------------------------------------------- helpers

SRC_W, SRC_H = 320, 240     # the astronaut video
OUT_W, OUT_H = 256, 192     # generation size (same aspect: a plain 0.8 resize)
N_SRC = 32                  # frames at 16 fps: 2.0 s -> 33 output frames
GRAY = 70
NOSE = (0.44, 0.25)         # in the astronaut photo, as fractions of its side
CHEST = (0.40, 0.65)


def _ctx() -> StageContext:
    return StageContext(models=None, resolve_lora=lambda name, family: Path(name))


def _photo_rect(i: int) -> tuple[int, int, int]:
    """Where the photo is in source frame ``i``: x, y, side."""
    a = min(i, N_SRC - 1) / (N_SRC - 1)
    return int(round(40 + 60 * a)), int(round(36 - 16 * a)), int(round(128 + 72 * a))


def _out_point(k: int, fx: float, fy: float) -> tuple[int, int]:
    """A point of the photo (fractions) in output frame ``k`` (source frame k, scale 0.8)."""
    x, y, s = _photo_rect(k)
    return int(round((x + fx * s) * 0.8)), int(round((y + fy * s) * 0.8))


def _astronaut_frames(n: int = N_SRC, blank: tuple[int, ...] = ()) -> np.ndarray:
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    frames = np.full((n, SRC_H, SRC_W, 3), GRAY, dtype=np.uint8)
    for i in range(n):
        if i in blank:
            continue
        x, y, s = _photo_rect(i)
        frames[i, y:y + s, x:x + s] = np.asarray(photo.resize((s, s), Image.Resampling.BILINEAR))
    return frames


def _run(tmp: Path, video: Path, output: str, memo: dict | None = None, **params):
    out = tmp / f"{video.stem}-{output}.mp4"
    p = {"output": output, "width": OUT_W, "height": OUT_H, "fps": 16, "max_frames": 601,
         "backend": "mediapipe", "detector": None, "pose_model": None}
    p.update(params)
    ctx = _ctx()
    if memo is not None:
        ctx.memo = memo           # one render: the four outputs share one detection pass
    info = animate_prep.run(p, {"video": video}, out, ctx)
    return info, read_frames(out)


@pytest.fixture(scope="module")
def astro(tmp_path_factory):
    pytest.importorskip("mediapipe")
    tmp = tmp_path_factory.mktemp("astro")
    video = tmp / "astronaut.mp4"
    write_video(_astronaut_frames(), video, fps=16)
    memo: dict = {}
    results = {o: _run(tmp, video, o, memo) for o in ("pose", "face", "mask", "background")}
    return video, results


# ---------------------------------------------------------------- frame-count rule and sampling


@pytest.mark.parametrize("duration,fps,max_frames,expected", [
    (2.0, 16, 601, 33),
    (5.1, 16, 601, 81),
    (5.0, 16, 601, 81),
    (1.0, 16, 601, 17),
    (2.0, 30, 601, 61),
    (0.1, 16, 601, 5),        # at least 5
    (0.0, 16, 601, 5),
    (100.0, 16, 601, 601),    # capped
    (100.0, 16, 600, 597),    # the cap is aligned down to 4k+1 too
    (37.4, 16, 601, 597),
])
def test_frame_count_rule(duration, fps, max_frames, expected):
    n = animate_frame_count(duration, fps, max_frames)
    assert n == expected
    assert (n - 1) % 4 == 0


def test_frame_count_rejects_nonsense():
    for args in ((-1.0,), (float("nan"),), (2.0, 0), (2.0, 16, 3)):
        with pytest.raises(ValueError):
            animate_frame_count(*args)


def test_read_reference_takes_the_nearest_frame_by_timestamp(tmp_path):
    # 24 frames at 12 fps, frame i is flat grey 10*i; sampled at 16 fps for 2.0 s -> 33 frames
    src = np.stack([np.full((24, 32, 3), 10 * i, np.uint8) for i in range(24)])
    video = tmp_path / "steps.mp4"
    write_video(src, video, fps=12, crf=0)
    assert video_duration(video) == pytest.approx(2.0)
    n = animate_frame_count(video_duration(video), 16)
    got = read_reference(video, 16, n, 32, 24)
    assert got.shape == (33, 24, 32, 3)
    for k in range(n):
        dist = np.abs(np.arange(24) / 12 - k / 16)
        candidates = {10 * int(i) for i in np.nonzero(dist <= dist.min() + 1e-6)[0]}
        value = int(round(got[k].mean()))
        assert any(abs(value - c) <= 2 for c in candidates), (k, value, candidates)
    assert abs(int(got[-1].mean()) - 230) <= 2     # past the end: the last frame


def test_fit_cover_resizes_to_cover_and_crops_the_centre():
    img = np.zeros((50, 100, 3), np.uint8)
    img[:, :, 0] = (np.arange(100) * 2)[None, :]
    out = fit_cover(img, 40, 40)     # scale 0.8 -> 80x40, keep columns 20..59 = source 25..74
    assert out.shape == (40, 40, 3)
    assert abs(int(out[20, 0, 0]) - 50) <= 4
    assert abs(int(out[20, 39, 0]) - 148) <= 4


# ---------------------------------------------------------------- drawing, masks, boxes (no models)


def test_pose_drawing_uses_the_official_colours_on_black():
    kp = empty_keypoints()
    kp[5] = (250, 100, 1.0)    # left shoulder
    kp[6] = (150, 100, 1.0)    # right shoulder
    img = draw.draw_pose(np.zeros((400, 400, 3), np.uint8), kp)
    assert tuple(img[100, 175]) == (153, 0, 0)      # neck-right shoulder limb: red x 0.6
    assert tuple(img[100, 225]) == (153, 51, 0)     # neck-left shoulder limb: orange x 0.6
    assert tuple(img[100, 200]) == (255, 85, 0)     # neck joint (mean of the shoulders)
    assert tuple(img[100, 150]) == (255, 170, 0)    # right shoulder joint
    assert tuple(img[100, 250]) == (85, 255, 0)     # left shoulder joint
    assert img[:90].max() == 0 and img[111:].max() == 0    # nothing else drawn
    assert body20(kp)[1, 2] == pytest.approx(1.0)


def test_pose_drawing_skips_low_scores_and_draws_hands():
    kp = empty_keypoints()
    kp[5] = (250, 100, 0.4)
    kp[6] = (150, 100, 0.4)
    assert draw.draw_pose(np.zeros((200, 400, 3), np.uint8), kp).max() == 0
    kp[91] = (50, 50, 0.9)     # left hand wrist and thumb base
    kp[92] = (70, 50, 0.9)
    img = draw.draw_pose(np.zeros((200, 400, 3), np.uint8), kp)
    assert tuple(img[50, 60]) == draw.HAND_EDGE_COLORS[0]
    assert tuple(img[50, 50]) == draw.HAND_POINT_COLOR


def test_replace_mask_is_the_dilated_person_then_grid_filled():
    m = np.zeros((100, 120), bool)
    m[40:60, 50:55] = True
    m[30, 80] = True
    d = dilate(m, 7, 3)                      # a 19x19 square per pixel: radius 9
    assert d[31:69, 41:64].all() and not d[40, 40] and d[21, 71] and not d[20, 80]
    rect = draw.replace_mask(m)              # 1x1 grid: the bounding rectangle of the dilation
    ys, xs = np.nonzero(rect)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (21, 68, 41, 89)
    assert rect[21:69, 41:90].all()
    fine = grid_fill(d, 4, 4)
    assert fine.sum() < rect.sum() and (fine >= d).all()


def test_face_box_grows_more_upwards_and_stays_in_the_frame():
    pts = np.array([[100, 100], [500, 100], [100, 600], [500, 600]], float)
    x0, y0, x1, y1 = face_box(pts, 2000, 2000)
    assert (x0, x1) == (71, 528)                    # area x 1.3, aspect kept: +28 px each side
    assert (y0, y1) == (47, 617)                    # height: +52 px above, +17 px below
    assert (x1 - x0) * (y1 - y0) == pytest.approx(1.3 * 400 * 500, rel=0.01)
    assert face_box(pts - 95, 2000, 2000)[:2] == (0, 0)
    assert face_box(np.array([[5, 5], [5, 5]], float), 64, 64) is None


def test_missing_frames_reuse_the_nearest_good_detection():
    dets = [Detection(person=p, box=(i, i, i, i)) for i, p in enumerate([0, 1, 0, 0, 1, 0])]
    filled, idx = fill_missing(dets)
    assert idx == [0, 2, 3, 5]
    assert [d.box[0] for d in filled] == [1, 1, 1, 4, 4, 4]
    assert [d.filled_from for d in filled] == [1, None, 1, 4, None, 4]


def test_person_checks_give_clear_messages():
    none = [Detection(person=False) for _ in range(33)]
    with pytest.raises(ValueError, match=r"^no person found in 0 of 33 frames of dance\.mp4: "
                                         r"pose extraction needs a visible person$"):
        require_person(none, "dance.mp4", 0.5)
    few = [Detection(person=i < 10) for i in range(33)]
    with pytest.raises(ValueError, match=r"only 10 of 33 frames of dance\.mp4"):
        require_person(few, "dance.mp4", 0.5)
    ok, report = require_person([Detection(person=i % 4 != 1) for i in range(9)], "d.mp4", 0.5)
    assert report.filled == [1, 5] and report.fraction == pytest.approx(7 / 9)
    assert all(d.person for d in ok)


def test_faces_are_filled_from_the_nearest_frame_with_a_face():
    dets = []
    for i in range(4):
        kp = empty_keypoints()
        kp[FACE] = (10 * i, 10 * i, 1.0)
        dets.append(Detection(person=True, keypoints=kp))
    out, filled = fill_faces(dets, [False, True, False, True])
    assert filled == [0, 2]
    assert out[0].keypoints[FACE][0, 0] == 10 and out[2].keypoints[FACE][0, 0] == 10


# ---------------------------------------------------------------- the stage with mediapipe (real detection)


def test_every_frame_has_a_pose_and_a_face(astro):
    _, results = astro
    n = animate_frame_count(2.0, 16)
    for output, (info, video) in results.items():
        assert info["frames"] == n == len(video) == 33, output
        assert info["detected"] == 1.0 and info["filled"] == 0 and info["filled_frames"] == [], output
        assert info["fps"] == 16 and info["backend"] == "mediapipe"
    assert results["face"][0]["face_detected"] == 1.0
    assert results["face"][0]["face_filled"] == 0


def test_pose_video_is_a_skeleton_on_black_where_the_person_is(astro):
    info, video = astro[1]["pose"]
    assert video.shape == (33, OUT_H, OUT_W, 3) and (info["width"], info["height"]) == (OUT_W, OUT_H)
    lit = video.max(axis=-1) > 40
    for k in range(33):
        assert 60 < lit[k].sum() < 0.08 * OUT_W * OUT_H, k
        x, y, s = _photo_rect(k)
        x0, y0 = int(x * 0.8) - 8, int(y * 0.8) - 8
        x1, y1 = int((x + s) * 0.8) + 8, int((y + s) * 0.8) + 8
        inside = lit[k, max(y0, 0):y1, max(x0, 0):x1].sum()
        assert inside >= 0.8 * lit[k].sum(), k
        nx, ny = _out_point(k, *NOSE)
        assert lit[k, ny - 8:ny + 9, nx - 8:nx + 9].any(), k     # the head is drawn at the head
        for cy, cx in ((0, 0), (0, OUT_W - 6), (OUT_H - 6, 0)):
            assert not lit[k, cy:cy + 6, cx:cx + 6].any(), k


def test_face_video_is_the_face_at_512(astro):
    from PIL import Image
    from skimage import data

    info, video = astro[1]["face"]
    assert video.shape == (33, 512, 512, 3) and (info["width"], info["height"]) == (512, 512)
    # the astronaut's face box in the photo (fractions of its side), as a small grey reference
    photo = data.astronaut()
    ref = photo[int(0.15 * 512):int(0.35 * 512), int(0.34 * 512):int(0.54 * 512)]

    def small(a):
        g = np.asarray(Image.fromarray(a).convert("L").resize((24, 24)), dtype=np.float64)
        g -= g.mean()
        return g / (np.linalg.norm(g) + 1e-9)

    r = small(ref)
    scores = [float((small(f) * r).sum()) for f in video]
    assert min(scores) > 0.8, scores
    assert np.abs(video[:, 200:312, 200:312].astype(int) - GRAY).mean() > 30   # not the backdrop


def test_mask_covers_the_person_and_not_the_corners(astro):
    info, video = astro[1]["mask"]
    assert video.shape == (33, OUT_H, OUT_W, 3)
    for k in range(33):
        m = video[k, :, :, 0]
        for fx, fy in (NOSE, CHEST):
            x, y = _out_point(k, fx, fy)
            assert m[y, x] > 200, (k, fx, fy)          # white: the region to generate
        for cy, cx in ((0, 0), (0, OUT_W - 4), (OUT_H - 4, 0), (OUT_H - 4, OUT_W - 4)):
            assert m[cy:cy + 4, cx:cx + 4].max() < 40, k
    assert ((video < 40) | (video > 215)).mean() > 0.98      # a two-level mask
    assert 0.1 < info["mask_coverage"] < 0.8


def test_background_blanks_the_person(astro):
    video_path, results = astro
    _, bg = results["background"]
    _, mask = results["mask"]
    src = read_frames(video_path)
    for k in range(33):
        for fx, fy in (NOSE, CHEST):
            x, y = _out_point(k, fx, fy)
            assert bg[k, y, x].max() < 30, k
        assert abs(int(bg[k, 2, 2].mean()) - GRAY) < 8       # the backdrop is kept
        outside = mask[k, :, :, 0] < 40
        kept = bg[k][outside].astype(int)
        ref = np.asarray(fit_cover(src[min(k, N_SRC - 1)], OUT_W, OUT_H))[outside].astype(int)
        assert np.abs(kept - ref).mean() < 6, k
        assert bg[k][mask[k, :, :, 0] > 215].mean() < 12, k


def test_frames_without_a_person_reuse_the_nearest_detection(tmp_path):
    pytest.importorskip("mediapipe")
    frames = _astronaut_frames(16, blank=(6, 7, 8))    # 16 frames at 16 fps -> 17 output frames
    video = tmp_path / "gap.mp4"
    write_video(frames[:, ::2, ::2].copy(), video, fps=16)
    info, pose = _run(tmp_path, video, "pose", width=160, height=120)
    assert info["frames"] == 17
    assert info["filled_frames"] == [6, 7, 8] and info["filled"] == 3
    assert info["detected"] == pytest.approx(14 / 17, abs=1e-3)
    assert np.array_equal(pose[6], pose[5]) or np.abs(pose[6].astype(int) - pose[5]).mean() < 1


def test_mediapipe_backend_on_one_photo_with_the_selfie_mask():
    pytest.importorskip("mediapipe")
    from PIL import Image
    from skimage import data

    from cinesynth_batch.preprocess.mediapipe_backend import (
        MESH_TO_IBUG68, POSE_TO_WHOLEBODY, MediaPipeBackend,
    )

    assert len(POSE_TO_WHOLEBODY) == 23 and len(MESH_TO_IBUG68) == 68 == len(set(MESH_TO_IBUG68))
    img = np.asarray(Image.fromarray(data.astronaut()).resize((256, 256)))
    (det,) = MediaPipeBackend(hands=False, mask_model="selfie").detect(img[None])
    assert det.person and det.face and det.mask.shape == (256, 256)
    nx, ny = int(NOSE[0] * 256), int(NOSE[1] * 256)
    assert det.mask[ny, nx] and det.mask[int(CHEST[1] * 256), int(CHEST[0] * 256)]
    assert np.hypot(*(det.keypoints[0, :2] - (nx, ny))) < 8       # COCO nose
    x0, y0, x1, y1 = face_box(det.keypoints[FACE, :2], 256, 256)
    assert x0 < nx < x1 and y0 < ny < y1


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_person_is_a_clear_stage_error(tmp_path, kind):
    pytest.importorskip("mediapipe")
    rng = np.random.default_rng(0)
    if kind == "blank":
        frames = np.zeros((32, 120, 160, 3), np.uint8)
    else:
        frames = rng.integers(0, 256, (32, 120, 160, 3), dtype=np.uint8)
    video = tmp_path / f"{kind}.mp4"
    write_video(frames, video, fps=16)
    with pytest.raises(StageError) as err:
        _run(tmp_path, video, "pose", width=160, height=120)
    assert err.value.message == (f"no person found in 0 of 33 frames of {kind}.mp4: "
                                 "pose extraction needs a visible person")
    assert not (tmp_path / f"{kind}-pose.mp4").exists()


def test_bad_params_are_stage_errors(tmp_path):
    video = tmp_path / "v.mp4"
    write_video(np.zeros((8, 16, 16, 3), np.uint8), video, fps=16)
    for bad in ({"width": 255}, {"output": "depth"}, {"backend": "openpose"}, {"fps": 0},
                {"mask_grid": [0, 1]}):
        with pytest.raises(StageError):
            _run(tmp_path, video, **({"output": "pose"} | bad))
    with pytest.raises(StageError, match="cannot read video"):
        _run(tmp_path, tmp_path / "missing.mp4", "pose")


def test_stage_contract_and_no_torch_on_import():
    assert (animate_prep.KIND, animate_prep.OUTPUT_EXT, animate_prep.MODEL_ROLE) == ("animate_prep", ".mp4", None)
    code = ("import sys, cinesynth_batch.stages.animate_prep, cinesynth_batch.preprocess.draw, "
            "cinesynth_batch.preprocess.detect, cinesynth_batch.preprocess.onnx_backend; "
            "assert 'torch' not in sys.modules and 'mediapipe' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- onnx backend, synthetic graphs


def _save_model(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _constant_yolo(path: Path, rows: np.ndarray) -> Path:
    """A stand-in detector: input (1, 3, 640, 640), output the given (1, N, 6) rows."""
    from onnx import TensorProto, helper, numpy_helper

    const = numpy_helper.from_array(rows.astype(np.float32)[None], "rows")
    zero = numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["rows", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "yolo_standin",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, len(rows), 6])],
        initializer=[const, zero])
    return _save_model(graph, path)


def _channel_pose_model(path: Path, channel: int = 2) -> Path:
    """A stand-in ViTPose: heatmaps (1, 133, 64, 48) = input channel ``channel`` average-pooled
    by 4, plus 3, for every keypoint. A bright spot in that channel is every keypoint."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array([channel], np.int64), "c0"),
        numpy_helper.from_array(np.array([channel + 1], np.int64), "c1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
        numpy_helper.from_array(np.array(3.0, np.float32), "three"),
        numpy_helper.from_array(np.array([1, 133, 1, 1], np.int64), "reps"),
    ]
    nodes = [
        helper.make_node("Slice", ["input", "c0", "c1", "ax"], ["ch"]),
        helper.make_node("AveragePool", ["ch"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Add", ["pooled", "three"], ["shifted"]),
        helper.make_node("Tile", ["shifted", "reps"], ["heatmaps"]),
    ]
    graph = helper.make_graph(
        nodes, "vitpose_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 256, 192])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [1, 133, 64, 48])],
        initializer=inits)
    return _save_model(graph, path)


def _red_spot(h: int, w: int, cx: float, cy: float, sigma: float = 6.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.round(255 * g).astype(np.uint8)
    return img


def test_onnx_synthetic_graph_yolo_picks_the_largest_person(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from cinesynth_batch.preprocess.onnx_backend import YoloPersonDetector

    rows = np.array([
        [100, 100, 300, 500, 0.90, 0],     # the person
        [104, 102, 302, 503, 0.80, 0],     # its duplicate: suppressed
        [400, 400, 460, 470, 0.95, 0],     # a smaller person
        [0, 0, 640, 640, 0.99, 2],         # a car, bigger: not a person
        [500, 50, 600, 150, 0.01, 0],      # under the score threshold
    ], np.float32)
    det = YoloPersonDetector(_constant_yolo(tmp_path / "yolo.onnx", rows))
    box = det(np.zeros((360, 480, 3), np.uint8))     # boxes scale by (480/640, 360/640)
    assert box is not None
    assert np.allclose(box[:4], [75, 56, 225, 281], atol=1) and box[4] == pytest.approx(0.9, abs=1e-6)


def test_onnx_yolov8_layout_and_nms():
    from cinesynth_batch.preprocess.onnx_backend import select_person, yolo_postprocess

    cols = np.zeros((84, 3))
    cols[:4, 0] = (200, 300, 100, 200)      # person, cx cy w h
    cols[4, 0] = 0.8
    cols[:4, 1] = (202, 301, 100, 200)      # overlapping person, lower score
    cols[4, 1] = 0.7
    cols[:4, 2] = (500, 100, 40, 40)        # a dog
    cols[4 + 16, 2] = 0.9
    rows = yolo_postprocess(cols[None], (640, 640))
    assert len(rows) == 2 and sorted(rows[:, 5].tolist()) == [0.0, 16.0]
    assert np.allclose(select_person(rows)[:4], [150, 200, 250, 400])


def test_onnx_dark_decoding_recovers_a_subpixel_peak():
    from cinesynth_batch.preprocess.onnx_backend import heatmaps_to_keypoints

    yy, xx = np.mgrid[0:64, 0:48]
    hm = np.exp(-((xx - 20.3) ** 2 + (yy - 30.6) ** 2) / (2 * 2.0 ** 2))[None, None].astype(np.float32)
    kp = heatmaps_to_keypoints(hm, np.array([[100.0, 200.0]]), np.array([[96.0, 128.0]]))
    # heatmap (20.3, 30.6) -> crop of 96x128 px centred at (100, 200): 2 px per heatmap cell
    assert kp[0, 0, 0] == pytest.approx(100 - 48 + 20.3 * 2, abs=0.1)
    assert kp[0, 0, 1] == pytest.approx(200 - 64 + 30.6 * 2, abs=0.1)
    assert kp[0, 0, 2] == pytest.approx(hm.max())


def test_onnx_synthetic_graph_vitpose_gets_bgr_crop_and_maps_back(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from cinesynth_batch.preprocess.onnx_backend import ViTPoseWholeBody

    frame = _red_spot(360, 480, cx=233.0, cy=151.0)
    # the model reads input channel 2: that holds red only if the crop is fed as BGR
    pose = ViTPoseWholeBody(_channel_pose_model(tmp_path / "pose.onnx", channel=2))
    kp = pose(frame, np.array([150, 60, 330, 320, 0.9]))
    assert kp.shape == (133, 3)
    # box 180x260 -> crop 243.75x325 px (3:4, x1.25) around (240, 190), 1.27 frame px per
    # input px. Pooling cell j covers input px 4j..4j+3 (centre 4j+1.5) while the decoder
    # maps cell j to input px 4j: the stand-in reads 1.5 input px up-left of the spot.
    px = 325 / 256
    assert np.allclose(kp[:, 0], 233.0 - 1.5 * px, atol=0.3)
    assert np.allclose(kp[:, 1], 151.0 - 1.5 * px, atol=0.3)
    blue = ViTPoseWholeBody(_channel_pose_model(tmp_path / "pose0.onnx", channel=0))
    kp0 = blue(frame, np.array([150, 60, 330, 320, 0.9]))
    assert kp0[0, 2] < kp[0, 2] - 1.0     # channel 0 is blue there: no spot


def test_onnx_synthetic_graphs_through_the_stage(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rows = np.array([[160, 120, 480, 560, 0.9, 0]], np.float32)   # frame 160x120 -> (40, 22, 120, 104)
    det = _constant_yolo(tmp_path / "det.onnx", rows)
    pose = _channel_pose_model(tmp_path / "pose.onnx")
    frames = np.stack([_red_spot(120, 160, 70 + i, 60) for i in range(16)])
    video = tmp_path / "spot.mp4"
    write_video(frames, video, fps=16)
    info, out = _run(tmp_path, video, "pose", backend="onnx", detector=str(det), pose_model=str(pose),
                     width=160, height=120)
    assert info["frames"] == 17 and info["detected"] == 1.0 and info["backend"] == "onnx"
    assert out.shape == (17, 120, 160, 3)
    lit = out.max(axis=-1) > 60
    ys, xs = np.nonzero(lit[0])
    assert abs(xs.mean() - 70) < 4 and abs(ys.mean() - 60) < 4    # every joint drawn at the spot
    info, mask = _run(tmp_path, video, "mask", backend="onnx", detector=str(det), pose_model=str(pose),
                      width=160, height=120)
    m = mask[0, :, :, 0] > 128
    # the detector box (40, 22.5)-(120, 105); dilated by 9 px at the detection size
    # (683x512, 4.27x), i.e. 2.1 px here
    ys, xs = np.nonzero(m)
    got = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
    assert np.abs(got - [38, 20.4, 122, 107]).max() <= 1.5, got


def test_onnx_missing_weights_name_the_file_and_where_to_get_it(tmp_path):
    video = tmp_path / "v.mp4"
    write_video(np.zeros((16, 16, 16, 3), np.uint8), video, fps=16)
    with pytest.raises(StageError) as err:
        _run(tmp_path, video, "pose", backend="onnx", pose_model=str(tmp_path / "nope" / "vitpose_h_wholebody.onnx"),
             width=16, height=16)
    assert "vitpose_h_wholebody.onnx" in err.value.message and str(tmp_path / "nope") in err.value.message
    assert "Wan-AI/Wan2.2-Animate-14B" in err.value.hint and "pose2d/vitpose_h_wholebody.onnx" in err.value.hint
    pose = tmp_path / "pose.onnx"
    pose.write_bytes(b"")
    with pytest.raises(StageError) as err:
        _run(tmp_path, video, "pose", backend="onnx", pose_model=str(pose), detector=str(tmp_path / "yolov10m.onnx"),
             width=16, height=16)
    assert "yolov10m.onnx" in err.value.message and "det/yolov10m.onnx" in err.value.hint
    with pytest.raises(StageError, match="pose_model"):
        _run(tmp_path, video, "pose", backend="onnx", width=16, height=16)
