"""``--executor ray`` on a real Ray cluster of three nodes on this machine (``ray.cluster_utils.
Cluster``: a head and two worker nodes, one CPU each, so one worker actor per node), tiny profile."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")

from ray.cluster_utils import Cluster  # noqa: E402

from cinesynth_batch.cache.store import CacheStore  # noqa: E402
from cinesynth_batch.execute.ray_executor import RayExecutor, RayOptions  # noqa: E402
from cinesynth_batch.execute.render import render  # noqa: E402
from projects import REPO, new_project  # noqa: E402

pytestmark = pytest.mark.slow

SPEC = REPO / "specs" / "fleet" / "twelve.yaml"
SCENES = [f"shot-{n}" for n in range(1, 13)]
ALL = {f"{s}.{k}" for s in SCENES for k in ("image", "video")} | {"assemble.final"}


def project(root: Path) -> Path:
    return new_project(root, "twelve.yaml", SPEC.read_text())


def out_dir(spec: Path) -> Path:
    return spec.parent / "outputs" / "twelve"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same spec rendered by one process, the local executor."""
    spec = project(tmp_path_factory.mktemp("single") / "p")
    result = render(spec, progress=False)
    assert set(result.outcome.ran) == ALL
    return out_dir(spec)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                      "_system_config": {"worker_niceness": 0}})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def ex(cluster):
    """One driver for the module: its worker actors (one per node) stay up from one render to
    the next, with their models loaded, as in a batch."""
    executor = RayExecutor(options=RayOptions(address=cluster.address))
    assert executor.connect() == "cpu"
    yield executor
    executor.close()


def test_three_nodes_render_the_single_process_lock_and_a_second_render_runs_nothing(
        cluster, ex, single, tmp_path):
    spec = project(tmp_path / "p")
    events = tmp_path / "events.jsonl"
    result = render(spec, progress=False, executor=ex, device=ex.device, events=events)
    nodes = set(ex.nodes.values())
    assert sorted(result.outcome.ran) == sorted(ALL) and result.outcome.cached == []
    assert len(nodes) == 3                      # one worker actor on each node
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assigned = {e["stage"]: e["detail"]["worker"] for e in lines if e["event"] == "stage_assigned"}
    assert set(assigned) == ALL and set(assigned.values()) == {0, 1, 2}
    finished = {e["stage"]: e["rank"] for e in lines if e["event"] == "stage_finished"}
    assert finished == assigned                 # each ran where the driver sent it, once
    # a worker loads a model once and keeps it: never more loads of a model than workers
    loads = result.outcome.model_loads
    assert set(loads) == {"image", "video"} and all(1 <= n <= 3 for n in loads.values())
    manifest = json.loads((out_dir(spec) / "manifest.json").read_text())
    assert [r["rank"] for r in manifest["memory"]["ranks"]] == [0, 1, 2]
    assert sum(r["loads"] for r in manifest["memory"]["ranks"]) == sum(loads.values())
    # the timeline: each stage in the lane of the worker that ran it, with that worker's node
    rows = {r["id"]: r for r in manifest["stages"]}
    assert {n: rows[n]["lane"] for n in ALL} == {n: f"worker {w}" for n, w in assigned.items()}
    assert {n: rows[n]["node"] for n in ALL} == {n: ex.nodes[w][:12] for n, w in assigned.items()}
    assert all(rows[f"{s}.image"]["ended_at"] <= rows[f"{s}.video"]["started_at"] for s in SCENES)
    bars = manifest["figures"]["bars"]
    assert sorted(b["stage"] for b in bars) == sorted(ALL)
    assert {b["lane"] for b in bars} == {"worker 0", "worker 1", "worker 2"}
    report = (out_dir(spec) / "report.html").read_text()
    assert report.count('class="bar"') == len(ALL) and all(f">worker {w}<" in report for w in range(3))

    assert (out_dir(spec) / "render.lock").read_bytes() == (single / "render.lock").read_bytes()
    assert sha(out_dir(spec) / "final.mp4") == sha(single / "final.mp4")
    for n in (1, 12):
        assert sha(out_dir(spec) / f"scenes/shot-{n}.mp4") == sha(single / f"scenes/shot-{n}.mp4")

    # the command line, on the same cluster: nothing left to run, no worker started
    env = dict(os.environ, OMP_NUM_THREADS="1")
    again = subprocess.run([sys.executable, "-m", "cinesynth_batch.cli", "render", str(spec), "--no-progress",
                            "--executor", "ray", "--ray-address", cluster.address],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == f"0 run, {len(ALL)} cached"
    assert (out_dir(spec) / "render.lock").read_bytes() == (single / "render.lock").read_bytes()


def test_a_batch_of_specs_shares_the_workers_and_their_loaded_models(ex, tmp_path):
    """Two specs in one session on the same workers: a worker that loaded a model for the first
    spec still holds it for the second (at most one load of each model per worker in all)."""
    from cinesynth_batch.execute.batch import render_batch

    root = new_project(tmp_path / "nightly")          # one project folder, two specs
    specs = []
    for name in ("north", "south"):
        text = SPEC.read_text().replace("project: twelve", f"project: {name}") \
            .replace("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]", "[1, 2, 3]").replace("harbour", name)
        (root / f"{name}.yaml").write_text(text)
        specs.append(root / f"{name}.yaml")
    seen = []
    result = render_batch(specs, executor=ex, device=ex.device, progress=False, sinks=[seen.append])
    assert [(r.status, r.ran, r.cached) for r in result.specs] == [("rendered", 7, 0)] * 2
    assert result.exit_code == 0
    videos = [e for e in seen if e.event == "stage_finished" and e.stage.endswith(".video")]
    assert len(videos) == 6
    for name in ("north", "south"):
        assert (root / "outputs" / name / "final.mp4").is_file()
    # no more model loads in the whole batch than workers: none loaded twice on one worker
    manifests = [json.loads((root / "outputs" / n / "manifest.json").read_text()) for n in ("north", "south")]
    assert set(manifests[0]["model_loads"]) == {"image", "video"}   # a new project folder: loaded anew
    total: dict[str, int] = {}
    for m in manifests:
        for k, v in m["model_loads"].items():
            total[k] = total.get(k, 0) + v
    assert set(total) <= {"image", "video"} and all(v <= len(ex.actors) for v in total.values())


def test_a_worker_node_killed_mid_render_has_its_stage_rerun_elsewhere(cluster, ex, single, tmp_path):
    spec = project(tmp_path / "p")
    head = cluster.head_node.node_id
    killed: dict = {}

    def kill_on_video(event) -> None:
        """The first video stage sent to a worker on a worker node: remove that node now."""
        if killed or event.event != "stage_assigned" or not event.stage.endswith(".video"):
            return
        node_id = event.detail["node"]
        if node_id == head:
            return
        victim = next(n for n in cluster.worker_nodes if n.node_id == node_id)
        cluster.remove_node(victim, allow_graceful=False)
        killed.update(stage=event.stage, worker=event.detail["worker"], node=node_id)

    seen = []
    try:
        result = render(spec, progress=False, executor=ex, device=ex.device,
                        sinks=[kill_on_video, seen.append])
    finally:
        cluster.add_node(num_cpus=1)            # three nodes again for whatever runs next
    assert killed, "no video stage went to a worker node"
    # what the killed worker held in flight is lost (the video that triggered the kill, or a
    # stage queued on that worker before it): each lost stage finishes once, on another worker
    lost = [e for e in seen if e.event == "stage_lost"]
    assert lost and {e.detail["worker"] for e in lost} == {killed["worker"]}
    for stage in {e.stage for e in lost}:
        done = [e for e in seen if e.event == "stage_finished" and e.stage == stage]
        assert len(done) == 1 and done[0].rank != killed["worker"]   # re-run on another worker
    assert sorted(result.outcome.ran) == sorted(ALL) and not result.outcome.failed

    assert (out_dir(spec) / "render.lock").read_bytes() == (single / "render.lock").read_bytes()
    assert sha(out_dir(spec) / "final.mp4") == sha(single / "final.mp4")
    cache = CacheStore(spec.parent / ".cinesynth" / "cache")
    # every object hashes to its name, every key names an object, and there is one per stage:
    # nothing of the killed run's half-made output
    assert cache.verify() == {"verified": len(ALL), "damaged": 0, "dangling": 0}
