"""The references of an image stage as inputs: files, frames, other stages' images, face crops
and inline edits, in the order the spec gives them (image 1 first).

Node ids, for scene ``S`` (``N`` counts from 1):

* ``S.image`` — the stage itself (a masked edit's source and mask come from ``plan/masks.py``, its
  pictures resolved by ``picture``: files, frames, ``{scene}`` and ``{stage}`` as for references);
  ``S.fit`` — its ``fit`` (after ``S.upscale``, if any);
* ``S.references_N`` — a ``{face_crop}`` (kind ``face_crop``) or ``{edit}`` (kind ``image``) given
  as reference N; ``S.prepare_N`` — the same for item N of ``prepare``;
* ``S.references_N_frame`` — a ``{frame}`` given as reference N;
* inside an item ``X``: ``X_source`` (what a face crop crops, when a stage makes it) and
  ``X_references_N`` (an inline edit's own references).

``{scene: ID}`` is that scene's image as the scene ends it (``ID.fit``, else ``ID.upscale``, else
``ID.image``: what its video starts from); ``{stage: ID}`` any stage that makes an image
(``IMAGE_KINDS``). The same referenced stage is one node however many edits use it. Both are
checked once every scene is planned (``check``): an unknown stage, one that makes no image, or a
chain of references that comes back to where it started is an error at the reference.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from ..errors import Problem, SpecError
from ..preprocess.face_crop import detector_identity
from ..spec import model as m
from ..spec.load import LoadedSpec
from ..spec.params import IMAGE_ROLES, FaceCropParams, FitParams
from ..spec.rules import parse_picture_size
from .graph import FileInput, Graph, NodeInput, StageNode
from .masks import edit_inputs, edit_params
from .sources import source_input

IMAGE_KINDS = ("image", "upscale", "fit", "face_crop", "extract_frame")

Input = FileInput | NodeInput


def final_still(scene: m.Scene) -> str | None:
    """The id of the stage that makes a scene's image as the scene ends it, or None."""
    img = scene.image
    if img is None:
        return None
    if img.fit:
        return f"{scene.id}.fit"
    return f"{scene.id}.upscale" if img.upscale else f"{scene.id}.image"


@dataclass
class _Link:
    """A reference to another stage: ``consumer`` takes ``target``'s image (spec place ``loc``)."""

    consumer: str
    target: str
    loc: tuple
    by_stage: bool


@dataclass
class ReferencePlanner:
    """Adds the nodes an image stage's references need; ``check`` once every scene is planned."""

    graph: Graph
    loaded: LoadedSpec
    seed_for: Callable[[str], int]
    links: list[_Link] = field(default_factory=list)

    # -- the image stages ------------------------------------------------------------------------
    def image_node(self, scene: m.Scene, stage: m.ImageEdit, node_id: str, loc: tuple,
                   size: tuple[int, int], publish: str, given: list | None = None) -> StageNode:
        """An image node for ``stage`` (the scene's ``image`` or an inline edit) with its
        references as the ``references`` input (none: no input, as before references existed)."""
        items = stage.references
        at, name = (*loc, "references"), "references"
        if isinstance(stage, m.ImageStage) and stage.prepare is not None:
            given = self._given(scene, stage, loc)
            items, at, name = stage.prepare, (*loc, "prepare"), "prepare"
        prefix = "" if isinstance(stage, m.ImageStage) else node_id.split(".", 1)[1] + "_"
        refs = tuple(self._one(scene, value, (*at, i), f"{prefix}{name}_{i + 1}", given, node_id)
                     for i, value in enumerate(items))
        spec = self.loaded.spec
        seed = next((v for v in (stage.seed, scene.seed, spec.defaults.seed) if v is not None), -1)
        params = {
            "prompt": stage.full_prompt(), "negative_prompt": stage.negative_prompt, "steps": stage.steps,
            "guidance": stage.guidance,
            "width": stage.width or (None if refs else size[0]),
            "height": stage.height or (None if refs else size[1]),
            "seed": seed if seed >= 0 else self.seed_for(node_id),
            "loras": [{"name": lo.name, "weight": lo.weight} for lo in stage.loras],
        }
        if stage.model != "distilled":              # keyed only when set: earlier keys stay
            params["model"] = stage.model
        inputs: dict = {"references": refs} if refs else {}
        if isinstance(stage, m.ImageStage) and stage.mask is not None:      # a masked edit (plan/masks.py)
            inputs.update(edit_inputs(self.graph, self.loaded, scene, loc,
                                      lambda value, at: self.picture(value, at, node_id)))
            params.update(edit_params(stage))
        node = StageNode(
            id=node_id, kind="image", scene=scene.id, model_role=IMAGE_ROLES[stage.model], params=params,
            inputs=inputs, loras=tuple((lo.name, "img") for lo in stage.loras),
            runtime={} if isinstance(stage, m.ImageStage) else {"loras_at": list(loc)},
            publish=publish, where=self.loaded.where(*loc))
        return self.graph.add(node)

    def fit_node(self, scene: m.Scene, index: int, still: NodeInput) -> NodeInput:
        """``S.fit``: the scene's image cropped to ``fit``'s aspect and resized to it."""
        assert scene.image is not None and scene.image.fit
        width, height = parse_picture_size(scene.image.fit)
        node_id = f"{scene.id}.fit"
        self.graph.add(StageNode(
            id=node_id, kind="fit", scene=scene.id, params=FitParams(width=width, height=height).model_dump(),
            inputs={"image": still}, publish=f"scenes/{scene.id}_{width}x{height}.png",
            where=self.loaded.where("scenes", self._index(scene), "image", "fit")))
        return NodeInput(node_id)

    # -- one reference ---------------------------------------------------------------------------
    def _given(self, scene: m.Scene, stage: m.ImageStage, loc: tuple) -> list:
        """The stage's own references, resolved when ``{reference: N}`` first asks for one."""
        return [_Lazy(lambda i=i, v=v: self._one(scene, v, (*loc, "references", i), f"references_{i + 1}",
                                                 None, f"{scene.id}.image"))
                for i, v in enumerate(stage.references)]

    def _one(self, scene: m.Scene, value: str | m.Reference, loc: tuple, name: str, given: list | None,
             consumer: str) -> Input:
        if isinstance(value, str):
            return source_input(self.graph, self.loaded, value, loc)
        kind = value.kind()
        if kind == "frame":
            return source_input(self.graph, self.loaded, m.ImageSource(frame=value.frame), loc, name)
        if kind in ("scene", "stage"):
            return self._linked(value, loc, consumer)
        if kind == "reference":
            n = value.reference or 0
            if given is None or not 1 <= n <= len(given):
                self._fail(f"reference {n} has no image here: {{reference: N}} names one of the stage's "
                           "references, in image.prepare", (*loc, "reference"))
            return given[n - 1].get()
        node_id = f"{scene.id}.{name}"
        if kind == "face_crop":
            assert value.face_crop is not None
            source = self._one(scene, value.face_crop.source, (*loc, "face_crop", "source"), f"{name}_source",
                               given, node_id)
            self.graph.add(StageNode(
                id=node_id, kind="face_crop", scene=scene.id,
                params=FaceCropParams(detector=detector_identity()).model_dump(), inputs={"image": source},
                publish=f"scenes/{node_id}.png", where=self.loaded.where(*loc)))
            return NodeInput(node_id)
        assert value.edit is not None
        self.image_node(scene, value.edit, node_id, (*loc, "edit"), self._size(scene),
                        f"scenes/{node_id}.png", given)
        return NodeInput(node_id)

    def picture(self, value: str | m.PictureSource, loc: tuple, consumer: str) -> Input:
        """A masked edit's picture or mask (``image.source``, ``image.mask``, the segment's
        ``source``) for the stage ``consumer``: a file or URL, a frame, or another scene's or
        stage's image, resolved and checked as a reference is."""
        if not isinstance(value, m.PictureSource):
            return source_input(self.graph, self.loaded, value, loc)
        if value.kind() == "frame":
            return source_input(self.graph, self.loaded, m.ImageSource(frame=value.frame), loc)
        return self._linked(value, loc, consumer)

    def _linked(self, value: m.Reference | m.PictureSource, loc: tuple, consumer: str) -> NodeInput:
        """``{scene: ID}`` or ``{stage: ID}``: the stage that makes that image (checked in ``check``)."""
        kind = value.kind()
        target = value.stage if kind == "stage" else self._scene_still(value.scene or "", loc)
        assert target is not None
        self.links.append(_Link(consumer, target, (*loc, kind), kind == "stage"))
        return NodeInput(target)

    def _scene_still(self, scene_id: str, loc: tuple) -> str:
        target = next((s for s in self.loaded.spec.scenes if s.id == scene_id), None)
        still = final_still(target) if target is not None else None
        if still is None:
            self._fail(f"scene '{scene_id}' has no image stage to refer to" if target is not None
                       else f"unknown scene '{scene_id}'", (*loc, "scene"))
        assert still is not None
        return still

    # -- once every scene is planned -------------------------------------------------------------
    def check(self) -> None:
        """Every ``{stage: ID}`` names a stage that makes an image, and no reference leads back
        to the stage that takes it."""
        for link in self.links:
            if not link.by_stage:
                continue
            node = self.graph.nodes.get(link.target)
            if node is None:
                images = [n.id for n in self.graph if n.kind in IMAGE_KINDS]
                close = difflib.get_close_matches(link.target, images, n=1)
                self._fail(f"unknown stage '{link.target}'", link.loc,
                           f"did you mean '{close[0]}'?" if close else "image stages: " + ", ".join(images))
            elif node.kind not in IMAGE_KINDS:
                self._fail(f"stage '{link.target}' makes a {node.kind} output, not an image", link.loc,
                           "refer to a stage of kind " + ", ".join(IMAGE_KINDS))
        for link in self.links:
            cycle = self._path(link.target, link.consumer)
            if cycle is not None:
                self._fail("reference cycle: " + " -> ".join([link.consumer, *cycle]), link.loc,
                           "an image cannot be made from itself: refer to another scene or stage")

    def _path(self, start: str, goal: str) -> list[str] | None:
        """Stage ids from ``start`` down its inputs to ``goal``, if it depends on it."""
        seen: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            nid, path = stack.pop()
            if nid == goal:
                return path
            if nid in seen or nid not in self.graph.nodes:
                continue
            seen.add(nid)
            stack.extend((up, [*path, up]) for up in self.graph[nid].upstream())
        return None

    # -- helpers ---------------------------------------------------------------------------------
    def _size(self, scene: m.Scene) -> tuple[int, int]:
        return m.parse_resolution(scene.resolution or self.loaded.spec.defaults.resolution)

    def _index(self, scene: m.Scene) -> int:
        return next(i for i, s in enumerate(self.loaded.spec.scenes) if s is scene)

    def _fail(self, message: str, loc: tuple, hint: str | None = None) -> None:
        raise SpecError([Problem(message, self.loaded.where(*loc), self.loaded.path_text(*loc), hint)])


@dataclass
class _Lazy:
    """An input made on first use (a given reference that ``prepare`` may name several times)."""

    make: Callable[[], Input]
    made: Input | None = None

    def get(self) -> Input:
        if self.made is None:
            self.made = self.make()
        return self.made
