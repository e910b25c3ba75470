"""A plan: the graph in execution order, each stage with its key, status and reason.

A key can be computed once every input digest is known: source files are hashed, and a
cached upstream stage's digest comes from its cache entry. A stage below one that must run
gets its key at execution time, when its inputs exist; if that key is then found in the
cache (the upstream re-ran and produced the same bytes) it is not run after all.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..cache.digest import DigestState
from ..cache.lock import Lock
from ..cache.store import CacheStore, Entry
from ..errors import Problems, SpecError
from ..catalog.registry import Registry
from ..spec.load import LoadedSpec
from ..spec.rules import SEED_LIMIT
from .expand import build_graph
from .graph import FileInput, Graph, NodeInput, StageNode
from .keys import content_key
from .order import execution_order, kind_rank
from .reason import Reason, explain


@dataclass
class PlannedStage:
    node: StageNode
    status: str                      # "cached" | "run" | "skip"
    key: str | None
    reason: Reason
    model: dict[str, Any] | None
    params: dict[str, Any]           # params as keyed (LoRA file identities included)
    inputs: dict[str, Any] = field(default_factory=dict)   # input digests (None: not yet made)
    entry: Entry | None = None

    @property
    def id(self) -> str:
        return self.node.id


@dataclass
class Plan:
    loaded: LoadedSpec
    graph: Graph
    stages: dict[str, PlannedStage]
    order: list[str]
    registry: Registry
    cache: CacheStore
    lock: Lock
    digests: DigestState
    selected: set[str] = field(default_factory=set)
    seeds: dict[str, int] = field(default_factory=dict)   # seeds of `seed: -1` stages
    # (kind, params) -> params as this machine will run them: a key names what runs
    effective: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None

    @property
    def project(self) -> str:
        return self.loaded.spec.project

    def to_run(self) -> list[PlannedStage]:
        return [self.stages[n] for n in self.order if self.stages[n].status == "run"]

    def counts(self) -> dict[str, int]:
        out = {"run": 0, "cached": 0, "skip": 0}
        for s in self.stages.values():
            out[s.status] += 1
        return out

    def input_digests(self, node: StageNode, known: dict[str, str]) -> dict[str, Any]:
        """Digests of a node's inputs; None for an input whose upstream has no artifact yet."""
        def one(value: Any) -> str | None:
            if isinstance(value, FileInput):
                return self.digests.digest(value.path)
            return known.get(value.node)

        out: dict[str, Any] = {}
        for name, value in node.inputs.items():
            if isinstance(value, tuple):
                items = [one(v) for v in value]
                out[name] = None if any(i is None for i in items) else items
            else:
                out[name] = one(value)
        return out

    def key_for(self, stage: PlannedStage, inputs: dict[str, Any]) -> str | None:
        if any(v is None for v in inputs.values()):
            return None
        params = self.effective(stage.node.kind, stage.params) if self.effective else stage.params
        return content_key(stage.node.kind, stage.model, params, inputs)


def select(graph: Graph, only: list[str] | None, until: str | None) -> set[str]:
    """Stages a render should bring up to date: matches of ``--only`` (stage id, scene id or
    kind; ``+`` prefix/suffix as in dbt is accepted and means the same: upstream is always
    included) cut at ``--until`` (a kind), plus everything they need."""
    chosen = set(graph.nodes)
    if only:
        wanted = set()
        for pattern in only:
            p = pattern.strip("+")
            hits = {n.id for n in graph if n.id == p or n.scene == p or n.kind == p
                    or n.id.startswith(p + ".")}
            if not hits:
                raise SpecError([_unknown_selector(pattern, graph)])
            wanted |= hits
        chosen = wanted
    if until:
        if until not in {n.kind for n in graph} and until not in ("tts", "image", "upscale", "video",
                                                                   "lipsync", "animate", "shadow",
                                                                   "interpolate", "assemble"):
            raise SpecError([_unknown_selector(until, graph, kind=True)])
        limit = kind_rank(until)
        chosen = {n for n in chosen if kind_rank(graph[n].kind) <= limit}
    return graph.ancestors(chosen)


def _unknown_selector(pattern: str, graph: Graph, kind: bool = False):
    import difflib

    from ..errors import Problem

    names = sorted({n.kind for n in graph} if kind else
                   {n.id for n in graph} | {n.scene for n in graph if n.scene} | {n.kind for n in graph})
    close = difflib.get_close_matches(pattern.strip("+"), names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "choose from: " + ", ".join(names)
    return Problem(f"'{pattern}' matches no stage", path="--until" if kind else "--only", hint=hint)


def make_plan(loaded: LoadedSpec, registry: Registry, cache: CacheStore, lock: Lock,
              digests: DigestState, *, force: bool = False, only: list[str] | None = None,
              until: str | None = None, reseed: bool = False,
              effective: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None) -> Plan:
    seeds: dict[str, int] = {}

    def seed_for(node_id: str) -> int:
        locked = None if reseed else lock.seed_for(node_id)
        seeds[node_id] = locked if locked is not None else secrets.randbelow(SEED_LIMIT)
        return seeds[node_id]

    graph = build_graph(loaded, seed_for)
    order = execution_order(graph)
    selected = select(graph, only, until)
    problems = Problems()
    stages: dict[str, PlannedStage] = {}
    known: dict[str, str] = {}
    plan = Plan(loaded, graph, stages, order, registry, cache, lock, digests, selected, seeds, effective)
    for nid in order:
        node = graph[nid]
        model = registry.identity(node.model_role, node.model_name) if node.model_role else None
        params = dict(node.params)
        if node.loras:
            params["loras"] = _keyed_loras(node, registry, loaded, problems)
        stage = PlannedStage(node=node, status="run", key=None, reason=Reason(), model=model,
                             params=params)
        stages[nid] = stage
        inputs = plan.input_digests(node, known)
        stage.inputs = inputs
        stage.key = plan.key_for(stage, inputs)
        running_up = sorted({u for u in node.upstream() if stages[u].status == "run"})
        if nid not in selected:
            stage.status = "skip"
            continue
        entry = cache.lookup(stage.key) if stage.key else None
        if entry is not None and not force:
            stage.status, stage.entry = "cached", entry
            known[nid] = entry.digest
            continue
        stage.reason = explain(lock.stages.get(nid), model, params, inputs, running_up,
                               input_labels(node))
        stage.reason.forced = force
        stage.reason.damaged = stage.key in cache.found_damaged
    problems.raise_if_any()
    return plan


# inputs named differently from the spec field they come from (stage kind -> input -> field)
SPEC_FIELDS = {
    "animate": {"reference": "reference_video"},
    "animate_prep": {"video": "reference_video"},
    "extract_frame": {"video": "source"},
    "extract_audio": {"media": "source"},
    "separate": {"audio": "source"},
    "detect": {"image": "mask.segment.source"},
    "segment": {"image": "mask.segment.source"},
}


def input_labels(node: StageNode) -> dict[str, str]:
    """Input name -> how a reason names it: the spec field, then what it is (upstream stage
    ids or the file as written, left out when the same), e.g. ``audio (assets/line1.wav)``, or
    ``intro.audio (assets/line1.wav)`` and ``intro.video`` for an assembly's per-scene inputs."""
    fields = _assembly_fields(node) if node.kind in ("assemble", "subtitles") else {}
    fields = {**SPEC_FIELDS.get(node.kind, {}), **fields}
    out = {}
    for name, value in node.inputs.items():
        items = value if isinstance(value, tuple) else (value,)
        what = ", ".join(i.node if isinstance(i, NodeInput) else i.display for i in items)
        field = fields.get(name, name)
        out[name] = field if what == field else f"{field} ({what})"
    return out


def _assembly_fields(node: StageNode) -> dict[str, str]:
    """An assembly's ``v<i>``/``a<i>`` inputs as ``<scene>.<field>``: the visual is named by the
    stage that makes it (``image``, ``video``, ``lipsync``, ``animate``), the sound by where the
    scene's spec gives it (``audio``, ``lipsync.audio`` or the animate reference's sound)."""
    out = {}
    for entry in node.params.get("scenes") or []:
        sid = entry["id"]
        visual = node.inputs.get(entry.get("visual"))
        first = visual[0] if isinstance(visual, tuple) and visual else visual
        # the subtitles drop a visual whose length they know otherwise (see expand.py)
        kind = _made_by(first, sid) if visual is not None else (
            "lipsync" if entry.get("speech_frames") else "video" if "frames" in entry else "image")
        if entry.get("visual"):
            out[entry["visual"]] = f"{sid}.{kind}"
        if entry.get("audio"):
            field = {"lipsync": "lipsync.audio", "animate": "animate.reference_video"}.get(kind, "audio")
            out[entry["audio"]] = f"{sid}.{field}"
    return out


def _made_by(value: object, scene: str) -> str:
    """The spec field a scene's visual comes from, read off its stage id (``<scene>.<kind>...``)."""
    if not isinstance(value, NodeInput) or not value.node.startswith(scene + "."):
        return "image"
    kind = value.node[len(scene) + 1:].split(".")[0]
    return "image" if kind in ("upscale", "fit") else kind


def _keyed_loras(node: StageNode, registry: Registry, loaded: LoadedSpec, problems: Problems):
    out = []
    family = node.loras[0][1]
    allowed = [loaded.root, *[(loaded.spec_dir / a).resolve() for a in loaded.spec.allow_paths]]
    for j, lora in enumerate(node.params["loras"]):
        if lora["name"].endswith(".safetensors"):
            f = (loaded.spec_dir / lora["name"]).resolve()
            if not any(f == a or a in f.parents for a in allowed):
                where, path = _lora_where(loaded, node, j)
                problems.add(f"LoRA file '{lora['name']}' is outside the project ({loaded.root})",
                             where, path, hint="move it into the project or add its folder to allow_paths")
                out.append({**lora, "file": None})
                continue
        ident = registry.lora_identity(lora["name"], family)
        if ident is None:
            where, path = _lora_where(loaded, node, j)
            looked = ", ".join(str(Path(d)) for d in registry.lora_search_dirs())
            problems.add(f"LoRA '{lora['name']}' not found", where, path,
                         hint=f"put {lora['name']}.safetensors under lora_adpts/{family}/ "
                              f"(searched: {looked})")
        out.append({**lora, "file": ident})
    return out


def _lora_where(loaded: LoadedSpec, node: StageNode, j: int):
    at = node.runtime.get("loras_at")           # a stage the spec nests (an image reference's edit)
    if at:
        return loaded.where(*at, "loras", j, "name"), loaded.path_text(*at, "loras", j, "name")
    for i, scene in enumerate(loaded.spec.scenes):
        if scene.id == node.scene:
            loc = ("scenes", i, node.kind, "loras", j, "name")
            return loaded.where(*loc), loaded.path_text(*loc)
    return None, f"{node.id}.loras[{j}].name"
