"""``cinesynth render --nproc 2``: two ranks under torchrun (gloo, CPU), tiny profile."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cinesynth_batch.execute.render import render

from test_render_tiny import ALL, make_project
from projects import new_project

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "cinesynth_batch.cli", "render"]


def run_cli(spec: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*CLI, str(spec), "--no-progress", *args], capture_output=True, text=True,
                          env=env, **kw)


def read_events(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_two_ranks_render_each_stage_once_and_write_the_single_process_lock(tmp_path):
    single = make_project(tmp_path / "single")
    render(single / "short.yaml", progress=False)

    root = make_project(tmp_path / "two")
    events = root / "events.jsonl"
    done = run_cli(root / "short.yaml", "--nproc", "2", "--events", str(events))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "7 run, 0 cached"
    lines = read_events(events)
    started = [(e["stage"], e["rank"]) for e in lines if e["event"] == "stage_started"]
    finished = [e["stage"] for e in lines if e["event"] == "stage_finished"]
    assert sorted(s for s, _ in started) == sorted(ALL) and sorted(finished) == sorted(ALL)
    assert {r for _, r in started} == {0, 1}                 # both ranks did work
    # dependencies held: each stage started after its inputs finished
    at = {e["stage"]: e["time"] for e in lines if e["event"] == "stage_finished"}
    begin = {e["stage"]: e["time"] for e in lines if e["event"] == "stage_started"}
    assert begin["intro.upscale"] >= at["intro.image"] and begin["intro.video"] >= at["intro.upscale"]
    assert begin["outro.video.2"] >= at["outro.video.1"]
    assert begin["assemble.final"] >= max(at[s] for s in ALL - {"assemble.final"})
    assert [e["event"] for e in lines].count("render_finished") == 1

    lock = (root / "outputs/short/render.lock").read_bytes()
    assert lock == (single / "outputs/short/render.lock").read_bytes()
    final = root / "outputs/short/final.mp4"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == \
        hashlib.sha256((single / "outputs/short/final.mp4").read_bytes()).hexdigest()
    manifest = json.loads((root / "outputs/short/manifest.json").read_text())
    assert {s["status"] for s in manifest["stages"]} == {"ran"}
    memory = manifest["memory"]                # one entry per rank, in rank order
    assert [(r["rank"], r["device"], r["peak_gpu_bytes"]) for r in memory["ranks"]] == [(0, "cpu", None),
                                                                                      (1, "cpu", None)]
    assert all(set(r) == {"rank", "device", "peak_gpu_bytes", "pinned_bytes", "loads", "swaps", "bytes_moved"}
               for r in memory["ranks"])
    assert sum(r["loads"] for r in memory["ranks"]) == memory["loads"] == sum(manifest["model_loads"].values())
    assert memory["swaps"] == 0 and memory["pinned_bytes"] == 0       # the CPU pins nothing by default
    assert memory["bytes_moved"] == sum(r["bytes_moved"] for r in memory["ranks"]) > 0
    report = (root / "outputs/short/report.html").read_text()
    assert f"{memory['loads']} model load(s), 0 swap(s)" in report
    # the timeline: one bar per stage, each in the lane of the rank that ran it
    bars = manifest["figures"]["bars"]
    assert sorted(b["stage"] for b in bars) == sorted(s["id"] for s in manifest["stages"])
    assert {b["lane"] for b in bars} == {"rank 0", "rank 1"}
    assert all(s["ended_at"] >= s["started_at"] for s in manifest["stages"])
    assert report.count('class="bar"') == len(bars)

    again = run_cli(root / "short.yaml", "--nproc", "2", "--events", str(events))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == "0 run, 7 cached"
    assert (root / "outputs/short/render.lock").read_bytes() == lock


def test_a_model_over_each_ranks_share_of_the_budget_is_refused_before_anything_runs(tmp_path):
    """--vram-budget is for the node: two ranks get half each, and a model over its half stops
    the render before any stage runs, with the model's error and exit code."""
    from cinesynth_batch.catalog.budget import human
    from cinesynth_batch.catalog.registry import Registry
    from cinesynth_batch.catalog.residency import _disk_size

    root = tmp_path / "p"
    root.mkdir()
    (root / "cinesynth.toml").write_text("")
    (root / "s.yaml").write_text('project: fit\ndefaults: {resolution: 64x64, seed: 3}\n'
                                 'scenes:\n  - id: a\n    image: {prompt: "a cat", steps: 2}\n')
    size = _disk_size(Registry.load("tiny", root, root).local_path("image"), "float32")
    events = root / "events.jsonl"
    done = run_cli(root / "s.yaml", "--nproc", "2", "--vram-budget", str(2 * size - 2), "--events", str(events))
    assert done.returncode == 3, done.stderr
    refusal = (f"image: tiny/flux2-klein needs {human(size)}, the budget of rank 0 on cpu is {human(size - 1)} "
               "(pass a larger --vram-budget")
    assert done.stderr.count(refusal) == 1 and "Traceback" not in done.stderr
    assert not [e for e in read_events(events) if e["event"].startswith("stage_")]
    assert not list((root / ".cinesynth" / "cache").glob("objects/*/*"))
    ok = run_cli(root / "s.yaml", "--nproc", "2", "--vram-budget", str(2 * size))   # half each: it fits
    assert ok.returncode == 0, ok.stderr


SPLIT = """
project: split
defaults: {resolution: 64x64, fps: 16, seed: -1}
scenes:
  - id: a
    video: {image: still.png, prompt: "waves", frames: 9, steps: 60}
  - id: b
    video: {image: still.png, prompt: "sailing", frames: 9, steps: 60}
  - id: c
    image: {prompt: "a boat", steps: 2}
"""


def rank_pid(rank: int, run_id_of: int) -> int | None:
    """The pid of a torchrun worker with RANK=``rank`` below process ``run_id_of``."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(x.startswith(b"TORCHELASTIC_RUN_ID=") for x in env):
            if _descends(int(d.name), run_id_of, stat):
                return int(d.name)
    return None


def _descends(pid: int, ancestor: int, stat: str) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def test_killed_rank_fails_the_render_naming_its_stage_and_the_next_run_resumes(tmp_path):
    from PIL import Image

    root = tmp_path / "p"
    root.mkdir()
    (root / "cinesynth.toml").write_text("")
    Image.new("RGB", (64, 64), (200, 90, 30)).save(root / "still.png")
    (root / "split.yaml").write_text(SPLIT)
    events = root / "events.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*CLI, str(root / "split.yaml"), "--no-progress", "--nproc", "2",
                             "--events", str(events)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    victim = None
    while time.time() < deadline and proc.poll() is None:
        lines = read_events(events) if events.exists() else []
        running = [e for e in lines if e["event"] == "stage_progress" and e.get("rank") == 1
                   and e.get("kind") == "video" and e["step"] >= 2]
        if running:
            victim = running[0]["stage"]
            break
        time.sleep(0.05)
    assert victim is not None, "rank 1 never reached a video stage"
    pid = rank_pid(1, proc.pid)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"render failed: rank 1 died (killed by SIGKILL) while running {victim}")
    assert "run the same command to resume" in last
    assert "Traceback" not in err                        # torchrun's own report is kept back

    lines = read_events(events)
    done = {e["stage"] for e in lines if e["event"] == "stage_finished"}
    assert victim not in done
    cache = root / ".cinesynth/cache"
    for obj in (cache / "objects").glob("*/*"):
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == obj.name.split(".")[0]
    assert len(list((cache / "keys").glob("*/*.json"))) == len(done)

    again = run_cli(root / "split.yaml", "--nproc", "2", "--events", str(events))
    assert again.returncode == 0, again.stderr
    lines = read_events(events)
    last_render = max(i for i, e in enumerate(lines) if e["event"] == "render_started")
    ran = {e["stage"] for e in lines[last_render:] if e["event"] == "stage_finished"}
    cached = {e["stage"] for e in lines[last_render:] if e["event"] == "stage_cached"}
    assert ran == {"a.video", "b.video", "c.image", "assemble.final"} - done
    assert cached == done and victim in ran
    assert not any((cache / "tmp").iterdir())           # the dead rank's scratch folder is gone


TALK = """
project: talk
defaults: {resolution: 64x64, fps: 16, seed: 7}
scenes:
  - id: guest
    lipsync:
      avatar: assets/avatar.png
      audio: assets/line1.wav
      prompt: "a man talking"
      infer_frames: 16
      steps: 3
  - id: still
    image: {prompt: "a studio", steps: 2}
assemble:
  loudness: -16
"""

# Under torchrun: every lipsync stage split over 2 ranks. The CPU refuses splits (diffusers'
# context parallelism needs GPUs); our S2V transformer splits over gloo too, so this launcher
# skips the refusal to run the whole split path here: scheduling, follower, leader's commit.
SPLIT_LAUNCHER = """
import sys
from cinesynth_batch.execute import distributed
distributed.plan_degrees = lambda plan, options, topo: {
    s.id: 2 if s.node.kind == "lipsync" else 1 for s in plan.to_run()}
from cinesynth_batch.cli import main
main(["render", *sys.argv[1:]])
"""


def test_lipsync_split_over_two_gloo_ranks_writes_the_single_process_lock_fake_gpu(tmp_path):
    roots = [new_project(tmp_path / name, "talk.yaml", TALK).parent for name in ("single", "split")]
    render(roots[0] / "talk.yaml", progress=False)
    launcher = tmp_path / "split_launcher.py"
    launcher.write_text(SPLIT_LAUNCHER)
    events = roots[1] / "events.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(launcher), str(roots[1] / "talk.yaml"),
                           "--no-progress", "--events", str(events)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "3 run, 0 cached"
    lines = read_events(events)
    started = [(e["stage"], e["rank"]) for e in lines if e["event"] == "stage_started"]
    assert ("guest.lipsync", 0) in started and len([s for s, _ in started if s == "guest.lipsync"]) == 1
    # the follower (rank 1) took part: it loaded the split model too
    loads = next(x for x in done.stdout.splitlines() if x.startswith("model loads: "))
    assert "lipsync@sp2 2" in loads
    assert (roots[1] / "outputs/talk/render.lock").read_bytes() == \
        (roots[0] / "outputs/talk/render.lock").read_bytes()
    # the split stage's seconds count on both ranks; its bar leads in rank 0, shared with rank 1
    manifest = json.loads((roots[1] / "outputs/talk/manifest.json").read_text())
    row = next(r for r in manifest["stages"] if r["id"] == "guest.lipsync")
    assert row["ranks"] == [0, 1] and row["lane"] == "rank 0"
    assert "ranks" not in next(r for r in manifest["stages"] if r["id"] == "still.image")
    fig = manifest["figures"]
    (bar,) = [b for b in fig["bars"] if b["stage"] == "guest.lipsync"]
    assert bar["shares"] == ["rank 1"]
    assert fig["by_kind"]["lipsync"] == pytest.approx(2 * (bar["end"] - bar["start"]), abs=1e-3)
    report = (roots[1] / "outputs/talk/report.html").read_text()
    assert report.count('<rect class="share" data-stage="guest.lipsync"') == 1
