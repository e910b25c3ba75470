"""A property of the spec loader: every input either validates or raises a ``SpecError`` whose
problems all have a location (one line each), and nothing else; within a time limit per input
and a memory limit for the run.

Inputs are mutations of valid specs: values replaced by wrong types, huge or non-finite numbers,
odd unicode, hostile paths, URLs and templates; keys dropped or added; subtrees shared (written
as YAML aliases); bytes inserted into the text (bad UTF-8, control characters, broken syntax).

CI runs a few hundred examples with a fixed seed. The long run (documented in
docs/reliability.md)::

    CINESYNTH_FUZZ_EXAMPLES=20000 python -m pytest -q -s tests/reliability/test_spec_fuzz.py
"""

from __future__ import annotations

import copy
import os
import resource
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cinesynth_batch.errors import SpecError
from cinesynth_batch.spec.load import load_spec
from projects import new_project

EXAMPLES = int(os.environ.get("CINESYNTH_FUZZ_EXAMPLES", "300"))
DEADLINE_MS = 5_000              # one input (templates may use up to template_seconds)
MEMORY_GROWTH = 512 << 20        # peak RSS growth allowed over the whole run

BASES: list[dict[str, Any]] = [
    {"project": "p", "defaults": {"resolution": "64x64", "seed": 1},
     "scenes": [{"id": "one", "image": {"prompt": "a cat", "steps": 2}}]},
    {"project": "q", "vars": {"subject": "a fox", "n": 3},
     "scenes": [{"id": "shot-{{ color }}", "matrix": {"color": ["red", "blue"]},
                 "image": {"prompt": "{{ subject }} in {{ color }}", "width": 64, "height": 64},
                 "video": {"prompt": "walk", "frames": 9, "steps": 2, "segments": 2,
                           "loras": [{"name": "tiny/motion", "high": 1.0, "low": 0.5}]},
                 "audio": "assets/line1.wav"}],
     "assemble": {"music": "assets/bed.wav", "transition": {"crossfade": 0.5}}},
    {"project": "r", "presets": {"fast": {"image": {"steps": 1}}},
     "scenes": [{"id": "talk", "preset": "fast", "image": {"prompt": "face"},
                 "lipsync": {"audio": {"tts": {"text": "hello", "language": "en"}}, "infer_frames": 8}},
                {"id": "still", "duration": 2.5, "image": {"prompt": "sky"},
                 "audio": {"extract": {"source": "assets/dance.mp4", "start": 0.5, "end": 1.0}}}],
     "assemble": [{"name": "final", "scenes": ["talk", "still"], "subtitles": "srt"}]},
    {"project": "s", "allow_hosts": ["youtube.com"],
     "scenes": [{"id": "dance", "image": {"prompt": "x"},
                 "animate": {"reference_video": "assets/dance.mp4", "frame_window": 5, "max_frames": 9}}]},
    {"project": "t",
     "scenes": [{"id": "body", "image": {"prompt": "a dancer", "upscale": "x2"}},
                {"id": "swap", "image": {"prompt": "swap", "model": "base", "fit": "90x160", "references": [
                    {"scene": "body"}, {"face_crop": {"source": "assets/avatar.png"}},
                    {"edit": {"prompt": "pose", "references": [{"frame": {"source": "assets/dance.mp4"}}]}}]}},
                {"id": "prep", "image": {"prompt": "p", "references": ["assets/avatar.png"], "prepare": [
                    {"reference": 1}, {"face_crop": {"source": {"reference": 1}}}]}}]},
]

HOSTILE_TEXT = [
    "", " ", "../../../etc/passwd", "/etc/passwd", "x" * 300, "a\x00b", "a\\b", "\u202e\u0000",
    "한국어 자막", "{{ 'x' * 10**11 }}", "{{ nope }}", "{% for i in range(99999) %}{% for j in range(99999) %}"
    "{% endfor %}{% endfor %}", "{{ range(10**9) | list }}", "http://127.0.0.1:1@youtube.com/",
    "http://127.0.0.1:1\\@youtube.com/", "file:///etc/passwd", "https://youtube.com/watch?v=x",
    "720p", "99999x99999", "16x16", "{{", "%}", ".inf", "1e9", "0x10", "~", "null", "yes",
]
BYTES = [b"\xe9", b"\x00", b"\xff\xfe", b"\x07", b"&a ", b"*a ", b"*nope", b"{", b"- ", b"\t", b"\n  ",
         b":", b"'", b'"', b"!!python/object:os.system ", b"<<: *a", b"\xef\xbb\xbf", b"\x1b[31m"]


def values() -> st.SearchStrategy:
    leaf = st.one_of(
        st.integers(), st.integers(min_value=10**6, max_value=10**30), st.sampled_from([-1, 0, 1, 4, 5, 81]),
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False), st.booleans(), st.none(),
        st.text(max_size=40), st.sampled_from(HOSTILE_TEXT))
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


VALUES = values()                 # built once: building a recursive strategy is not free


def _paths(node: Any, here: tuple = ()) -> list[tuple]:
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*here, i))
    return out


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def specs(draw) -> bytes:
    tree = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(0, 4))):
        paths = _paths(tree)
        if len(paths) < 2:                # everything dropped: nothing left to mutate
            break
        path = draw(st.sampled_from(paths[1:]))
        parent, key = _get(tree, path[:-1]), path[-1]
        action = draw(st.sampled_from(["replace", "replace", "drop", "add", "share"]))
        if action == "replace":
            parent[key] = draw(VALUES)
        elif action == "drop":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "stpes", "prompt", "output", "allow_paths", "vars",
                                         "matrix", "loras", "music"]))] = draw(VALUES)
        elif action == "share":          # the same object twice: written as an anchor and alias
            other = _get(tree, draw(st.sampled_from(paths)))
            if not (isinstance(other, (dict, list)) and _inside_of(other, parent)):
                parent[key] = other
    try:
        text = yaml.safe_dump(tree, allow_unicode=draw(st.booleans()), sort_keys=False).encode("utf-8")
    except (yaml.YAMLError, RecursionError):
        text = b"project: p\n"
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        chunk = draw(st.one_of(st.sampled_from(BYTES), st.binary(max_size=6)))
        text = text[:at] + chunk + text[at:]
    return text


def _inside_of(node: Any, target: Any) -> bool:
    """``target`` is ``node`` or somewhere under it (sharing it there would make a cycle)."""
    if node is target:
        return True
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return any(_inside_of(c, target) for c in children)


def test_load_spec_validates_or_locates_every_problem(tmp_path: Path, record_property):
    root = new_project(tmp_path / "p")
    spec = root / "s.yaml"
    seen = {"examples": 0, "valid": 0, "refused": 0, "problems": 0, "slowest": 0.0}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @settings(max_examples=EXAMPLES, deadline=DEADLINE_MS, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(text=specs())
    def check(text: bytes) -> None:
        spec.write_bytes(text)
        seen["examples"] += 1
        started = time.monotonic()
        try:
            load_spec(spec)
            seen["valid"] += 1
        except SpecError as exc:
            seen["refused"] += 1
            seen["problems"] += len(exc.problems)
            for problem in exc.problems:
                assert problem.where is not None, problem.render()
                assert problem.where.file == str(spec) and problem.where.line >= 1, problem.render()
                assert "\n" not in problem.render()
        finally:
            seen["slowest"] = max(seen["slowest"], time.monotonic() - started)

    check()
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    print(f"\nspec fuzz: {seen['examples']} examples ({seen['valid']} valid, {seen['refused']} refused "
          f"with {seen['problems']} located problems), slowest {seen['slowest']:.2f} s, "
          f"peak RSS growth {growth >> 20} MiB")
    for key, value in seen.items():
        record_property(f"fuzz_{key}", value)
    assert seen["examples"] >= min(EXAMPLES, 100)
    assert seen["valid"] > 0 and seen["refused"] > 0
    assert growth < MEMORY_GROWTH
