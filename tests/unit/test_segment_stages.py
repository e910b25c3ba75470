"""The text-prompted mask: Grounding DINO boxes (stage ``detect``) and SAM's masks in them (stage
``segment``), on the tiny random models loaded through the real ``from_pretrained`` paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cinesynth_batch.catalog.loaders import load_model
from cinesynth_batch.preprocess.segment import Detector, Segmenter, caption
from cinesynth_batch.stages import detect as detect_stage
from cinesynth_batch.stages import segment as segment_stage
from cinesynth_batch.stages.base import StageError
from projects import EXAMPLES

PHRASE = "clothing, garment, dress, top, bottom, shirt, skirt, pants"
PICTURE = EXAMPLES / "assets" / "model.png"


def test_the_phrase_is_read_as_groundingdino_reads_it():
    assert caption("  Clothing,  Garment ") == "clothing, garment."
    assert caption("a shirt.") == "a shirt."


def test_the_loaders_give_the_detector_and_the_segmenter(tiny_root):
    assert isinstance(load_model("grounding-dino", tiny_root / "grounding-dino"), Detector)
    assert isinstance(load_model("sam", tiny_root / "sam"), Segmenter)
    with pytest.raises(StageError, match="is not a SAM folder"):
        load_model("sam", tiny_root / "flux2-klein")


def detect(ctx, tmp_path, threshold: float, text: str = PHRASE, name: str = "boxes") -> tuple[dict, dict]:
    out = tmp_path / f"{name}.json"
    facts = detect_stage.run({"text": text, "threshold": threshold}, {"image": PICTURE}, out, ctx)
    return facts, json.loads(out.read_text())


def test_detect_writes_the_boxes_above_the_threshold(ctx, tmp_path):
    facts, found = detect(ctx, tmp_path, 0.3)
    assert (found["width"], found["height"]) == Image.open(PICTURE).size
    assert found["caption"] == PHRASE + "." and found["threshold"] == 0.3
    assert facts["boxes"] == len(found["boxes"]) == len(found["scores"]) > 0
    assert all(s > 0.3 for s in found["scores"]) and found["scores"] == sorted(found["scores"], reverse=True)
    for x0, y0, x1, y1 in found["boxes"]:
        assert 0 <= x0 <= x1 <= found["width"] and 0 <= y0 <= y1 <= found["height"]
    _, strict = detect(ctx, tmp_path, 0.7, name="strict")
    assert 0 < len(strict["boxes"]) < len(found["boxes"])
    assert strict["boxes"] == [b for b, s in zip(found["boxes"], found["scores"]) if s > 0.7]


def segment(ctx, tmp_path, boxes: list, name: str = "mask") -> tuple[dict, np.ndarray]:
    width, height = Image.open(PICTURE).size
    file = tmp_path / f"{name}.json"
    file.write_text(json.dumps({"width": width, "height": height, "boxes": boxes}))
    out = tmp_path / f"{name}.png"
    facts = segment_stage.run({}, {"image": PICTURE, "boxes": file}, out, ctx)
    with Image.open(out) as im:
        assert im.mode == "L"
        return facts, np.asarray(im)


def test_segment_unites_the_masks_of_the_boxes(ctx, tmp_path):
    _, found = detect(ctx, tmp_path, 0.3)
    boxes = found["boxes"]
    facts, union = segment(ctx, tmp_path, boxes)
    assert union.shape == (found["height"], found["width"]) and set(np.unique(union)) <= {0, 255}
    assert facts == {"boxes": len(boxes), "coverage": round(float((union > 0).mean()), 4),
                     "width": found["width"], "height": found["height"]}
    singles = [segment(ctx, tmp_path, [b], f"one{i}")[1] for i, b in enumerate(boxes[:3])]
    assert np.array_equal(union, np.maximum.reduce([segment(ctx, tmp_path, [b], f"u{i}")[1]
                                                    for i, b in enumerate(boxes)]))
    assert all(np.all(union >= s) for s in singles)


def test_no_box_gives_an_empty_mask(ctx, tmp_path):
    facts, mask = segment(ctx, tmp_path, [])
    assert facts["coverage"] == 0.0 and not mask.any()


def test_boxes_of_another_picture_or_not_boxes_are_refused(ctx, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"width": 10, "height": 10, "boxes": []}))
    with pytest.raises(StageError, match="not the detector's boxes for a 160x288 picture"):
        segment_stage.run({}, {"image": PICTURE, "boxes": bad}, tmp_path / "o.png", ctx)
    bad.write_text(json.dumps({"width": 160, "height": 288, "boxes": [[1, 2, 3]]}))
    with pytest.raises(StageError, match=r"\[1, 2, 3\] is not a box"):
        segment_stage.run({}, {"image": PICTURE, "boxes": bad}, tmp_path / "o.png", ctx)


def test_detect_params_are_checked(ctx, tmp_path):
    with pytest.raises(StageError, match="detect: threshold"):
        detect(ctx, tmp_path, 1.5)
