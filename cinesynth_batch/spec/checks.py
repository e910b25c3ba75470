"""Checks of an expanded spec that need no disk: size limits (from ``[limits]`` of
``cinesynth.toml``), the trust lists a spec may only narrow, the output folder and LoRA names.

Imports no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config import Limits, Trust
from ..errors import Problems
from . import trust as t
from .references import edits
from .rules import RES_RE
from .yamlpos import LDict, format_path, locate

FRAME_KEYS = ("frames", "infer_frames", "frame_window", "max_frames", "lengths")
SECOND_KEYS = ("duration", "start", "end", "at", "crossfade")
TEXT_KEYS = ("prompt", "negative_prompt", "text", "instruct")
NAME_KEYS = ("id", "project", "name", "preset")
SKIP_KEYS = ("vars", "presets", "matrix")


def check_limits(data: LDict, sources: list[int], limits: Limits, problems: Problems) -> None:
    """Every number and text of the expanded spec against ``[limits]`` (cinesynth.toml)."""
    for loc, key, value in _leaves(data, ()):
        problem = _limit_problem(key, value, limits)
        if problem:
            message, name = problem
            problems.add(f"{message}, over the limit of {getattr(limits, name)} ({name})",
                         locate(data, loc), format_path(loc, sources),
                         hint=f"lower it, or raise [limits] {name} in cinesynth.toml")


def _leaves(node: Any, loc: tuple[Any, ...]):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SKIP_KEYS and len(loc) <= 2:
                continue
            yield from _leaves(value, (*loc, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*loc, i))
    else:
        key = next((part for part in reversed(loc) if isinstance(part, str)), "")
        yield loc, key, node


NUMBER_LIMITS = {"steps": "steps", "segments": "segments", "width": "side", "height": "side", "size": "side",
                 **{k: "frames" for k in FRAME_KEYS}, **{k: "duration" for k in SECOND_KEYS}}


def _limit_problem(key: str, value: Any, limits: Limits) -> tuple[str, str] | None:
    bound = NUMBER_LIMITS.get(key)
    if isinstance(value, str) and bound:
        value = _number(value)                        # YAML reads 1e9 as text; the model does not
    if isinstance(value, str):
        return _text_problem(key, value, limits)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None                                   # the model refuses inf and nan
    if bound and value > getattr(limits, bound):
        return f"{value:g}" if isinstance(value, float) else f"{value}", bound
    return None


def _number(text: str) -> Any:
    try:
        return float(text) if len(text) < 64 else text
    except ValueError:
        return text


def _text_problem(key: str, value: str, limits: Limits) -> tuple[str, str] | None:
    if key in TEXT_KEYS:
        return (f"the text is {len(value)} characters", "prompt_chars") \
            if len(value) > limits.prompt_chars else None
    if key in NAME_KEYS:
        return (f"the name is {len(value)} characters", "name_chars") \
            if len(value) > limits.name_chars else None
    if len(value) > limits.path_chars:
        return f"the value is {len(value)} characters", "path_chars"
    if key in ("resolution", "fit"):
        match = RES_RE.match(value.strip())
        if match and max(int(match.group(1)), int(match.group(2))) > limits.side:
            return f"'{value}' has a side of {max(int(match.group(1)), int(match.group(2)))} pixels", "side"
    return None


def narrow_trust(data: LDict, spec_dir: Path, root: Path, operator: Trust, problems: Problems) -> Trust:
    """The folders and hosts this spec may reach: the operator's, narrowed by the spec's lists.
    An item the operator did not allow is a problem at that item."""
    paths = list(operator.allow_paths)
    spec_paths = data.get("allow_paths")
    if isinstance(spec_paths, list):
        paths = []
        for j, item in enumerate(spec_paths):
            if not isinstance(item, str):
                continue
            where, path = locate(data, ("allow_paths", j)), f"allow_paths[{j}]"
            bad = t.path_problem(item)
            folder = t.resolve_inside(spec_dir, item) if bad is None else None
            if folder is None:
                problems.add(f"'{t.printable(item)}': {bad.message if bad else 'not a usable path'}",
                             where, path, hint=bad.hint if bad else None)
            elif not any(t.inside(folder, a) for a in (root, *operator.allow_paths)):
                problems.add(f"'{item}' is not a folder the operator allowed; a spec may only narrow "
                             "allow_paths", where, path,
                             hint="ask for it in cinesynth.toml [trust] allow_paths or with --allow-path")
            else:
                paths.append(folder)
    hosts = list(operator.allow_hosts)
    spec_hosts = data.get("allow_hosts")
    if isinstance(spec_hosts, list):
        hosts = []
        for j, item in enumerate(spec_hosts):
            if not isinstance(item, str):
                continue
            where, path = locate(data, ("allow_hosts", j)), f"allow_hosts[{j}]"
            host = item.strip().lower().rstrip(".")
            if not t.valid_host(host):
                problems.add(f"'{t.printable(item)}' is not a host name", where, path,
                             hint="write a bare host such as media.example.org")
            elif not t.host_allowed(host, operator.allow_hosts):
                listed = ", ".join(operator.allow_hosts) or "none"
                problems.add(f"host '{host}' is not one the operator allowed ({listed}); a spec may "
                             "only narrow allow_hosts", where, path,
                             hint="ask for it in cinesynth.toml [trust] allow_hosts or with --allow-host")
            else:
                hosts.append(host)
    return Trust(tuple(paths), tuple(hosts))


def check_output(data: LDict, spec_dir: Path, root: Path, problems: Problems) -> None:
    """``output:`` is a folder inside the project."""
    out = data.get("output")
    if not isinstance(out, str):
        return
    where = locate(data, ("output",))
    bad = t.path_problem(out)
    folder = t.resolve_inside(spec_dir, out) if bad is None else None
    if folder is None:
        problems.add(f"'{t.printable(out)}': {bad.message if bad else 'not a usable path'}", where, "output",
                     hint=bad.hint if bad else None)
    elif folder == root:
        problems.add(f"output folder '{out}' is the project root itself", where, "output",
                     hint="write a folder inside the project, e.g. outputs/NAME")
    elif root not in folder.parents:
        problems.add(f"output folder '{out}' is outside the project ({root})", where, "output",
                     hint="write a folder inside the project, e.g. outputs/NAME")
    elif folder == spec_dir or folder in spec_dir.parents:
        problems.add(f"output folder '{out}' holds the spec itself (and its cache, .cinesynth)", where, "output",
                     hint="write a folder of its own, e.g. outputs/NAME")
    elif ".cinesynth" in folder.relative_to(root).parts:
        problems.add(f"output folder '{out}' is inside the cache (.cinesynth)", where, "output",
                     hint="write a folder of its own, e.g. outputs/NAME")
    elif folder.exists() and not folder.is_dir():
        problems.add(f"output folder '{out}' is a file", where, "output",
                     hint="write a folder of its own, e.g. outputs/NAME")


def check_lora_names(data: LDict, sources: list[int], problems: Problems) -> None:
    """A LoRA ``name`` is a name inside the LoRA folders, never a path out of them."""
    scenes = data.get("scenes") if isinstance(data.get("scenes"), list) else []
    for i, scene in enumerate(scenes):
        stages = [(("scenes", i, kind), scene.get(kind) if isinstance(scene, dict) else None)
                  for kind in ("image", "video", "lipsync", "animate")]
        stages += list(edits(stages[0][1], stages[0][0]))       # inline edits of the image's references
        for at, stage in stages:
            loras = stage.get("loras") if isinstance(stage, dict) else None
            for j, lora in enumerate(loras if isinstance(loras, list) else []):
                name = lora.get("name") if isinstance(lora, dict) else None
                bad = t.lora_name_problem(name) if isinstance(name, str) else None
                if bad is not None:
                    loc = (*at, "loras", j, "name")
                    problems.add(f"LoRA '{t.printable(name)}': {bad.message}", locate(data, loc),
                                 format_path(loc, sources), hint=bad.hint)
