"""YAML with positions: safe parsing that remembers where every key and value stood.

Documents are composed with PyYAML's safe loader (the C one when present) and turned into
``LDict``/``LList`` containers that carry the ``Where`` of each key and value. Later steps
(presets, matrix expansion, templates) copy those marks along, so an error found after all
of them still points at the line a person wrote.
"""

from __future__ import annotations

import copy
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


def load_yaml(path: Path, display: str, problems: Problems) -> Any:
    """Parse one YAML file safely. Syntax errors become problems with line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.add(f"cannot read file: {exc.strerror}", path=display)
        return None
    return load_yaml_text(text, display, problems)


def load_yaml_text(text: str, display: str, problems: Problems) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _convert(loader, node, display, problems)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Where(display, mark.line + 1, mark.column + 1) if mark else None
        problems.add(f"YAML syntax error: {exc.problem or exc.context}", where,
                     hint="check indentation and quoting on this line")
        return None
    finally:
        loader.dispose()


def _convert(loader: Any, node: yaml.Node, file: str, problems: Problems) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out = LDict(loc=_where(file, node))
        for key_node, value_node in node.value:
            key = _convert(loader, key_node, file, problems)
            if isinstance(key, (LDict, LList)):
                problems.add("a key must be a plain value", _where(file, key_node))
                continue
            if key in out:
                problems.add(f"duplicate key '{key}'", _where(file, key_node),
                             hint=f"it is already set at line {out.key_locs[key].line}")
                continue
            out.set(key, _convert(loader, value_node, file, problems),
                    _where(file, key_node), _where(file, value_node))
        return out
    if isinstance(node, yaml.SequenceNode):
        out_list = LList(loc=_where(file, node))
        for item in node.value:
            out_list.append(_convert(loader, item, file, problems))
            out_list.item_locs.append(_where(file, item))
        return out_list
    return loader.construct_object(node, deep=True)


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
