"""The inputs of a masked edit (``image.source`` + ``image.mask``) and the stages that make a mask.

``image.mask: {segment: {source, text, threshold}}`` becomes two stages: ``<scene>.detect``
(Grounding DINO's boxes for the phrase, keyed by the text and the threshold) and ``<scene>.segment``
(SAM's masks in those boxes, united; published as ``scenes/<scene>.mask.png``). Scenes that look
for the same phrase at the same threshold in the same picture share them (named after the first).
Only they depend on the phrase: a new text or threshold re-runs them and what uses the mask, never
the picture they look at. A mask file is an input like any other picture. The pictures (``source``,
the segment's ``source``) may be files, URLs, frames or another scene's or stage's image
(``{scene: ID}``, ``{stage: ID}``), resolved by the references' planner (``plan/references.py``):
keyed by that stage's output digest, so a new avatar re-runs the mask and the edit made on it.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import Problem, SpecError
from ..spec import model as m
from ..spec.load import LoadedSpec
from .graph import FileInput, Graph, NodeInput, StageNode

Input = FileInput | NodeInput
Resolve = Callable[[Any, tuple], Input]


def edit_inputs(graph: Graph, loaded: LoadedSpec, scene: m.Scene, at: tuple,
                resolve: Resolve) -> dict[str, Input]:
    """``{"source": …, "mask": …}`` for the image stage of a masked edit (``at``: its spec place;
    ``resolve(value, loc)``: the input for a picture written at ``loc``)."""
    img = scene.image
    assert img is not None and img.mask is not None
    if not isinstance(img.mask, m.MaskSource):
        return {"source": resolve(img.source, (*at, "source")), "mask": resolve(img.mask, (*at, "mask"))}
    seg = img.mask.segment
    looked_at = resolve(seg.source, (*at, "mask", "segment", "source"))
    if img.source is None or img.source == seg.source:
        source = looked_at
    elif _frame(img.source) and _frame(seg.source):
        loc = (*at, "source")
        raise SpecError([Problem("source and mask.segment.source are two different frames of a video",
                                 loaded.where(*loc), loaded.path_text(*loc),
                                 "give both the same frame, or extract one of them to a file")])
    else:
        source = resolve(img.source, (*at, "source"))
    return {"source": source, "mask": _segment_nodes(graph, loaded, scene.id, seg, looked_at, at)}


def _frame(value: object) -> bool:
    return isinstance(value, m.PictureSource) and value.frame is not None


def _segment_nodes(graph: Graph, loaded: LoadedSpec, sid: str, seg: m.SegmentFrom,
                   picture: Input, at: tuple) -> NodeInput:
    """The detect and segment stages of ``seg``: those of an earlier scene that looks for the same
    phrase at the same threshold in the same picture (an avatar in many styles has one mask)."""
    params = {"text": seg.text, "threshold": seg.threshold}
    for node in graph:
        if node.kind == "detect" and node.params == params and node.inputs == {"image": picture}:
            return NodeInput(f"{node.scene}.segment")
    where = loaded.where(*at, "mask", "segment")
    graph.add(StageNode(
        id=f"{sid}.detect", kind="detect", scene=sid, model_role="detect", params=params,
        inputs={"image": picture},
        publish=f"scenes/{sid}.boxes.json", where=where))
    graph.add(StageNode(
        id=f"{sid}.segment", kind="segment", scene=sid, model_role="segment", params={},
        inputs={"image": picture, "boxes": NodeInput(f"{sid}.detect")},
        publish=f"scenes/{sid}.mask.png", where=where))
    return NodeInput(f"{sid}.segment")


def edit_params(img: m.ImageStage) -> dict:
    """The keyed settings of a masked edit: the model runs at the crop's size."""
    size, padding = img.inpaint.size, img.inpaint.padding
    target = -(-size // padding) * padding if padding else size      # rounded up to the padding
    return {"width": target, "height": target, "inpaint": img.inpaint.model_dump()}
