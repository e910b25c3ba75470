"""The package's rooms import one way: a room imports only rooms of its own layer or below, no two
rooms import each other, and no module imports itself back through others. Imports are read from
the source with ``ast`` (function-level imports included), so nothing is imported to check them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cinesynth_batch"

#: Top to bottom. A module may import modules of its own layer or of a lower one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("execute",),
    ("plan", "stages", "report"),
    ("catalog",),
    ("models", "tts", "preprocess"),
    ("runtime",),
    ("media", "cache", "spec"),
    ("config", "procs"),
    ("errors",),
)
LAYER_OF = {room: depth for depth, rooms in enumerate(LAYERS) for room in rooms}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (a ``from X import y`` naming a submodule
    counts as an import of that submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE.name:
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found.update(subs or {target})
    return {m for m in found if m in known and m != name}


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_every_room_has_a_layer(graph):
    rooms = {room_of(m) for m in graph if m != PACKAGE.name}
    assert rooms - set(LAYER_OF) == set(), "a new room needs its place in LAYERS"


def test_no_room_imports_a_higher_one(graph):
    upward = sorted(
        f"{src} -> {dst}"
        for src, targets in graph.items() if src != PACKAGE.name
        for dst in targets if dst != PACKAGE.name and LAYER_OF[room_of(dst)] < LAYER_OF[room_of(src)]
    )
    assert upward == []


def test_no_two_rooms_import_each_other(graph):
    edges = {(room_of(s), room_of(d)) for s, ts in graph.items() for d in ts
             if PACKAGE.name not in (s, d) and room_of(s) != room_of(d)}
    assert sorted((a, b) for a, b in edges if (b, a) in edges and a < b) == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle(graph):
    assert cycles(graph) == []


def test_the_checks_catch_what_they_guard():
    """The checks are not vacuous: a planted upward import and a planted circle are found."""
    planted = {"cinesynth_batch.runtime.a": {"cinesynth_batch.catalog.b"},
               "cinesynth_batch.catalog.b": {"cinesynth_batch.runtime.a"}}
    assert cycles(planted) == [["cinesynth_batch.catalog.b", "cinesynth_batch.runtime.a"]]
    assert LAYER_OF[room_of("cinesynth_batch.catalog.b")] < LAYER_OF[room_of("cinesynth_batch.runtime.a")]


def test_the_reader_sees_function_level_imports(tmp_path):
    source = tmp_path / "cinesynth_batch" / "runtime" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from ..catalog import loaders\n    from . import swap\n")
    known = {"cinesynth_batch.catalog.loaders", "cinesynth_batch.runtime.swap", "cinesynth_batch.catalog"}
    assert imports_of("cinesynth_batch.runtime.x", source, known) == known - {"cinesynth_batch.catalog"}
