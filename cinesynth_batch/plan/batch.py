"""The plans of a batch as one DAG: a stage that several specs would run with the same key (in
the same cache) is one node, run once for all of them.

A stage's key is known at plan time exactly when all its inputs exist already, so a node shared
by key has no upstream stage left to run: it can start at once, and the stages below it, in each
spec, wait for it. A stage whose key is only known once an upstream stage has run stays a node
of its spec; if another spec makes the same key first, the executor finds it in the cache.

Node ids are ``<spec index>:<stage id>`` of the node's first member. The DAG's order is every
spec's stages grouped by kind across the batch (all images, then upscales, then videos...), so
each model is loaded once; the scheduler's priority (``execute/schedule.py``) works on top of it.
Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cost import Estimate, model_label
from .order import kind_rank
from .planner import Plan


def node_id(spec: int, stage: str) -> str:
    return f"{spec}:{stage}"


@dataclass
class BatchNode:
    id: str
    kind: str
    slot: str | None                              # the model it needs (id@revision), None: none
    members: list[tuple[int, str]] = field(default_factory=list)   # (spec index, stage id)

    @property
    def shared(self) -> bool:
        return len(self.members) > 1


@dataclass
class BatchGraph:
    plans: list[Plan]
    nodes: dict[str, BatchNode]
    order: list[str]
    upstream: dict[str, list[str]]
    owner: dict[tuple[int, str], str]             # (spec index, stage id) -> its node

    def slots(self) -> dict[str, str | None]:
        return {n: node.slot for n, node in self.nodes.items()}

    def spec_costs(self, costs: dict[str, Estimate]) -> list[float]:
        """Expected seconds per spec; a shared node counts for its first member's spec."""
        out = [0.0] * len(self.plans)
        for nid, node in self.nodes.items():
            out[node.members[0][0]] += costs[nid].seconds
        return out


def merge_plans(plans: list[Plan]) -> BatchGraph:
    """One DAG of the stages the plans run; specs given in batch order."""
    nodes: dict[str, BatchNode] = {}
    owner: dict[tuple[int, str], str] = {}
    by_key: dict[tuple[str, str], str] = {}
    rank: dict[str, tuple[int, int, int]] = {}
    for i, plan in enumerate(plans):
        root = str(plan.cache.root.resolve())
        for pos, st in enumerate(plan.to_run()):
            share = (root, st.key) if st.key else None
            if share is not None and share in by_key:
                nodes[by_key[share]].members.append((i, st.id))
                owner[(i, st.id)] = by_key[share]
                continue
            nid = node_id(i, st.id)
            nodes[nid] = BatchNode(nid, st.node.kind, model_label(st), [(i, st.id)])
            owner[(i, st.id)] = nid
            rank[nid] = (kind_rank(st.node.kind), i, pos)
            if share is not None:
                by_key[share] = nid
    upstream = {}
    for nid, node in nodes.items():
        i, sid = node.members[0]
        plan = plans[i]
        upstream[nid] = sorted({owner[(i, u)] for u in plan.graph[sid].upstream() if (i, u) in owner})
    order = sorted(nodes, key=lambda n: rank[n])
    return BatchGraph(plans, nodes, order, upstream, owner)
