"""Load a spec file: YAML -> matrix (values from files too) -> presets -> templates -> limits ->
pydantic -> trust -> file checks.

Every step adds to one list of problems; ``load_spec`` raises a single ``SpecError`` holding
all of them, each with ``file:line:col``. Limits and trust come from the project's
``cinesynth.toml`` (``config.py``) and the command line, never from the spec (``checks.py``,
``trust.py``); a step that would run away (a matrix past ``scenes``) stops the load at once.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..config import ConfigError, Limits, ProjectConfig, Trust
from ..errors import Problems, SpecError, Where
from . import model as m
from . import trust as t
from .matrix_files import read_matrix_files
from .presets import PresetLibrary, merge
from .references import apply_edit_presets, check_references
from .checks import check_limits, check_lora_names, check_output, narrow_trust
from .errortext import describe
from .templating import Templater
from .yamlpos import LDict, LList, format_path, load_yaml, locate, locate_key

STAGE_KEYS = ("image", "video", "lipsync", "animate", "audio")
SOURCE_KEYS = ("frame", "separate", "extract", "segment")   # mappings whose `source` is a file or URL
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
    config: ProjectConfig = field(default_factory=lambda: ProjectConfig(Path(".")))
    trust: Trust = field(default_factory=Trust)   # what this spec may reach (after narrowing)

    @property
    def spec_dir(self) -> Path:
        return self.path.parent

    @property
    def output_dir(self) -> Path:
        """Where the render's outputs, ``render.lock`` and ``manifest.json`` go."""
        out = self.spec.output
        return (self.spec_dir / out).resolve() if out else self.root / "outputs" / self.spec.project

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


def load_spec(path: str | Path, *, check_files: bool = True, config: ProjectConfig | None = None,
              allow_paths: list[str] | None = None, allow_hosts: list[str] | None = None) -> LoadedSpec:
    """Load and check one spec. Limits and trust come from ``cinesynth.toml`` at the project
    root (or ``config``) plus what the operator allowed on the command line; the spec's own
    ``allow_paths`` / ``allow_hosts`` may only narrow them."""
    display = str(path)
    abspath = _spec_file(path, display)
    spec_dir = abspath.parent
    root = find_project_root(spec_dir)
    config = (config or _read_config(root, display)).with_command_line(allow_paths, allow_hosts)
    raw = _read_tree(abspath, display, config.limits)
    problems = Problems()
    hints: dict[int, str] = {}
    try:
        expanded, sources = expand(raw, spec_dir, root, problems, config.limits, hints)
    except Runaway:
        raise SpecError(problems.items) from None
    check_limits(expanded, sources, config.limits, problems)
    spec = validate(expanded, problems, sources)
    trust = narrow_trust(expanded, spec_dir, root, config.trust, problems)
    check_output(expanded, spec_dir, root, problems)
    check_lora_names(expanded, sources, problems)
    if check_files:
        check_semantics(expanded, sources, spec_dir, root, problems, trust, hints)
    problems.raise_if_any()
    assert spec is not None
    spec.allow_paths = [str(a) for a in trust.allow_paths]      # what the spec may reach, after
    spec.allow_hosts = list(trust.allow_hosts)                    # narrowing (read by the planner)
    return LoadedSpec(spec=spec, path=abspath, display=display, root=root, raw=expanded,
                      sources=sources, config=config, trust=trust)


def _spec_file(path: str | Path, display: str) -> Path:
    """The spec's absolute path, or a ``SpecError`` saying why it cannot be read."""
    bad = t.path_problem(display)
    if bad is not None:
        raise SpecError([_problem(bad.message, None, bad.hint, t.printable(display))])
    try:
        found = Path(path).is_file()
        abspath = Path(path).resolve()
    except (OSError, ValueError) as exc:
        raise SpecError([_problem(f"cannot read the spec file ({type(exc).__name__})", None,
                                  path=t.printable(display))]) from None
    if not found:
        raise SpecError([_problem("spec file not found", None, "check the path", display)])
    return abspath


def _read_tree(abspath: Path, display: str, limits: Limits) -> LDict:
    """The spec file as a positioned YAML mapping, or a ``SpecError``."""
    problems = Problems()
    raw = load_yaml(abspath, display, problems, limits)
    if not problems and not isinstance(raw, LDict):
        problems.add("a spec must be a mapping with 'project' and 'scenes'", Where(display, 1, 1))
    problems.raise_if_any()
    return raw


def _read_config(root: Path, display: str) -> ProjectConfig:
    try:
        return ProjectConfig.load(root)
    except ConfigError as exc:
        file = root / "cinesynth.toml"
        message, line, col = _toml_position(exc.message.split(": ", 1)[-1], file)
        raise SpecError([_problem(message, exc.where or Where(display_path(file), line, col), exc.hint)]) \
            from None


def _toml_position(message: str, file: Path) -> tuple[str, int, int]:
    """tomllib writes the place into its message: ``... (at line 2, column 5)`` or ``(at end of
    document)``."""
    found = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if found:
        return message[:found.start()], int(found.group(1)), int(found.group(2))
    if message.endswith(" (at end of document)"):
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        return message.removesuffix(" (at end of document)") + " at the end of the file", \
            text.count("\n") + 1, 1
    return (message, *_toml_key_position(message, file))


def _toml_key_position(message: str, file: Path) -> tuple[int, int]:
    """The line of the first key the message names (``key = ...``), else 1:1."""
    try:
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return 1, 1
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message):
        for n, text in enumerate(lines, 1):
            found = re.match(rf"\s*({re.escape(word)})\s*=", text)
            if found:
                return n, found.start(1) + 1
    return 1, 1


def _problem(message: str, where: Where | None, hint: str | None = None, path: str = ""):
    from ..errors import Problem

    return Problem(message, where, path, hint)


# --- expansion -----------------------------------------------------------------------------

def expand(raw: LDict, spec_dir: Path, root: Path, problems: Problems, limits: Limits | None = None,
           hints: dict[int, str] | None = None) -> tuple[LDict, list[int]]:
    """Normalise shorthands, expand matrices, merge presets, render templates.

    Returns the expanded tree and, for each expanded scene, the index of the scene it was
    written as (matrix scenes share one), so errors name the scene the user wrote.
    """
    limits = limits or Limits()
    hints = {} if hints is None else hints
    data = copy.deepcopy(raw)
    templater = Templater(limits)
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
    library = PresetLibrary(spec_dir, root, inline, display_path, limits)

    scenes = data.get("scenes")
    sources: list[int] = []
    if isinstance(scenes, list):
        if not read_matrix_files(scenes, spec_dir, root, limits, problems, display_path):
            raise Runaway()
        _within_scene_limit(scenes, limits, problems)
        data["scenes"] = _expand_scenes(scenes, library, templater, base_ctx, problems, sources, hints,
                                        limits.expanded_nodes)
    templater.render_tree(data, base_ctx, problems, "",
                          skip=frozenset({"scenes", "vars", "presets", "project"}))
    asm = data.get("assemble")
    if isinstance(asm, LDict):
        wrapped = LList([asm], loc=asm.loc)
        wrapped.item_locs.append(asm.loc)
        data["assemble"] = wrapped
    for item in data.get("assemble") if isinstance(data.get("assemble"), LList) else []:
        if isinstance(item, LDict) and isinstance(item.get("music"), str):
            _shorthand(item, "music", "file")
    return data, sources


def _shorthand(parent: LDict, key: str, inner: str) -> None:
    """``key: value`` -> ``key: {inner: value}``, keeping the position."""
    where = parent.where_value(key)
    box = LDict(loc=where)
    box.set(inner, parent[key], where, where)
    parent[key] = box


class Runaway(Exception):
    """Expansion stopped at a limit (the problem is already recorded): nothing after it is
    checked, so the limit is the one message."""


def _within_scene_limit(scenes: LList, limits: Limits, problems: Problems) -> None:
    """Count the scenes matrices would make, before making any; ``Runaway`` past the limit."""
    total = 0
    for index, scene in enumerate(scenes):
        n = _combo_count(scene)
        total += n
        if total > limits.scenes:
            where = scene.where_value("matrix") if isinstance(scene, LDict) and "matrix" in scene \
                else scenes.where_item(index)
            shown = total if n < 10**12 else "more than 10^12"
            problems.add(f"the scenes expand to {shown} scenes, over the limit of {limits.scenes} (scenes)",
                         where, f"scenes[{index}]",
                         hint="use fewer matrix values, or raise [limits] scenes in cinesynth.toml")
            raise Runaway()


def _combo_count(scene: Any) -> int:
    matrix = scene.get("matrix") if isinstance(scene, dict) else None
    if not isinstance(matrix, dict) or not matrix:
        return 1
    n = 1
    for vals in matrix.values():
        if isinstance(vals, list) and vals:
            n *= len(vals)
            if n > 10**12:
                return n
    return n


def _node_count(node: Any, stop: int) -> int:
    """Nodes in a tree, counting stops at ``stop``."""
    count, todo = 0, [node]
    while todo and count < stop:
        cur = todo.pop()
        count += 1
        if isinstance(cur, dict):
            todo.extend(cur.values())
        elif isinstance(cur, list):
            todo.extend(cur)
    return count


def _box(parent: LDict, key: str) -> LDict:
    box = LDict(loc=parent.loc)
    box.set(key, parent[key], parent.key_locs.get(key), parent.value_locs.get(key))
    return box


def _expand_scenes(scenes: LList, library: PresetLibrary, templater: Templater,
                   base_ctx: dict[str, Any], problems: Problems, sources: list[int],
                   hints: dict[int, str], max_nodes: int) -> LList:
    out = LList(loc=getattr(scenes, "loc", None))
    made = 0                                           # nodes of the scenes made so far
    for index, scene in enumerate(scenes):
        where = scenes.where_item(index) if isinstance(scenes, LList) else None
        if not isinstance(scene, LDict):
            out.append(scene)
            out.item_locs.append(where)
            sources.append(index)
            continue
        combos = _matrix_combos(scene, f"scenes[{index}]", problems)
        for k, combo in enumerate(combos):
            s = _make_scene(scene, combo, index, len(out), library, templater, base_ctx, problems, hints)
            size = _node_count(s, max_nodes + 1)
            made += size * (len(combos) if k == 0 else 0)   # every combination is about as big
            if made > max_nodes:
                problems.add(f"the scenes, with their presets, make more than {max_nodes} YAML nodes "
                             "(expanded_nodes)", where, f"scenes[{index}]",
                             hint="use fewer scenes or smaller presets, or raise [limits] expanded_nodes")
                raise Runaway()
            out.append(s)
            out.item_locs.append(where)
            sources.append(index)
    return out


def _make_scene(scene: LDict, combo: dict[str, Any], index: int, position: int, library: PresetLibrary,
                templater: Templater, base_ctx: dict[str, Any], problems: Problems,
                hints: dict[int, str]) -> LDict:
    """One scene as written, for one matrix combination: presets merged, templates rendered."""
    s = copy.deepcopy(scene)
    s.pop("matrix", None)
    ctx = {**base_ctx, **combo, "matrix": combo, "index": position}
    s = _apply_presets(s, library, f"scenes[{index}]", problems)
    lacking = _vars_not_in(s.get("id"), scene.get("matrix"))
    if lacking:
        hints[position] = f"put {{{{ {lacking[0]} }}}} in the id, e.g. id: {s.get('id')}-{{{{ {lacking[0]} }}}}"
    if isinstance(s.get("id"), str):
        s["id"] = templater.render_tree(_box(s, "id"), ctx, problems, f"scenes[{index}]")["id"]
    ctx["scene"] = {"id": s.get("id"), "index": position}
    templater.render_tree(s, ctx, problems, f"scenes[{index}]", skip=frozenset({"id"}))
    if isinstance(s.get("audio"), str):
        _shorthand(s, "audio", "file")
    return s


def _vars_not_in(template: Any, matrix: Any) -> list[str]:
    """Matrix variables an id template does not use (the cause of duplicate ids), those with
    several values first."""
    if not isinstance(matrix, dict) or not isinstance(template, str):
        return []
    used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", template))
    lacking = [name for name in matrix if str(name) not in used]
    return [str(n) for n in sorted(lacking, key=lambda n: not (isinstance(matrix[n], list) and
                                                               len(matrix[n]) > 1))]


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
    apply_edit_presets(scene.get("image"), lambda name, where, at: library.resolve(name, where, at, problems),
                       f"{path}.image")
    return scene


# --- validation ----------------------------------------------------------------------------

def validate(data: LDict, problems: Problems, sources: list[int]) -> m.Spec | None:
    try:
        return m.Spec.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            problems.items.append(_problem_from_pydantic(err, data, sources))
        return None


def _problem_from_pydantic(err: dict[str, Any], data: LDict, sources: list[int]):
    from ..errors import Problem

    said = describe(err)
    loc = said.loc
    if err["type"] == "extra_forbidden":
        key = loc[-1]
        fields = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else (
            "allowed here: " + ", ".join(fields) if fields else None)
        return Problem(said.message, locate_key(data, list(loc)), format_path(said.at, sources), hint)
    return Problem(said.message, locate(data, loc), format_path(said.at, sources), said.hint)


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
                    problems: Problems, trust: Trust | None = None,
                    id_hints: dict[int, str] | None = None) -> None:
    """Checks across fields: unique ids, files that exist inside the project, references."""
    scenes = data.get("scenes") if isinstance(data.get("scenes"), list) else []
    trust = trust or Trust()
    id_hints = id_hints or {}
    allowed = [root, *trust.allow_paths]
    hosts = list(trust.allow_hosts)

    def check_file(value: Any, loc: tuple[Any, ...], what: str, url_ok: bool = True) -> None:
        if isinstance(value, dict):  # {file}, {frame|separate|extract|segment: {source}}
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
            problem = url_problem(value, hosts, url_ok)
            if problem:
                problems.add(f"{what} '{t.printable(value)}': {problem[0]}", where, path, hint=problem[1])
            return
        bad = t.path_problem(value)
        f = t.resolve_inside(spec_dir, value) if bad is None else None
        if f is None:
            problems.add(f"{what} '{t.printable(value)}': {bad.message if bad else 'not a usable path'}",
                         where, path, hint=bad.hint if bad else None)
        elif not any(t.inside(f, a) for a in allowed):
            problems.add(f"{what} '{value}' is outside the project ({root})", where, path,
                         hint="move it into the project, or ask the operator to allow its folder "
                              "(cinesynth.toml [trust] allow_paths, --allow-path)")
        elif not _is_file(f):
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
                hint = f"scenes[{sources[seen[sid]]}] already uses it; " + (
                    id_hints.get(i) or "give each scene its own id")
                problems.add(f"duplicate scene id '{sid}'", locate(data, ("scenes", i, "id")),
                             format_path(("scenes", i, "id"), sources), hint=hint)
            seen.setdefault(sid, i)
        image = scene.get("image")
        if isinstance(image, dict):             # a masked edit's picture and mask
            check_file(image.get("source"), ("scenes", i, "image", "source"), "image")
            check_file(image.get("mask"), ("scenes", i, "image", "mask"), "mask")
        video = scene.get("video")
        if isinstance(video, dict):
            check_file(video.get("image"), ("scenes", i, "video", "image"), "image")
            check_file(video.get("last_image"), ("scenes", i, "video", "last_image"), "image")
            keyframes = video.get("keyframes")
            for k, keyframe in enumerate(keyframes if isinstance(keyframes, list) else []):
                check_file(keyframe, ("scenes", i, "video", "keyframes", k), "keyframe")
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

    check_references(data, sources, problems, check_file)

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
    if not url_ok:
        return "a URL is not accepted here", "download the file into the project and give its path"
    try:
        host = t.check_url(url).host
    except t.Refused as exc:
        return exc.message, exc.hint
    if not t.host_allowed(host, [h for h in hosts if isinstance(h, str)]):
        listed = ", ".join(str(h) for h in hosts) or "none"
        return (f"host '{host}' is not on allow_hosts ({listed})",
                f"the operator may allow '{host}' in cinesynth.toml [trust] allow_hosts or with "
                "--allow-host")
    return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _near_files(f: Path) -> str | None:
    try:
        if not f.parent.is_dir():
            return None
        same_kind = [p.name for p in f.parent.iterdir() if p.suffix.lower() == f.suffix.lower()]
    except OSError:
        return None
    close = difflib.get_close_matches(f.name, same_kind, n=1)
    return f"did you mean '{close[0]}'?" if close else None
