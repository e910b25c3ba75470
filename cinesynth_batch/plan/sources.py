"""Inputs that are made rather than given: URL downloads, video frames, extracted and
separated audio (speech from text, ``tts``, is planned in ``plan/expand.py``). Each becomes a
stage node; a plain path stays a ``FileInput``.

Node ids: ``download.<hash>`` (one per URL and format, shared by every use),
``<scene>.<field>_frame`` (``extract_frame``), ``<scene>.extract_audio`` and
``<scene>.separate``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import CinesynthError, Problem, SpecError
from ..spec import model as m
from ..spec.load import LoadedSpec
from ..spec.params import SEPARATE_OVERLAP
from ..spec.trust import Refused, check_url, host_allowed
from .graph import FileInput, Graph, NodeInput, StageNode

DOWNLOAD_FORMAT = "bestvideo*[height<=?{h}]+bestaudio/best[height<=?{h}]"


def ytdlp_major() -> str:
    """yt-dlp's major version (its release year): part of a download's content key."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("yt-dlp").split(".")[0]
    except PackageNotFoundError:
        return "none"


def download_format(max_height: int) -> str:
    return DOWNLOAD_FORMAT.format(h=max_height)


def source_input(graph: Graph, loaded: LoadedSpec, value: Any, loc: tuple,
                 name: str | None = None) -> FileInput | NodeInput:
    """The input for a file field at ``loc`` (spec path): a file, or the node that makes it
    (``name``: the field part of a frame node's id, when ``loc`` does not give a unique one)."""
    if isinstance(value, m.ImageSource):
        return _frame_node(graph, loaded, value.frame, loc, name)
    if isinstance(value, m.AudioSource):
        if value.file is not None:
            return source_input(graph, loaded, value.file, (*loc, "file"))
        if value.separate is not None:
            return _separate_node(graph, loaded, value.separate, loc)
        if value.extract is not None:
            return _extract_node(graph, loaded, value.extract, loc)
        raise AssertionError(f"audio source {value.source()} at {loc} is planned by plan/expand.py")
    if m.is_url(value):
        return _download_node(graph, loaded, _checked_url(loaded, value, loc), loc)
    return FileInput(path=(loaded.spec_dir / value).resolve(), display=value)


def _checked_url(loaded: LoadedSpec, value: str, loc: tuple) -> str:
    """The URL rebuilt from the parts that were checked against the operator's hosts: what
    yt-dlp is given. A URL the loader let through is refused here only if the rules changed."""
    try:
        checked = check_url(value)
    except Refused as exc:
        raise SpecError([Problem(f"{exc.message}", loaded.where(*loc), loaded.path_text(*loc), exc.hint)]) \
            from None
    if not host_allowed(checked.host, loaded.trust.allow_hosts):
        raise SpecError([Problem(f"host '{checked.host}' is not on allow_hosts",
                                 loaded.where(*loc), loaded.path_text(*loc))])
    return checked.url


def _scene_id(loaded: LoadedSpec, loc: tuple) -> str | None:
    return loaded.spec.scenes[loc[1]].id if loc[0] == "scenes" else None


def _download_node(graph: Graph, loaded: LoadedSpec, url: str, loc: tuple) -> NodeInput:
    fmt = download_format(loaded.spec.defaults.download_height)
    node_id = "download." + hashlib.sha256(f"{url}\n{fmt}".encode()).hexdigest()[:12]
    use = {"scene": _scene_id(loaded, loc), "field": loaded.path_text(*loc),
           "where": str(loaded.where(*loc) or loaded.display)}
    if node_id in graph.nodes:
        graph[node_id].runtime["uses"].append(use)
    else:
        graph.add(StageNode(
            id=node_id, kind="download", scene=None,
            params={"url": url, "format": fmt, "ytdlp": ytdlp_major()},
            runtime={"uses": [use]}, where=loaded.where(*loc)))
    return NodeInput(node_id)


def _frame_node(graph: Graph, loaded: LoadedSpec, frame: m.FrameFrom, loc: tuple,
                name: str | None = None) -> NodeInput:
    sid = _scene_id(loaded, loc)
    field = name or next(p for p in reversed(loc) if isinstance(p, str))
    if name is None and isinstance(loc[-1], int):   # an item of a list (keyframes): its place, from 1
        field = f"{field}_{loc[-1] + 1}"
    node_id = f"{sid}.{field}_frame"
    graph.add(StageNode(
        id=node_id, kind="extract_frame", scene=sid, params={"at": frame.at},
        inputs={"video": source_input(graph, loaded, frame.source, (*loc, "frame", "source"))},
        publish=f"scenes/{sid}.{field}_frame.png", where=loaded.where(*loc)))
    return NodeInput(node_id)


def _extract_node(graph: Graph, loaded: LoadedSpec, ex: m.ExtractFrom, loc: tuple) -> NodeInput:
    sid = _scene_id(loaded, loc)
    node_id = f"{sid}.extract_audio"
    graph.add(StageNode(
        id=node_id, kind="extract_audio", scene=sid, params={"start": ex.start, "end": ex.end},
        inputs={"media": source_input(graph, loaded, ex.source, (*loc, "extract", "source"))},
        where=loaded.where(*loc)))
    return NodeInput(node_id)


def _separate_node(graph: Graph, loaded: LoadedSpec, sep: m.SeparateFrom, loc: tuple) -> NodeInput:
    sid = _scene_id(loaded, loc)
    node_id = f"{sid}.separate"
    graph.add(StageNode(
        id=node_id, kind="separate", scene=sid, model_role="separate",
        params={"stem": sep.stem, "overlap": SEPARATE_OVERLAP},
        inputs={"audio": source_input(graph, loaded, sep.source, (*loc, "separate", "source"))},
        publish=f"scenes/{sid}.{sep.stem}.wav", where=loaded.where(*loc)))
    return NodeInput(node_id)


def refuse_downloads(plan: Any) -> None:
    """``--offline``: every download a render needs must already be in the cache (a cached
    one is kept even under ``--force``: offline, nothing is fetched again)."""
    lines = []
    for nid in plan.order:
        st = plan.stages[nid]
        if st.node.kind != "download" or st.status != "run":
            continue
        entry = plan.cache.lookup(st.key) if st.key else None
        if entry is not None:
            st.status, st.entry = "cached", entry
            continue
        for use in st.node.runtime.get("uses", []):
            scene = f"scene '{use['scene']}', " if use["scene"] else ""
            lines.append(f"{use['where']}: {scene}{use['field']}: {st.node.params['url']}")
    if lines:
        raise OfflineError(lines)


class OfflineError(CinesynthError):
    """--offline and a download that is not cached."""

    exit_code = 1

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__(f"offline: {len(lines)} download(s) not in the cache",
                         hint="render once without --offline to download them")

    def render(self) -> str:
        return "\n".join([f"{self.message} ({self.hint}):", *[f"  {ln}" for ln in self.lines]])
