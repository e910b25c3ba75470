"""The Ray executor's pieces that need no cluster: a lost worker in the scheduling core, Ray
imported only when used, the command line's refusals."""

import hashlib
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cinesynth_batch.cli import app
from cinesynth_batch.execute.schedule import Schedule

UP = {"a.image": [], "b.image": [], "a.video": ["a.image"], "b.video": ["b.image"],
      "assemble": ["a.video", "b.video"]}
SLOTS = {"a.image": "image", "b.image": "image", "a.video": "video", "b.video": "video", "assemble": None}
ORDER = ["a.image", "b.image", "a.video", "b.video", "assemble"]


def ids(assignments):
    return [(a.stage, a.ranks) for a in assignments]


def test_a_lost_rank_gives_its_stage_back_and_takes_nothing_until_it_is_back():
    s = Schedule(order=ORDER, upstream=UP, available=set(), world=3, slots=SLOTS)
    assert ids(s.assign()) == [("a.image", (0,)), ("b.image", (1,))]
    assert s.held == {0: "image", 1: "image"}
    assert s.lost(0) == "a.image"                 # rank 0 died running a.image
    assert s.pending == ["a.image", "a.video", "b.video", "assemble"] and "a.image" not in s.running
    assert 0 not in s.held and 0 not in s.busy
    assert ids(s.assign()) == [("a.image", (2,))]     # another rank takes it; never rank 0
    assert s.assign() == []
    s.release(1)
    s.done("b.image", ok=True)
    assert ids(s.assign()) == [("b.video", (1,))]
    s.back(0)                                     # restarted: it serves again, holding no model
    s.release(2)
    s.done("a.image", ok=True)
    assert ids(s.assign()) == [("a.video", (0,))]     # the empty rank before one holding image
    for r, st in ((0, "a.video"), (1, "b.video")):
        s.release(r)
        s.done(st, ok=True)
    assert len(s.assign()) == 1
    s.release(s.running["assemble"][0])
    s.done("assemble", ok=True)
    assert s.finished() and s.available == set(ORDER)


def test_a_rank_lost_between_stages_gives_nothing_back():
    s = Schedule(order=ORDER, upstream=UP, available=set(), world=2, slots=SLOTS)
    assert s.lost(1) is None and s.pending == ORDER
    assert ids(s.assign()) == [("a.image", (0,))]


def test_the_package_imports_and_plans_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"          # `import ray` fails from here on
            "import cinesynth_batch.cli, cinesynth_batch.execute.ray_executor as r\n"
            "try:\n    r.import_ray()\nexcept Exception as e:\n    print(type(e).__name__, e.message, e.hint)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("CinesynthError --executor ray needs Ray (")
    assert done.stdout.rstrip().endswith("install the ray extra: pip install -e '.[ray]' (Ray 2.60)")


def test_the_command_line_refuses_what_ray_cannot_do(project, monkeypatch):
    spec = project / "s.yaml"
    spec.write_text("project: s\ndefaults: {resolution: 32x32}\nscenes:\n  - id: a\n    image: {prompt: x}\n")
    out = CliRunner().invoke(app, ["render", str(spec), "--executor", "dask"])
    assert out.exit_code == 2 and "unknown executor 'dask'" in out.output
    out = CliRunner().invoke(app, ["render", str(spec), "--executor", "ray", "--nproc", "2"])
    assert out.exit_code == 1 and "--nproc and --parallel sp are for torchrun" in out.output
    out = CliRunner().invoke(app, ["render", str(spec), "--executor", "ray", "--ray-worker-cpus", "0"])
    assert out.exit_code == 1 and "--ray-worker-cpus must be above 0, got 0.0" in out.output
    monkeypatch.setitem(sys.modules, "ray", None)
    out = CliRunner().invoke(app, ["render", str(spec), "--executor", "ray"])
    assert out.exit_code == 1 and "--executor ray needs Ray" in out.output
    assert not (project / "outputs").exists()


def test_a_head_that_takes_no_connection_is_said_at_once(project):
    """ray.init retries an address that answers nothing for minutes; the driver first checks that
    the head takes a connection (an unknown host, a closed port, a port that is not one)."""
    import socket

    from cinesynth_batch.execute.ray_executor import unreachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert unreachable(f"127.0.0.1:{port}") is None
        assert unreachable(f"ray://127.0.0.1:{port}") is None
    assert unreachable(f"127.0.0.1:{port}") == f"127.0.0.1:{port} takes no connection (Connection refused)"
    assert unreachable("127.0.0.1:x") == "'x' is not a port"
    assert unreachable("nowhere.invalid").startswith("nowhere.invalid:6379 takes no connection (")
    assert unreachable("ray://nowhere.invalid").startswith("nowhere.invalid:10001 takes no connection (")
    spec = project / "s.yaml"
    spec.write_text("project: s\ndefaults: {resolution: 32x32}\nscenes:\n  - id: a\n    image: {prompt: x}\n")
    out = CliRunner().invoke(app, ["render", str(spec), "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"])
    assert out.exit_code == 1
    assert out.output.startswith(f"no Ray cluster at '127.0.0.1:{port}': 127.0.0.1:{port} takes no connection "
                                 "(Connection refused)")
    assert not (project / "outputs").exists()


@pytest.mark.slow
def test_a_worker_runs_a_stage_into_the_shared_cache_and_refuses_a_model_over_its_share(project):
    """The worker actor's body, called as a plain object (no Ray): what it reports for a stage,
    and its refusal of a render whose model does not fit its share of the node's budget."""
    import dataclasses

    from cinesynth_batch.catalog.budget import human
    from cinesynth_batch.catalog.registry import Registry
    from cinesynth_batch.catalog.residency import _disk_size
    from cinesynth_batch.execute.ray_worker import Job, StageWorker
    from cinesynth_batch.execute.session import Session

    spec = project / "s.yaml"
    spec.write_text("project: s\ndefaults: {resolution: 32x32, seed: 5}\n"
                    "scenes:\n  - id: a\n    image: {prompt: x, steps: 2}\n")
    session = Session.open(spec)
    plan = session.plan(device="cpu")
    cache = project / "shared-cache"
    task = {"stage": "a.image", "ranks": [1], "reason": dataclasses.asdict(plan.stages["a.image"].reason),
            "entries": {}}
    size = _disk_size(Registry.load("tiny", project, project).local_path("image"), "float32")
    # two workers on the node: each gets half of --vram-budget
    small = dataclasses.asdict(Job(id="r1", spec=str(spec), cache=str(cache), vram=2 * size - 2,
                                   placements={1: [1, 2, 2]}))
    worker = StageWorker(1, "cpu")
    refused = worker.run(small, task)
    assert refused == {"refused": {"message": f"image: tiny/flux2-klein needs {human(size)}, the budget "
                                              f"of rank 1 on cpu is {human(size - 1)}",
                                   "hint": refused["refused"]["hint"]}, "events": []}
    assert not cache.exists() or not list(cache.glob("objects/*/*"))

    fits = dataclasses.asdict(Job(id="r2", spec=str(spec), cache=str(cache), vram=2 * size,
                                  placements={1: [1, 2, 2]}))
    msg = worker.run(fits, task)
    assert msg["ran"] == ["a.image"] and msg["failed"] == {} and msg["loads"] == {"image": 1}
    assert [e["event"] for e in msg["events"]][0::len(msg["events"]) - 1] == ["stage_started", "stage_finished"]
    assert {e["rank"] for e in msg["events"]} == {1}
    entry = msg["entries"]["a.image"]
    assert (cache / "objects").is_dir() and hashlib.sha256(
        next(cache.glob(f"objects/*/{entry['digest']}*")).read_bytes()).hexdigest() == entry["digest"]
    assert msg["lock"]["a.image"]["key"] == plan.stages["a.image"].key     # keyed as the driver planned
    again = worker.run(fits, task)               # its cache has it now: found, the model not reloaded
    assert again["ran"] == [] and again["cached"] == ["a.image"] and again["loads"] == {}


def test_a_worker_that_cannot_start_is_reported_by_its_cause():
    from cinesynth_batch.execute.ray_executor import last_line

    text = ("The actor died because of an error raised in its creation task, \x1b[36mray::StageWorker.__init__()"
            "\x1b[39m (pid=15174)\n           ^^^^^^\nRuntimeError: The actor with name StageWorker failed to "
            "import on the worker.\n\n\x1b[36mray::StageWorker.__init__()\x1b[39m (pid=15174)\n"
            "ModuleNotFoundError: No module named 'cinesynth_batch.execute.ray_worker'\n")
    assert last_line(text) == "ModuleNotFoundError: No module named 'cinesynth_batch.execute.ray_worker'"
    assert last_line("") == "no reason given"


def test_the_driver_refuses_an_artifact_that_does_not_match_its_digest(project):
    """A worker's report is checked against the shared cache: an object whose bytes are not those
    its digest names (written damaged, or changed on the way) fails its stage and leaves the cache."""
    import dataclasses

    from cinesynth_batch.execute.events import EventBus
    from cinesynth_batch.execute.ray_executor import _Dispatch
    from cinesynth_batch.execute.runner import Outcome
    from cinesynth_batch.execute.session import Session

    spec = project / "s.yaml"
    spec.write_text("project: s\ndefaults: {resolution: 32x32, seed: 5}\n"
                    "scenes:\n  - id: a\n    image: {prompt: x, steps: 2}\n")
    plan = Session.open(spec).plan(device="cpu")
    key = plan.stages["a.image"].key
    made = plan.cache.scratch() / "out.png"
    made.write_bytes(b"a picture")
    entry = plan.cache.commit(key, made, ".png", "a.image", "image", {})
    seen = []
    run = _Dispatch(None, None, plan, Schedule(order=[], upstream={}, available=set(), world=0),
                    Outcome(), EventBus([seen.append]), {})
    good = {"ran": ["a.image"], "entries": {"a.image": dataclasses.asdict(entry)}, "lock": {"a.image": {}},
            "failed": {}}
    run._check(good)
    assert good["ran"] == ["a.image"] and good["failed"] == {} and seen == []
    plan.cache.object_path(entry.digest, entry.ext).write_bytes(b"a pictur3")      # same size
    bad = {"ran": ["a.image"], "entries": {"a.image": dataclasses.asdict(entry)}, "lock": {"a.image": {}},
           "failed": {}}
    run._check(bad)
    error = f"the artifact a worker made for a.image does not match its digest {entry.digest[:12]} on this machine"
    assert bad == {"ran": [], "entries": {}, "lock": {}, "failed": {"a.image": error}}
    assert [(e.event, e.stage, e.detail) for e in seen] == [("stage_failed", "a.image", {"error": error})]
    assert plan.cache.lookup(key) is None
    assert not plan.cache.object_path(entry.digest, entry.ext).exists()


def test_a_workers_spans_land_in_its_lane_on_the_drivers_clock():
    """A report's spans go to the worker's lane with its node; a span outside the call (the
    worker's clock is not the driver's) is moved to end when the report came; a stage failed
    outside its code spans the whole call."""
    from cinesynth_batch.execute.ray_executor import worker_spans

    node = "f3a9c2d81b7e" + "0" * 44
    msg = {"failed": {}, "spans": {"a.image": {"start": 100.2, "end": 101.0, "lane": "rank 1"}}}
    assert worker_spans(msg, "a.image", "worker 1", node, 100.0, 101.5) == {
        "a.image": {"start": 100.2, "end": 101.0, "lane": "worker 1", "node": "f3a9c2d81b7e"}}
    ahead = {"failed": {}, "spans": {"a.image": {"start": 3700.2, "end": 3701.0}}}     # an hour ahead
    assert worker_spans(ahead, "a.image", "worker 0", None, 100.0, 101.5) == {
        "a.image": {"start": pytest.approx(100.7), "end": 101.5, "lane": "worker 0"}}
    long = {"failed": {}, "spans": {"a.image": {"start": 0.0, "end": 50.0}}}          # longer than the call
    assert worker_spans(long, "a.image", "worker 0", None, 100.0, 101.5)["a.image"]["start"] == 100.0
    lost = {"failed": {"a.image": "RayTaskError: the worker's process ended"}, "spans": {}}
    assert worker_spans(lost, "a.image", "worker 2", None, 100.0, 103.0) == {
        "a.image": {"start": 100.0, "end": 103.0, "lane": "worker 2"}}
    odd = {"failed": {}, "spans": {"a.image": {"start": "soon", "end": 1.0}, "b.image": None}}
    assert worker_spans(odd, "a.image", "worker 0", None, 100.0, 101.0) == {}
