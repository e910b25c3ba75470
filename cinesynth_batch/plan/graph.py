"""The stage graph: nodes with explicit inputs, and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union


@dataclass(frozen=True)
class FileInput:
    """A source file the user supplied."""

    path: Path
    display: str


@dataclass(frozen=True)
class NodeInput:
    """The artifact of another stage."""

    node: str


Input = Union[FileInput, NodeInput]


@dataclass
class StageNode:
    id: str
    kind: str
    scene: str | None
    params: dict[str, Any]
    inputs: dict[str, Input | tuple[Input, ...]] = field(default_factory=dict)
    model_role: str | None = None
    model_name: str | None = None               # a stage's own `model:` (None: the profile's)
    runtime: dict[str, Any] = field(default_factory=dict)   # passed to the stage, not keyed
    loras: tuple[tuple[str, str], ...] = ()     # (name, family), resolved at plan time
    publish: str | None = None                  # path under the output folder
    where: Any = None                           # spec position that created the node
    parallel: str | int = "auto"                # rank split: auto | dp | sp | N (not keyed)

    def upstream(self) -> Iterator[str]:
        for value in self.inputs.values():
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                if isinstance(item, NodeInput):
                    yield item.node


@dataclass
class Graph:
    nodes: dict[str, StageNode] = field(default_factory=dict)

    def add(self, node: StageNode) -> StageNode:
        if node.id in self.nodes:
            raise ValueError(f"duplicate stage id {node.id}")
        self.nodes[node.id] = node
        return node

    def __iter__(self) -> Iterator[StageNode]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, node_id: str) -> StageNode:
        return self.nodes[node_id]

    def downstream(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for up in node.upstream():
                out[up].append(node.id)
        return out

    def ancestors(self, ids: set[str]) -> set[str]:
        seen: set[str] = set()
        stack = list(ids)
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            stack.extend(self.nodes[nid].upstream())
        return seen
