"""Load a spec file: YAML -> matrix -> presets -> templates -> pydantic -> file checks.

Every step adds to one list of problems; ``load_spec`` raises a single ``SpecError`` holding
all of them, each with ``file:line:col``.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import Problems, SpecError, Where
from . import model as m
from .presets import PresetLibrary, merge
from .templating import Templater
from .yamlpos import LDict, LList, load_yaml, locate, locate_key

STAGE_KEYS = ("image", "video", "lipsync", "animate", "audio")
SOURCE_KEYS = ("frame", "separate", "extract")   # mappings whose `source` is a file or URL
ROOT_MARKERS = (".git", "pyproject.toml", "cinesynth.toml")


@dataclass
class LoadedSpec:
    """A valid spec and where it lives."""

    spec: m.Spec
    path: Path          # absolute path of the spec file
    display: str        # the path as the user should read it
    root: Path          # project root (asset paths may not leave it)
    raw: Any            # the expanded YAML tree, for positions
    sources: list[int]  # for each expanded scene, the index of the scene as written

    @property
    def spec_dir(self) -> Path:
        return self.path.parent

    def where(self, *path: Any) -> Where | None:
        return locate(self.raw, path)

    def path_text(self, *path: Any) -> str:
        return format_path(path, self.sources)


def display_path(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:  # pragma: no cover - other drive on Windows
        return str(p)


def find_project_root(spec_dir: Path) -> Path:
    env = os.environ.get("CINESYNTH_PROJECT")
    if env:
        return Path(env).resolve()
    for d in [spec_dir, *spec_dir.parents]:
        if any((d / marker).exists() for marker in ROOT_MARKERS):
            return d
    return spec_dir


def load_spec(path: str | Path, *, check_files: bool = True) -> LoadedSpec:
    p = Path(path)
    display = str(path)
    problems = Problems()
    if not p.is_file():
        problems.add("spec file not found", path=display, hint="check the path")
        raise SpecError(problems.items)
    abspath = p.resolve()
    root = find_project_root(abspath.parent)
    raw = load_yaml(abspath, display, problems)
    if problems:
        raise SpecError(problems.items)
    if not isinstance(raw, LDict):
        problems.add("a spec must be a mapping with 'project' and 'scenes'", Where(display, 1, 1))
        raise SpecError(problems.items)

    expanded, sources = expand(raw, abspath.parent, root, problems)
    spec = validate(expanded, problems, sources)
    if check_files:
        check_semantics(expanded, sources, abspath.parent, root, problems)
    problems.raise_if_any()
    assert spec is not None
    return LoadedSpec(spec=spec, path=abspath, display=display, root=root, raw=expanded,
                      sources=sources)


# --- expansion -----------------------------------------------------------------------------

def expand(raw: LDict, spec_dir: Path, root: Path, problems: Problems) -> tuple[LDict, list[int]]:
    """Normalise shorthands, expand matrices, merge presets, render templates.

    Returns the expanded tree and, for each expanded scene, the index of the scene it was
    written as (matrix scenes share one), so errors name the scene the user wrote.
    """
    data = copy.deepcopy(raw)
    templater = Templater()
    variables = data.get("vars") or {}
    if not isinstance(variables, dict):
        problems.add("'vars' must be a mapping of names to values", data.where_value("vars"), "vars")
        variables = {}
    base_ctx = {"vars": variables, **variables, "project": data.get("project")}
    inline = data.get("presets") or {}
    if not isinstance(inline, dict):
        problems.add("'presets' must be a mapping of names to presets", data.where_value("presets"),
                     "presets")
        inline = {}
    library = PresetLibrary(spec_dir, root, inline, display_path)

    scenes = data.get("scenes")
    sources: list[int] = []
    if isinstance(scenes, list):
        data["scenes"] = _expand_scenes(scenes, library, templater, base_ctx, problems, sources)
    templater.render_tree(data, base_ctx, problems, "",
                          skip=frozenset({"scenes", "vars", "presets", "project"}))
    asm = data.get("assemble")
    if isinstance(asm, LDict):
        wrapped = LList([asm], loc=asm.loc)
        wrapped.item_locs.append(asm.loc)
        data["assemble"] = wrapped
    return data, sources


def _box(parent: LDict, key: str) -> LDict:
    box = LDict(loc=parent.loc)
    box.set(key, parent[key], parent.key_locs.get(key), parent.value_locs.get(key))
    return box


def _expand_scenes(scenes: LList, library: PresetLibrary, templater: Templater,
                   base_ctx: dict[str, Any], problems: Problems, sources: list[int]) -> LList:
    out = LList(loc=getattr(scenes, "loc", None))
    for index, scene in enumerate(scenes):
        where = scenes.where_item(index) if isinstance(scenes, LList) else None
        if not isinstance(scene, LDict):
            out.append(scene)
            out.item_locs.append(where)
            sources.append(index)
            continue
        for combo in _matrix_combos(scene, f"scenes[{index}]", problems):
            s = copy.deepcopy(scene)
            s.pop("matrix", None)
            ctx = {**base_ctx, **combo, "matrix": combo, "index": len(out)}
            s = _apply_presets(s, library, f"scenes[{index}]", problems)
            if isinstance(s.get("id"), str):
                s["id"] = templater.render_tree(_box(s, "id"), ctx, problems, f"scenes[{index}]")["id"]
            ctx["scene"] = {"id": s.get("id"), "index": len(out)}
            templater.render_tree(s, ctx, problems, f"scenes[{index}]", skip=frozenset({"id"}))
            if isinstance(s.get("audio"), str):
                a = LDict(loc=s.where_value("audio"))
                a.set("file", s["audio"], s.where_value("audio"), s.where_value("audio"))
                s["audio"] = a
            out.append(s)
            out.item_locs.append(where)
            sources.append(index)
    return out


def _matrix_combos(scene: LDict, path: str, problems: Problems) -> list[dict[str, Any]]:
    matrix = scene.get("matrix")
    if matrix is None:
        return [{}]
    if not isinstance(matrix, dict) or not matrix:
        problems.add("'matrix' must map names to lists of values", scene.where_value("matrix"),
                     f"{path}.matrix", hint="matrix: {color: [red, blue]}")
        return [{}]
    names, values = [], []
    for name, vals in matrix.items():
        if not isinstance(vals, list) or not vals:
            problems.add(f"matrix '{name}' must be a non-empty list", matrix.where_value(name),
                         f"{path}.matrix.{name}", hint=f"{name}: [a, b]")
            return [{}]
        names.append(name)
        values.append(vals)
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def _apply_presets(scene: LDict, library: PresetLibrary, path: str, problems: Problems) -> LDict:
    if "preset" in scene:
        preset = library.resolve(scene["preset"], scene.where_value("preset"), f"{path}.preset",
                                 problems)
        if preset is not None:
            scene = merge(preset, scene)
    for key in STAGE_KEYS:
        stage = scene.get(key)
        if isinstance(stage, LDict) and "preset" in stage:
            preset = library.resolve(stage["preset"], stage.where_value("preset"),
                                     f"{path}.{key}.preset", problems)
            if preset is not None:
                scene.set(key, merge(preset, stage), scene.key_locs.get(key),
                          scene.value_locs.get(key))
    return scene


# --- validation ----------------------------------------------------------------------------

def validate(data: LDict, problems: Problems, sources: list[int]) -> m.Spec | None:
    try:
        return m.Spec.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            problems.items.append(_problem_from_pydantic(err, data, sources))
        return None


def format_path(loc: tuple[Any, ...], sources: list[int] | None = None) -> str:
    """``('scenes', 3, 'video')`` -> ``scenes[1].video`` (the index the user wrote)."""
    if sources and len(loc) > 1 and loc[0] == "scenes" and isinstance(loc[1], int) \
            and loc[1] < len(sources):
        loc = ("scenes", sources[loc[1]], *loc[2:])
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem_from_pydantic(err: dict[str, Any], data: LDict, sources: list[int]):
    from ..errors import Problem

    loc = tuple(part for part in err["loc"] if part not in (m.PLAIN_TAG, m.MAPPING_TAG))
    kind = err["type"]
    value = err.get("input")
    path = format_path(loc, sources)
    if kind == "extra_forbidden":
        key = loc[-1]
        fields = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else (
            "allowed here: " + ", ".join(fields) if fields else None)
        return Problem(f"unknown key '{key}'", locate_key(data, list(loc)), format_path(loc[:-1], sources),
                       hint)
    where = locate(data, loc)
    if kind == "missing":
        return Problem(f"missing required key '{loc[-1]}'", where, format_path(loc[:-1], sources),
                       hint=f"add '{loc[-1]}:'")
    msg = err["msg"]
    if kind in ("value_error", "assertion_error"):
        text = msg.split(", ", 1)[1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
        main, _, hint = text.partition(" (")
        return Problem(main, where, path, hint.rstrip(")") if hint else None)
    shown = _show(value)
    return Problem(f"{shown}: {_lower(msg)}", where, path, _type_hint(kind, loc))


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lower(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


def _type_hint(kind: str, loc: tuple[Any, ...]) -> str | None:
    return {
        "int_parsing": "write a whole number",
        "int_from_float": "write a whole number",
        "float_parsing": "write a number",
        "bool_parsing": "write true or false",
        "string_type": "write text (quote it if YAML reads it as something else)",
        "list_type": "write a list: [a, b] or one '- item' per line",
        "dict_type": "write a mapping: key: value",
        "model_type": "write a mapping: key: value",
        "literal_error": None,
        "too_short": "add at least one item",
    }.get(kind)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    cls: Any = m.Spec
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return []
        cls = _model_in(cls.model_fields[part].annotation)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --- semantic checks -----------------------------------------------------------------------

def check_semantics(data: LDict, sources: list[int], spec_dir: Path, root: Path,
                    problems: Problems) -> None:
    """Checks across fields: unique ids, files that exist inside the project, references."""
    scenes = data.get("scenes") if isinstance(data.get("scenes"), list) else []
    allow = data.get("allow_paths") if isinstance(data.get("allow_paths"), list) else []
    allowed = [root, *[(spec_dir / a).resolve() for a in allow if isinstance(a, str)]]
    hosts = data.get("allow_hosts", list(m.DEFAULT_ALLOW_HOSTS))

    def check_file(value: Any, loc: tuple[Any, ...], what: str, url_ok: bool = True) -> None:
        if isinstance(value, dict):  # {file}, {frame: {source}}, {separate: {source}}, {extract: {source}}
            for key, inner in value.items():
                if isinstance(inner, dict) and key in SOURCE_KEYS:
                    check_file(inner.get("source"), (*loc, key, "source"), f"{key} source")
                elif key == "file":
                    check_file(inner, (*loc, key), what, url_ok)
            return
        if not isinstance(value, str):
            return
        path = format_path(loc, sources)
        where = locate(data, loc)
        if "://" in value:
            problem = url_problem(value, hosts if isinstance(hosts, list) else [], url_ok)
            if problem:
                problems.add(f"{what} '{value}': {problem[0]}", where, path, hint=problem[1])
            return
        f = (spec_dir / value).resolve()
        if not any(_inside(f, a) for a in allowed):
            problems.add(f"{what} '{value}' is outside the project ({root})", where, path,
                         hint="move it into the project or add its folder to allow_paths")
        elif not f.is_file():
            problems.add(f"{what} '{value}' not found", where, path,
                         hint=_near_files(f) or f"paths are relative to the spec's folder "
                                                f"{display_path(spec_dir)}")

    seen: dict[str, int] = {}
    for i, scene in enumerate(scenes):
        if not isinstance(scene, dict):
            continue
        sid = scene.get("id")
        if isinstance(sid, str):
            if sid in seen:
                problems.add(f"duplicate scene id '{sid}'", locate(data, ("scenes", i, "id")),
                             format_path(("scenes", i, "id"), sources),
                             hint=f"scenes[{sources[seen[sid]]}] already uses it; with a matrix, "
                                  "put a variable in the id, e.g. id: shot-{{ color }}")
            seen.setdefault(sid, i)
        video = scene.get("video")
        if isinstance(video, dict):
            check_file(video.get("image"), ("scenes", i, "video", "image"), "image")
            check_file(video.get("last_image"), ("scenes", i, "video", "last_image"), "image")
        if isinstance(scene.get("audio"), dict):
            check_file(scene["audio"], ("scenes", i, "audio"), "audio file")
        lipsync = scene.get("lipsync")
        if isinstance(lipsync, dict):
            check_file(lipsync.get("avatar"), ("scenes", i, "lipsync", "avatar"), "avatar")
            check_file(lipsync.get("audio"), ("scenes", i, "lipsync", "audio"), "audio file")
            check_file(lipsync.get("pose_video"), ("scenes", i, "lipsync", "pose_video"), "pose video")
        animate = scene.get("animate")
        if isinstance(animate, dict):
            check_file(animate.get("reference_video"), ("scenes", i, "animate", "reference_video"),
                       "reference video")
            check_file(animate.get("character"), ("scenes", i, "animate", "character"), "character image")
            prep = animate.get("preprocess")
            if isinstance(prep, dict):
                for key in ("detector", "pose_model"):
                    check_file(prep.get(key), ("scenes", i, "animate", "preprocess", key), "model file",
                               url_ok=False)

    assemblies = data.get("assemble") if isinstance(data.get("assemble"), list) else []
    names: dict[str, int] = {}
    for j, asm in enumerate(assemblies):
        if not isinstance(asm, dict):
            continue
        order = asm.get("scenes")
        for k, sid in enumerate(order if isinstance(order, list) else []):
            if isinstance(sid, str) and sid not in seen:
                close = difflib.get_close_matches(sid, list(seen), n=1)
                problems.add(f"unknown scene '{sid}'", locate(data, ("assemble", j, "scenes", k)),
                             f"assemble[{j}].scenes[{k}]",
                             hint=f"did you mean '{close[0]}'?" if close
                             else "scene ids: " + ", ".join(seen))
        music = asm.get("music")
        if isinstance(music, dict):
            check_file(music.get("file"), ("assemble", j, "music", "file"), "music file")
        name = asm.get("name", "final")
        if isinstance(name, str):
            if name in names:
                problems.add(f"duplicate output name '{name}'", locate(data, ("assemble", j, "name")),
                             f"assemble[{j}].name", hint="give each assembly its own name")
            names.setdefault(name, j)


def url_problem(url: str, hosts: list[str], url_ok: bool = True) -> tuple[str, str] | None:
    """Why a URL input is refused (message, hint), or None when it may be downloaded."""
    from urllib.parse import urlsplit

    if not url_ok:
        return "a URL is not accepted here", "download the file into the project and give its path"
    if not m.is_url(url):
        return "only http:// and https:// URLs are downloaded", "give an http(s) URL or a file path"
    try:
        host = (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        host = ""
    if not host:
        return "the URL names no host", "write it as https://host/path"
    if not any(host == h.lower() or host.endswith("." + h.lower()) for h in hosts if isinstance(h, str)):
        listed = ", ".join(str(h) for h in hosts) or "none"
        return (f"host '{host}' is not on allow_hosts ({listed})",
                f"add '{host}' to allow_hosts if downloads from it are intended")
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _near_files(f: Path) -> str | None:
    if not f.parent.is_dir():
        return None
    same_kind = [p.name for p in f.parent.iterdir() if p.suffix.lower() == f.suffix.lower()]
    close = difflib.get_close_matches(f.name, same_kind, n=1)
    return f"did you mean '{close[0]}'?" if close else None
