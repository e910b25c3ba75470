"""YAML with positions: safe parsing that remembers where every key and value stood.

Documents are composed with PyYAML's safe loader (the C one when present) and turned into
``LDict``/``LList`` containers that carry the ``Where`` of each key and value. Later steps
(presets, matrix expansion, templates) copy those marks along, so an error found after all
of them still points at the line a person wrote.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import Problems, Where

try:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class LDict(dict):
    """A dict that knows where it, its keys and its values came from."""

    __slots__ = ("loc", "key_locs", "value_locs")

    def __init__(self, *args: Any, loc: Where | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loc = loc
        self.key_locs: dict[Any, Where] = {}
        self.value_locs: dict[Any, Where] = {}

    def where_value(self, key: Any) -> Where | None:
        return self.value_locs.get(key) or self.key_locs.get(key) or self.loc

    def where_key(self, key: Any) -> Where | None:
        return self.key_locs.get(key) or self.loc

    def set(self, key: Any, value: Any, key_loc: Where | None, value_loc: Where | None) -> None:
        self[key] = value
        if key_loc is not None:
            self.key_locs[key] = key_loc
        if value_loc is not None:
            self.value_locs[key] = value_loc

    def __deepcopy__(self, memo: dict) -> "LDict":
        out = LDict(loc=self.loc)
        for k, v in self.items():
            out[k] = copy.deepcopy(v, memo)
        out.key_locs = dict(self.key_locs)
        out.value_locs = dict(self.value_locs)
        return out

    def __reduce__(self):  # pragma: no cover - never pickled, kept dict-like
        return (dict, (dict(self),))


class LList(list):
    """A list that knows where it and its items came from."""

    __slots__ = ("loc", "item_locs")

    def __init__(self, *args: Any, loc: Where | None = None):
        super().__init__(*args)
        self.loc = loc
        self.item_locs: list[Where | None] = []

    def where_item(self, index: int) -> Where | None:
        if 0 <= index < len(self.item_locs) and self.item_locs[index] is not None:
            return self.item_locs[index]
        return self.loc

    def __deepcopy__(self, memo: dict) -> "LList":
        out = LList((copy.deepcopy(v, memo) for v in self), loc=self.loc)
        out.item_locs = list(self.item_locs)
        return out


def _where(file: str, node: yaml.Node) -> Where:
    return Where(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Budget:
    """Nodes built so far (aliases count every time they are expanded) and the limits."""

    def __init__(self, file: str, max_nodes: int, max_depth: int):
        self.file = file
        self.nodes = 0
        self.max_nodes = max_nodes
        self.max_depth = max_depth


class _TooBig(Exception):
    def __init__(self, message: str, hint: str, where: Where):
        super().__init__(message)
        self.message, self.hint, self.where = message, hint, where


# Characters YAML 1.1 allows in a stream (tab, newlines and printable text).
NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def load_yaml(path: Path, display: str, problems: Problems, limits: Any = None) -> Any:
    """Parse one YAML file safely. Size, encoding and syntax errors become problems with line
    and column; the file is measured before it is read."""
    limits = limits or _default_limits()
    try:
        size = path.stat().st_size
        if size > limits.spec_bytes:
            problems.add(f"the file is {size} bytes, over the limit of {limits.spec_bytes} (spec_bytes)",
                         Where(display, 1, 1), hint="split it, or raise [limits] spec_bytes in cinesynth.toml")
            return None
        with path.open("rb") as f:
            data = f.read(limits.spec_bytes + 1)
    except OSError as exc:
        problems.add(f"cannot read file: {exc.strerror}", Where(display, 1, 1))
        return None
    text = decode_text(data, display, problems)
    if text is None:
        return None
    return load_yaml_text(text, display, problems, limits)


def _default_limits() -> Any:
    from ..config import Limits

    return Limits()


def decode_text(data: bytes, display: str, problems: Problems) -> str | None:
    """UTF-8 text (a UTF-8 byte order mark is allowed), or a located problem."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and (data[0] == 0 or data[1] == 0)):
        problems.add("the file is UTF-16, not UTF-8", Where(display, 1, 1),
                     hint="save it as UTF-8")
        return None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        before = data[:exc.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
        problems.add(f"byte 0x{data[exc.start]:02x} is not UTF-8", Where(display, line, col),
                     hint="save the file as UTF-8; it looks like Latin-1 or another legacy encoding")
        return None


def _char_where(text: str, display: str, index: int) -> Where:
    line = text.count("\n", 0, index) + 1
    return Where(display, line, index - (text.rfind("\n", 0, index) + 1) + 1)


def load_yaml_text(text: str, display: str, problems: Problems, limits: Any = None) -> Any:
    limits = limits or _default_limits()
    bad = NOT_PRINTABLE.search(text)
    if bad:
        problems.add(f"control character {ord(bad.group()):#04x} is not allowed in YAML",
                     _char_where(text, display, bad.start()),
                     hint="remove it; write \\t or \\n inside a double-quoted string if it is meant")
        return None
    loader = _Loader(text)
    budget = _Budget(display, limits.yaml_nodes, limits.yaml_depth)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(loader, node, budget, 0, {})
        return _convert(loader, node, budget, problems, 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Where(display, mark.line + 1, mark.column + 1) if mark else Where(display, 1, 1)
        problems.add(f"YAML syntax error: {exc.problem or exc.context}", where,
                     hint="check indentation and quoting on this line")
        return None
    except yaml.reader.ReaderError as exc:
        problems.add(f"YAML cannot read character {exc.character!r}",
                     _char_where(text, display, min(exc.position, len(text))), hint="remove it")
        return None
    except yaml.YAMLError as exc:
        problems.add(f"YAML error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                     Where(display, 1, 1))
        return None
    except _TooBig as exc:
        problems.add(exc.message, exc.where, hint=exc.hint)
        return None
    finally:
        loader.dispose()


def _measure(loader: Any, node: yaml.Node, budget: _Budget, depth: int,
             memo: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(nodes, height) of ``node`` once aliases are expanded, computed once per distinct node,
    so a bomb is refused before anything is built; a cycle exceeds the depth."""
    known = memo.get(id(node))
    if known is None:
        if depth > budget.max_depth:
            raise _TooBig(f"the YAML nests deeper than {budget.max_depth} levels (yaml_depth)",
                          "flatten it (a recursive alias nests without end)", _where(budget.file, node))
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        size, height = 1, 0
        for child in children:
            n, h = _measure(loader, child, budget, depth + 1, memo)
            size, height = size + n, max(height, h + 1)
            if size > budget.max_nodes:
                raise _TooBig(f"the YAML expands to more than {budget.max_nodes} nodes (yaml_nodes)",
                              "aliases (*name) count each time they are used; use fewer",
                              _where(budget.file, child))
        known = memo[id(node)] = (size, height)
    if depth + known[1] > budget.max_depth:
        raise _TooBig(f"the YAML nests deeper than {budget.max_depth} levels (yaml_depth)",
                      "flatten it", _where(budget.file, node))
    return known


def _count(node: yaml.Node, budget: _Budget, depth: int) -> None:
    budget.nodes += 1
    if budget.nodes > budget.max_nodes:
        raise _TooBig(f"the YAML expands to more than {budget.max_nodes} nodes (yaml_nodes)",
                      "aliases (*name) count each time they are used; use fewer",
                      _where(budget.file, node))
    if depth > budget.max_depth:
        raise _TooBig(f"the YAML nests deeper than {budget.max_depth} levels (yaml_depth)",
                      "flatten it (a recursive alias nests without end)", _where(budget.file, node))


def _convert(loader: Any, node: yaml.Node, budget: _Budget, problems: Problems, depth: int) -> Any:
    file = budget.file
    _count(node, budget, depth)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out = LDict(loc=_where(file, node))
        for key_node, value_node in node.value:
            key = _convert(loader, key_node, budget, problems, depth + 1)
            if isinstance(key, (LDict, LList)):
                problems.add("a key must be a plain value", _where(file, key_node))
                continue
            try:
                seen = key in out
            except TypeError:                       # an unhashable key such as a set
                problems.add("a key must be a plain value", _where(file, key_node))
                continue
            if seen:
                problems.add(f"duplicate key '{key}'", _where(file, key_node),
                             hint=f"it is already set at line {out.key_locs[key].line}")
                continue
            out.set(key, _convert(loader, value_node, budget, problems, depth + 1),
                    _where(file, key_node), _where(file, value_node))
        return out
    if isinstance(node, yaml.SequenceNode):
        out_list = LList(loc=_where(file, node))
        for item in node.value:
            out_list.append(_convert(loader, item, budget, problems, depth + 1))
            out_list.item_locs.append(_where(file, item))
        return out_list
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except (ValueError, OverflowError, TypeError) as exc:   # e.g. an int of 5,000 digits
        problems.add(f"cannot read this value ({exc})", _where(file, node),
                     hint="write a smaller number, or quote it to make it text")
        return None


def locate(root: Any, path: Iterable[Any]) -> Where | None:
    """The most precise known position of ``path`` inside ``root`` (falls back to parents)."""
    best: Where | None = getattr(root, "loc", None)
    cur = root
    for part in path:
        if isinstance(cur, LDict) and part in cur:
            best = cur.where_value(part) or best
            cur = cur[part]
        elif isinstance(cur, LList) and isinstance(part, int) and 0 <= part < len(cur):
            best = cur.where_item(part) or best
            cur = cur[part]
        else:
            break
    return best


def locate_key(root: Any, path: list[Any]) -> Where | None:
    """Position of the key at the end of ``path`` (for unknown-key errors)."""
    if not path:
        return getattr(root, "loc", None)
    parent_path, key = path[:-1], path[-1]
    cur = root
    for part in parent_path:
        if isinstance(cur, (LDict, LList)):
            try:
                cur = cur[part]
            except (KeyError, IndexError, TypeError):
                return locate(root, parent_path)
        else:
            return locate(root, parent_path)
    if isinstance(cur, LDict):
        return cur.where_key(key)
    return locate(root, path)


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
