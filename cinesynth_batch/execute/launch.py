"""``cinesynth render SPEC --nproc N``: start the ranks with torchrun and wait for them.

The ranks run ``python -m cinesynth_batch.cli render SPEC ...`` (what ``torchrun render.py
SPEC`` does by hand). When one of them dies, torchrun stops the others; this parent then reads
the events file to say which stage the dead rank was running. Nothing of an unfinished stage is
in the cache (artifacts are committed by rename once complete), so running the same command
again resumes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path

from ..errors import RenderError


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "cinesynth_batch.cli", "render", *args]


def launch(nproc: int, args: list[str], events: Path | None) -> tuple[int, str | None]:
    """Run the render on ``nproc`` ranks; returns (exit code, a message naming what failed). A rank
    that stopped with an error of its own passes its exit code on (3: a model missing or too
    large, before anything ran), as a single-process render would exit."""
    own_events = events is None
    if own_events:
        fd, name = tempfile.mkstemp(prefix="cinesynth-events-", suffix=".jsonl")
        os.close(fd)
        events = Path(name)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")     # ranks share the cores fairly
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(torchrun_command(nproc, [*args, "--events", str(events)]), env=env,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    tail: deque[str] = deque(maxlen=400)
    pump = threading.Thread(target=_forward, args=(proc.stderr, tail), daemon=True)
    pump.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        code = proc.wait()
    pump.join(timeout=5)
    message = None
    if code != 0:
        rank, exitcode = root_cause("".join(tail))
        message = describe_failure(_read_events(events), rank, exitcode)
        if exitcode is not None and exitcode > 0:
            code = exitcode
    if own_events:
        events.unlink(missing_ok=True)
    return code, message


def _forward(stream, tail: deque) -> None:
    """Pass the ranks' output on. torchrun's own report of a failed rank (its log lines and a
    traceback of its launcher) is kept back: ``describe_failure`` says it in one line."""
    held: list[str] = []
    for line in stream:
        tail.append(line)
        if "torch/distributed/elastic/" in line:
            continue
        if held or line.startswith("Traceback (most recent call last):"):
            held.append(line)
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
    if held and not any("torch/distributed/run.py" in h for h in held):
        sys.stderr.write("".join(held))
        sys.stderr.flush()


_ROOT = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def root_cause(text: str) -> tuple[int | None, int | None]:
    """The rank torchrun saw fail first, and its exit code (negative: killed by that signal)."""
    m = _ROOT.search(text)
    if not m:
        return None, None
    return int(m.group(1)), int(m.group(2))


def _read_events(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue        # a line cut short by the kill
    return out


def unfinished(events: list[dict]) -> dict[str, int]:
    """Stages that started and neither finished nor failed: stage -> rank. Only the last
    render of the events file counts."""
    starts = [i for i, e in enumerate(events) if e.get("event") == "render_started"]
    events = events[starts[-1]:] if starts else events
    running: dict[str, int] = {}
    for e in events:
        kind, stage = e.get("event"), e.get("stage")
        if kind == "stage_started":
            running[stage] = e.get("rank", 0)
        elif kind in ("stage_finished", "stage_failed", "stage_cached"):
            running.pop(stage, None)
    return running


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return ""
    if exitcode < 0:
        try:
            return f" (killed by {signal.Signals(-exitcode).name})"
        except ValueError:
            return f" (signal {-exitcode})"
    return f" (exit code {exitcode})"


def describe_failure(events: list[dict], rank: int | None, exitcode: int | None) -> str | None:
    """A sentence naming the stage a dead rank was running; None when the ranks already
    reported the failure themselves (a stage that raised an error)."""
    running = unfinished(events)
    if rank is None and not running:
        return None
    resume = ("run the same command to resume: finished stages are cached, and nothing of an "
              "unfinished one entered the cache")
    mine = sorted(s for s, r in running.items() if r == rank) if rank is not None else []
    others = sorted(f"{s} (rank {r})" for s, r in running.items() if s not in mine)
    if mine:
        text = f"rank {rank} died{_signal_name(exitcode)} while running {', '.join(mine)}"
    elif rank is not None:
        if exitcode is not None and exitcode > 0 and not running:
            return None     # the rank exited with an error it printed itself
        text = f"rank {rank} died{_signal_name(exitcode)} between stages"
    else:
        text = "a rank died while running " + ", ".join(sorted(running))
        others = []
    if others:
        text += "; stopped with it: " + ", ".join(others)
    return RenderError(f"render failed: {text}", hint=resume).render()
