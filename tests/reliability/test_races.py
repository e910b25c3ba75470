"""Renders beside ``gc`` and beside each other.

``cinesynth gc --max-size 1`` runs in a loop in another process while a render runs: the render
succeeds, warns of nothing (no false "damaged") and publishes the bytes of an undisturbed
render, while gc does remove what no render holds. Two renders of one spec started together both
succeed, run each stage once between them (the second waits on the key's lock and takes the
first's result) and publish the same bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cinesynth_batch.cache.store import CacheStore
from cinesynth_batch.execute.render import render
from store_checks import FINAL, STAGES, check_store, events, make_project, sha, stages_with

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}

GC_LOOP = """
import sys, time
from pathlib import Path
from typer.testing import CliRunner
from cinesynth_batch.cli import app
stop = Path(sys.argv[1])
runner = CliRunner()
passes = 0
while not stop.exists():
    out = runner.invoke(app, ["gc", "--max-size", "1"])
    if out.exit_code != 0:
        print("gc failed:", out.output, flush=True)
        sys.exit(1)
    print(out.output.strip(), flush=True)
    passes += 1
    time.sleep(0.02)
print("passes", passes, flush=True)
"""


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The bytes of one undisturbed render."""
    spec = make_project(tmp_path_factory.mktemp("single") / "p")
    render(spec, progress=False)
    return sha(spec.parent / FINAL)


def _cli_render(root: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "render.py"), str(root / "k.yaml"), "--no-progress",
                             "--events", str(root / f"{name}.jsonl")], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _garbage(cache: Path, n: int) -> int:
    """``n`` entries no render uses, made long ago; returns their total size."""
    store = CacheStore(cache)
    for i in range(n):
        d = store.scratch()
        (d / "out.bin").write_bytes(os.urandom(512) + bytes([i]))
        entry = store.commit(f"{i:064x}", d / "out.bin", ".bin", f"old{i}", "image", {})
        d.rmdir()
        for p in (store.key_path(entry.key), store.object_path(entry.digest, ".bin")):
            os.utime(p, (1, 1))
    return n


def test_gc_in_a_loop_beside_a_render(single, tmp_path):
    root = make_project(tmp_path / "p").parent
    cache = root / ".cinesynth/cache"
    _garbage(cache, 40)
    stop = tmp_path / "stop"
    gc = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(stop)],
                          env={**ENV, "CINESYNTH_CACHE": str(cache)},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    warnings: list[str] = []
    try:
        first_pass = gc.stdout.readline()
        assert first_pass.startswith("removed 40 objects and 40 keys")   # gc is looping
        result = render(root / "k.yaml", progress=False, events=root / "render.jsonl", warn=warnings.append)
    finally:
        stop.touch()
    gc_out, gc_err = gc.communicate(timeout=60)
    assert gc.returncode == 0, gc_out + gc_err
    assert warnings == []                                         # no false "damaged" (or any) warning
    assert result.summary == "6 run, 0 cached"
    passes = int(gc_out.strip().splitlines()[-1].split()[1])
    assert passes >= 5, gc_out
    print(f"gc passes beside the render: {passes}")
    started = stages_with(events(root / "render.jsonl"), "stage_started")
    assert sorted(started) == sorted(STAGES)
    assert sha(root / FINAL) == single
    check_store(cache)
    assert not list((cache / "leases").glob("*.lock"))            # the render's lease is gone


def test_two_renders_of_one_spec_run_each_stage_once(single, tmp_path):
    root = make_project(tmp_path / "p").parent
    first, second = _cli_render(root, "one"), _cli_render(root, "two")
    results = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, results
    one, two = events(root / "one.jsonl"), events(root / "two.jsonl")
    started = stages_with(one, "stage_started") + stages_with(two, "stage_started")
    assert sorted(started) == sorted(STAGES)                      # each stage ran exactly once
    for evs in (one, two):                                        # each render saw every stage done
        done = set(stages_with(evs, "stage_finished")) | set(stages_with(evs, "stage_cached"))
        assert done == STAGES
    waited = [e for e in one + two
              if e["event"] == "stage_cached" and e.get("reason") == "made by another render"]
    assert waited, "neither render took a stage from the other"
    assert sha(root / FINAL) == single
    check_store(root / ".cinesynth/cache")
