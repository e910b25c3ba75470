"""Execution order: topological, grouped by stage kind so each model loads as few times as
possible (all images, then upscales, then videos...), scene order within a kind."""

from __future__ import annotations

import heapq

from .graph import Graph

KIND_RANK = {"tts": 0, "fetch": 0, "download": 0, "audio": 1, "extract_audio": 1, "extract_frame": 1,
             "separate": 1, "animate_prep": 1, "face_crop": 1, "detect": 1, "segment": 1, "image": 2, "upscale": 3,
             "fit": 3, "video": 4, "lipsync": 5,
             "animate": 6, "shadow": 7, "interpolate": 8, "assemble": 9}


def kind_rank(kind: str) -> int:
    return KIND_RANK.get(kind, 8)


def execution_order(graph: Graph) -> list[str]:
    position = {nid: i for i, nid in enumerate(graph.nodes)}
    pending = {nid: len(set(graph[nid].upstream())) for nid in graph.nodes}
    downstream = graph.downstream()
    ready = [(kind_rank(graph[n].kind), position[n], n) for n, c in pending.items() if c == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, _, nid = heapq.heappop(ready)
        order.append(nid)
        for child in set(downstream[nid]):
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, (kind_rank(graph[child].kind), position[child], child))
    if len(order) != len(graph):
        stuck = sorted(set(graph.nodes) - set(order))
        raise ValueError(f"cycle among stages: {', '.join(stuck)}")
    return order
