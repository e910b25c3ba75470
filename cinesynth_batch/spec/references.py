"""The references of an image stage in the expanded YAML tree: presets of inline edits, and the
checks that need the whole spec (scene ids, ``{reference: N}`` places, files).

An image stage's ``references`` are what the spec gives; ``prepare`` (set by presets such as
``avatar_prepare``) is the list the model sees instead, made from the given ones through
``{reference: N}``. Both may nest: a ``{face_crop: {source}}`` or an ``{edit: {...}}`` holds
references of its own. A masked edit's pictures (``source``, ``mask.segment.source``) may name a
scene too. ``{stage: ID}`` names a stage of the plan and is checked when the plan is
built (``plan/references.py``). Imports no torch.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

from ..errors import Problems
from .presets import merge
from .yamlpos import LDict, format_path, locate

LISTS = ("references", "prepare")


def items(stage: Any, loc: tuple, in_prepare: bool = False) -> Iterator[tuple[tuple, Any, bool]]:
    """Every image source under an image stage (or an inline edit), depth first:
    ``(loc, value, in_prepare)``; nested sources come after the item that holds them."""
    if not isinstance(stage, dict):
        return
    for name in LISTS:
        values = stage.get(name)
        for i, value in enumerate(values if isinstance(values, list) else []):
            yield from _item((*loc, name, i), value, in_prepare or name == "prepare")


def _item(loc: tuple, value: Any, in_prepare: bool) -> Iterator[tuple[tuple, Any, bool]]:
    yield loc, value, in_prepare
    if not isinstance(value, dict):
        return
    crop = value.get("face_crop")
    if isinstance(crop, dict) and "source" in crop:
        yield from _item((*loc, "face_crop", "source"), crop["source"], in_prepare)
    edit = value.get("edit")
    if isinstance(edit, dict):
        yield from items(edit, (*loc, "edit"), in_prepare)


def pictures(image: dict, loc: tuple) -> Iterator[tuple[tuple, Any]]:
    """A masked edit's pictures that may name another scene's image: ``source`` and the
    segment's ``source`` (``(loc, value)``, given or not)."""
    yield (*loc, "source"), image.get("source")
    mask = image.get("mask")
    segment = mask.get("segment") if isinstance(mask, dict) else None
    if isinstance(segment, dict):
        yield (*loc, "mask", "segment", "source"), segment.get("source")


def edits(stage: Any, loc: tuple) -> Iterator[tuple[tuple, Any]]:
    """Every inline ``{edit: {...}}`` under an image stage: ``(loc, edit)``."""
    for at, value, _ in items(stage, loc):
        if isinstance(value, dict) and isinstance(value.get("edit"), dict):
            yield (*at, "edit"), value["edit"]


def apply_edit_presets(stage: Any, resolve: Callable[[Any, Any, str], Any], path: str) -> None:
    """Merge the preset of every inline ``{edit: {preset: NAME}}`` under the edit, in place
    (``resolve(name, where, path)`` -> the preset's mapping or None)."""
    if not isinstance(stage, dict):
        return
    for name in LISTS:
        values = stage.get(name)
        for i, value in enumerate(values if isinstance(values, list) else []):
            _edit_presets(value, resolve, f"{path}.{name}[{i}]")


def _edit_presets(value: Any, resolve: Callable[[Any, Any, str], Any], path: str) -> None:
    if not isinstance(value, LDict):
        return
    crop = value.get("face_crop")
    if isinstance(crop, LDict):
        _edit_presets(crop.get("source"), resolve, f"{path}.face_crop.source")
    edit = value.get("edit")
    if not isinstance(edit, LDict):
        return
    if "preset" in edit:
        preset = resolve(edit["preset"], edit.where_value("preset"), f"{path}.edit.preset")
        if preset is not None:
            edit = merge(preset, edit)
            value.set("edit", edit, value.key_locs.get("edit"), value.value_locs.get("edit"))
    apply_edit_presets(edit, resolve, f"{path}.edit")


def check_references(data: Any, sources: list[int], problems: Problems,
                     check_file: Callable[[Any, tuple, str], None]) -> None:
    """Across the spec: ``{scene: ID}`` (in the references, a masked edit's ``source`` and its
    segment's ``source``) names a scene with an image stage, ``{reference: N}``
    stands only in ``prepare`` and names a given reference, every given reference is used when
    ``prepare`` is set, and paths are checked as every input file is (``check_file``)."""
    scenes = data.get("scenes") if isinstance(data.get("scenes"), list) else []
    ids = [s.get("id") for s in scenes if isinstance(s, dict) and isinstance(s.get("id"), str)]
    with_image = {s["id"] for s in scenes if isinstance(s, dict) and isinstance(s.get("id"), str)
                  and isinstance(s.get("image"), dict)}
    for i, scene in enumerate(scenes):
        image = scene.get("image") if isinstance(scene, dict) else None
        if not isinstance(image, dict):
            continue
        base = ("scenes", i, "image")
        given = image.get("references") if isinstance(image.get("references"), list) else []
        used: set[int] = set()

        def add(message: str, loc: tuple, hint: str | None = None) -> None:
            problems.add(message, locate(data, loc), format_path(loc, sources), hint)

        def check_scene(value: dict, loc: tuple) -> None:
            scene_id = value.get("scene")
            if isinstance(scene_id, str) and scene_id not in with_image:
                if scene_id in ids:
                    add(f"scene '{scene_id}' has no image stage to refer to", (*loc, "scene"),
                        "refer to a scene with an 'image', or to a stage with {stage: ID}")
                else:
                    close = difflib.get_close_matches(scene_id, ids, n=1)
                    add(f"unknown scene '{scene_id}'", (*loc, "scene"),
                        f"did you mean '{close[0]}'?" if close else "scene ids: " + ", ".join(ids))

        for loc, value in pictures(image, base):        # files are checked with every input file
            if isinstance(value, dict):
                check_scene(value, loc)
        for loc, value, in_prepare in items(image, base):
            if isinstance(value, str):
                check_file(value, loc, "reference")
                continue
            if not isinstance(value, dict):
                continue
            if isinstance(value.get("frame"), dict):
                check_file({"frame": value["frame"]}, loc, "reference")
            check_scene(value, loc)
            n = value.get("reference")
            if isinstance(n, int) and not isinstance(n, bool):
                if not in_prepare:
                    add("{reference: N} stands for one of the stage's references and belongs in "
                        "image.prepare only", (*loc, "reference"), "give the image itself here")
                elif n > len(given):
                    add(f"reference {n}, but image.references has {len(given)} item(s)", (*loc, "reference"),
                        f"give {n} reference(s): prepare{_preset_note(image)} makes the model's references "
                        "from them")
                else:
                    used.add(n)
        if image.get("prepare") is not None:
            if not given:
                add(f"image.prepare{_preset_note(image)} makes the references from the ones you give: "
                    "image.references is empty", (*base,), "add references: [PHOTO]")
            for k in range(1, len(given) + 1):
                if k not in used:
                    add(f"references[{k - 1}] is not used: prepare{_preset_note(image)} takes "
                        f"{_takes(used)}", (*base, "references", k - 1),
                        "remove it, or give it in a scene of its own")


def _preset_note(image: dict) -> str:
    preset = image.get("preset")
    return f" (preset {preset})" if isinstance(preset, str) else ""


def _takes(used: set[int]) -> str:
    if not used:
        return "none of them"
    return "reference " + ", ".join(str(n) for n in sorted(used))
