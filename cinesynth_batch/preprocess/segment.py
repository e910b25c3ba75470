"""Text-prompted masks: Grounding DINO finds the boxes a phrase names, SAM outlines what is in them.

This is the seed's ``GroundingDinoSAMSegment`` (comfyui_segment_anything: GroundingDINO SwinT OGC +
SAM ViT-H) on the transformers ports of both models:

* **detect** (``Detector.detect``): the phrase lower-cased, stripped and ended with ``.`` as the
  original GroundingDINO demo feeds it; a box is kept when its best token score (the sigmoid of its
  logits, the maximum over the phrase's tokens) is above ``threshold`` — the seed's only threshold;
  there is no text threshold and no box suppression. Boxes are in pixels of the picture.
* **segment** (``Segmenter.mask``): one SAM mask per box (``multimask_output=False``, logits above
  0), their union as the mask. No box gives an empty mask.

Both run in float32 whatever the profile's dtype (they are small next to the image model, and the
box coordinates and mask logits keep their precision). Processors are read with the PIL backend,
so a machine with torchvision resizes exactly as one without.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StageError


def caption(text: str) -> str:
    """The phrase as GroundingDINO reads it: lower case, stripped, ending with ``.``."""
    phrase = " ".join(text.lower().split())
    return phrase if phrase.endswith(".") else phrase + "."


def _check_folder(path: Path, what: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise StageError(f"{path} is not a {what} folder (no config.json)",
                         hint="point the profile at a folder written by save_pretrained, or a hub id")
    return path


class _Held:
    """A transformers model and its processor; residency moves ``model``."""

    def __init__(self, model: Any, processor: Any, device: str):
        self.model = model.to(device).eval()
        self.processor = processor

    @property
    def device(self):
        return next(self.model.parameters()).device

    def to(self, device: Any) -> "_Held":
        self.model.to(device)
        return self


class Detector(_Held):
    """Grounding DINO (``GroundingDinoForObjectDetection``) with its processor."""

    def detect(self, image: Any, text: str, threshold: float) -> tuple[list[list[float]], list[float]]:
        """``(boxes, scores)`` above ``threshold``: boxes as ``[x0, y0, x1, y1]`` in pixels, clipped
        to the picture, best score first."""
        import torch

        inputs = self.processor(images=image, text=caption(text), return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self.model(**inputs)
        found = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=threshold, text_threshold=threshold,
            target_sizes=[(image.height, image.width)])[0]
        scores = found["scores"].float().cpu().tolist()
        boxes = found["boxes"].float().cpu().clamp(min=0).tolist()
        pairs = sorted(zip(scores, boxes), key=lambda p: -p[0])
        clipped = [[min(b[0], image.width), min(b[1], image.height), min(b[2], image.width),
                    min(b[3], image.height)] for _, b in pairs]
        return clipped, [s for s, _ in pairs]


class Segmenter(_Held):
    """SAM (``SamModel``) with its processor."""

    def mask(self, image: Any, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """The union of the masks SAM draws in ``boxes``: (H, W) bool."""
        import torch

        if not boxes:
            return np.zeros((image.height, image.width), dtype=bool)
        inputs = self.processor(images=image, input_boxes=[[list(map(float, b)) for b in boxes]],
                                return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self.model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                                 multimask_output=False)
        masks = self.processor.post_process_masks(outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(),
                                                  inputs["reshaped_input_sizes"].cpu(), mask_threshold=0.0,
                                                  binarize=True)[0]
        return masks.any(dim=(0, 1)).numpy()


def load_grounding_dino(path: str | Path, device: str = "cpu", dtype: str = "float32") -> Detector:
    """A Grounding DINO folder (``IDEA-Research/grounding-dino-tiny`` layout)."""
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    del dtype
    folder = _check_folder(Path(path), "Grounding DINO")
    model = GroundingDinoForObjectDetection.from_pretrained(str(folder), local_files_only=True)
    processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True, backend="pil")
    return Detector(model.float(), processor, device)


def load_sam(path: str | Path, device: str = "cpu", dtype: str = "float32") -> Segmenter:
    """A SAM folder (``facebook/sam-vit-huge`` layout)."""
    from transformers import SamModel, SamProcessor

    del dtype
    folder = _check_folder(Path(path), "SAM")
    model = SamModel.from_pretrained(str(folder), local_files_only=True)
    processor = SamProcessor.from_pretrained(str(folder), local_files_only=True, backend="pil")
    return Segmenter(model.float(), processor, device)
