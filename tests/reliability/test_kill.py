"""SIGKILL of a whole ``cinesynth render`` process group, at every kind of moment.

Each trial starts a real render in its own session, watches its ``--events`` file and kills the
process group right after a chosen event (or after a seeded random delay). Then: every object
hashes to its name, every key names a whole object, what was committed is exactly what had
finished (plus, at most, the stage in flight if its commit completed before the kill), the next
render re-runs exactly the other stages, and the final video is byte-identical to a clean one.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from cinesynth_batch.execute.render import render
from store_checks import FINAL, STAGES, check_store, events, make_project, sha, stages_with

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# (event, stage) boundaries: a stage's start is the previous one's end, so these are every
# boundary of the render up to the model stage, then the model stage's two ends and the last
# stage's (killed between its commit and publishing).
BOUNDARIES = [("stage_started", "a.extract_audio"), ("stage_finished", "a.extract_audio"),
              ("stage_finished", "a.image_frame"), ("stage_started", "a.video"),
              ("stage_finished", "a.video"), ("stage_started", "assemble.final"),
              ("stage_finished", "assemble.final")]
ORDER = ["a.extract_audio", "a.image_frame", "b.image_frame", "a.video", "b.video", "assemble.final"]
RANDOM_SEEDS = [11, 23, 5]


def random_moment(seed: int) -> tuple[str, float]:
    """A seeded random moment: some time (up to 0.4 s) into a randomly chosen stage."""
    rng = random.Random(seed)
    return rng.choice(ORDER), rng.uniform(0.0, 0.4)


@dataclass
class Trial:
    name: str
    root: Path
    events: list[dict]
    killed: bool


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean render of the spec: the bytes every killed-and-resumed render must end with."""
    spec = make_project(tmp_path_factory.mktemp("clean") / "p")
    render(spec, progress=False)
    return sha(spec.parent / FINAL)


def _start(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "render.py"), str(root / "k.yaml"),
                             "--events", str(root / "killed.jsonl"), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_when(proc: subprocess.Popen, root: Path, event: str, stage: str, delay: float) -> bool:
    """Kill the process group ``delay`` s after ``event`` for ``stage`` appears.
    Returns whether it was killed (False: the render ended first)."""
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < 240:
        if any(e["event"] == event and e.get("stage") == stage for e in events(root / "killed.jsonl")):
            time.sleep(delay)
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def _trial(base: Path, name: str, event: str, stage: str, delay: float) -> Trial:
    root = base / name
    make_project(root)
    proc = _start(root)
    killed = _kill_when(proc, root, event, stage, delay)
    return Trial(name, root, events(root / "killed.jsonl"), killed)


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    """All killed renders, two at a time (each is a separate process group)."""
    base = tmp_path_factory.mktemp("kills")
    plans = [(f"{ev}-{st}", ev, st, 0.0) for ev, st in BOUNDARIES]
    plans += [(f"random-{seed}", "stage_started", *random_moment(seed)) for seed in RANDOM_SEEDS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda p: _trial(base, *p), plans))


def _committed(cache: Path, evs: list[dict]) -> set[str]:
    """The stages whose key is in the store (keys come from the killed render's events)."""
    keys = check_store(cache)
    started = {e["stage"]: e["key"] for e in evs if e["event"] == "stage_started"}
    return {stage for stage, key in started.items() if key in keys}


@pytest.mark.parametrize("index", range(len(BOUNDARIES) + len(RANDOM_SEEDS)))
def test_killed_render_leaves_a_clean_store_and_resumes_exactly(trials, clean, index):
    trial = trials[index]
    cache = trial.root / ".cinesynth/cache"
    finished = set(stages_with(trial.events, "stage_finished"))
    in_flight = set(stages_with(trial.events, "stage_started")) - finished
    assert trial.killed, f"{trial.name}: the render ended before the kill"
    assert not any(e["event"] == "render_finished" for e in trial.events)
    if (trial.root / FINAL).exists():                  # killed while publishing: never a partial file
        assert trial.name == "stage_finished-assemble.final" and sha(trial.root / FINAL) == clean
    committed = _committed(cache, trial.events) if cache.exists() else set()
    assert finished <= committed <= finished | in_flight, trial.name
    assert len(in_flight) <= 1

    resume_events = trial.root / "resume.jsonl"
    result = render(trial.root / "k.yaml", progress=False, events=resume_events)
    evs = events(resume_events)
    assert set(stages_with(evs, "stage_started")) == STAGES - committed, trial.name
    assert set(result.outcome.ran) == STAGES - committed
    assert set(result.outcome.cached) == committed
    assert sha(trial.root / FINAL) == clean
    check_store(cache)
    assert not any((cache / "tmp").iterdir())          # the killed render's scratch is gone
    assert render(trial.root / "k.yaml", progress=False).outcome.ran == []
    shutil.rmtree(trial.root)


def test_trials_cover_every_boundary_and_random_moments(trials):
    assert len(trials) >= 10
    for trial in trials:
        if trial.name.startswith("stage_"):
            event, stage = trial.name.split("-", 1)
            assert stage in stages_with(trial.events, event), trial.name
