"""Spreading a render over ranks: split degrees, refusals, scheduling, failure reports.

Context parallelism does not run on the CPU, so GPU topologies here are fake (``_fake_gpu``
in the test name): they exercise the decisions, which use plain numbers.
"""

import json
import textwrap

import pytest
from typer.testing import CliRunner

from cinesynth_batch.cli import app
from cinesynth_batch.errors import SpecError
from cinesynth_batch.execute.launch import describe_failure, root_cause, unfinished
from cinesynth_batch.execute.parallel import (Options, ParallelError, SplitFacts, Topology,
                                              groups, refuse_sp, split_facts, stage_degrees)
from cinesynth_batch.execute.schedule import Schedule
from cinesynth_batch.spec.load import load_spec

WAN_14B = SplitFacts(heads=40, tokens=21 * 30 * 52)      # 480x832, 81 frames


def facts(table):
    return lambda sid: table[sid]


# -- degrees ---------------------------------------------------------------------------------------

def test_cpu_runs_every_stage_whole_under_auto():
    stages = [("a.video", "video", "auto"), ("a.image", "image", "auto")]
    got = stage_degrees(stages, Options("auto"), Topology(2, "cpu"), facts({"a.video": WAN_14B}))
    assert got == {"a.video": 1, "a.image": 1}


def test_sp_on_cpu_is_refused_with_the_reason():
    with pytest.raises(ParallelError) as exc:
        stage_degrees([("a.video", "video", "auto")], Options("sp"), Topology(2, "cpu"),
                      facts({"a.video": WAN_14B}))
    assert exc.value.message == ("a.video: --parallel sp: sequence parallelism needs CUDA GPUs; "
                                 "diffusers context parallelism does not run on the CPU (gloo backend)")
    assert "--parallel dp" in exc.value.hint


def test_sp_on_one_gpu_is_refused_as_degree_one_fake_gpu():
    with pytest.raises(ParallelError) as exc:
        refuse_sp(Topology(1, "cuda"), None)
    assert "1 rank(s), so the sequence-parallel degree would be 1" in exc.value.message
    assert "--nproc" in exc.value.hint


def test_auto_splits_a_lone_heavy_stage_over_all_gpus_fake_gpu():
    got = stage_degrees([("a.video", "video", "auto"), ("a.image", "image", "auto")], Options("auto"),
                        Topology(8, "cuda"), facts({"a.video": WAN_14B}))
    assert got == {"a.video": 8, "a.image": 1}


def test_auto_shares_gpus_between_heavy_stages_fake_gpu():
    stages = [("a.video", "video", "auto"), ("b.video", "video", "auto")]
    table = {"a.video": WAN_14B, "b.video": WAN_14B}
    assert stage_degrees(stages, Options("auto"), Topology(8, "cuda"), facts(table)) == \
        {"a.video": 4, "b.video": 4}
    # as many heavy stages as GPUs: data parallel only
    assert stage_degrees(stages, Options("auto"), Topology(2, "cuda"), facts(table)) == \
        {"a.video": 1, "b.video": 1}


def test_auto_picks_a_degree_the_heads_allow_fake_gpu():
    twelve = SplitFacts(heads=12, tokens=4096)
    got = stage_degrees([("a.video", "video", "auto")], Options("auto"), Topology(8, "cuda"),
                        facts({"a.video": twelve}))
    assert got == {"a.video": 4}


def test_explicit_degree_that_heads_forbid_names_stage_and_choices_fake_gpu():
    twelve = SplitFacts(heads=12, tokens=4096)
    with pytest.raises(ParallelError) as exc:
        stage_degrees([("a.video", "video", "sp")], Options("auto"), Topology(8, "cuda"),
                      facts({"a.video": twelve}))
    assert exc.value.message == ("a.video cannot be split over 8 ranks: its model has 12 attention "
                                 "heads, not a multiple of 8")
    assert exc.value.hint == "use a degree among: 2, 4"


def test_sequence_that_does_not_divide_is_refused_fake_gpu():
    odd = SplitFacts(heads=40, tokens=3 * 5 * 7)
    with pytest.raises(ParallelError) as exc:
        stage_degrees([("a.video", "video", 2)], Options("dp"), Topology(2, "cuda"), facts({"a.video": odd}))
    assert "its sequence of 105 tokens is not a multiple of 2" in exc.value.message
    assert exc.value.hint == "use parallel: dp for this stage"


def test_degree_must_divide_the_ranks_fake_gpu():
    with pytest.raises(ParallelError) as exc:
        stage_degrees([("a.video", "video", 3)], Options("auto"), Topology(4, "cuda"),
                      facts({"a.video": WAN_14B}))
    assert exc.value.message == "a.video: parallel 3: degree 3 does not divide the 4 ranks"
    assert exc.value.hint == "use one of: 2, 4"


def test_stage_setting_wins_over_the_command_line_fake_gpu():
    stages = [("a.video", "video", "dp"), ("b.video", "video", "auto")]
    table = {"a.video": WAN_14B, "b.video": WAN_14B}
    assert stage_degrees(stages, Options("sp"), Topology(4, "cuda"), facts(table)) == \
        {"a.video": 1, "b.video": 4}


def test_animate_says_why_it_cannot_split_fake_gpu():
    f = split_facts("animate", {}, None)
    with pytest.raises(ParallelError) as exc:
        stage_degrees([("a.animate", "animate", "sp")], Options("auto"), Topology(2, "cuda"),
                      facts({"a.animate": f}))
    assert "no context-parallel plan" in exc.value.message and "per latent frame" in exc.value.message
    # under auto it simply runs whole
    assert stage_degrees([("a.animate", "animate", "auto")], Options("auto"), Topology(2, "cuda"),
                         facts({"a.animate": f})) == {"a.animate": 1}


def test_lipsync_splits_by_its_heads_fake_gpu(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_heads": 40}))
    f = split_facts("lipsync", {"infer_frames": 80}, tmp_path)
    assert f == SplitFacts(heads=40)
    assert stage_degrees([("a.lipsync", "lipsync", "sp")], Options("auto"), Topology(8, "cuda"),
                         facts({"a.lipsync": f})) == {"a.lipsync": 8}
    with pytest.raises(ParallelError) as exc:
        stage_degrees([("a.lipsync", "lipsync", 3)], Options("auto"), Topology(6, "cuda"),
                      facts({"a.lipsync": f}))
    assert "40 attention heads, not a multiple of 3" in exc.value.message


def test_a_step_cache_keeps_a_stage_whole_fake_gpu():
    f = split_facts("video", {"frames": 81, "width": 832, "height": 480,
                              "cache": {"kind": "teacache"}}, None)
    with pytest.raises(ParallelError) as exc:
        stage_degrees([("a.video", "video", "sp")], Options("auto"), Topology(2, "cuda"), facts({"a.video": f}))
    assert "step cache" in exc.value.message
    assert stage_degrees([("a.video", "video", "auto")], Options("auto"), Topology(2, "cuda"),
                         facts({"a.video": f})) == {"a.video": 1}


def test_split_facts_read_heads_from_the_model_folder(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"num_attention_heads": 40}))
    f = split_facts("video", {"frames": 81, "width": 832, "height": 480}, tmp_path)
    assert f == SplitFacts(heads=40, tokens=21 * 30 * 52)


def test_groups_are_blocks_of_consecutive_ranks():
    assert groups(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert groups(4, 1) == [[0], [1], [2], [3]]


# -- spec and command line -------------------------------------------------------------------------

def test_spec_parallel_values(project):
    (project / "a.png").write_bytes(b"")
    spec = project / "s.yaml"
    spec.write_text(textwrap.dedent("""
        project: p
        scenes:
          - id: a
            video: {image: a.png, parallel: sp}
          - id: b
            video: {image: a.png, parallel: 0}
          - id: c
            video: {image: a.png, parallel: fast}
    """))
    with pytest.raises(SpecError) as exc:
        load_spec(spec)
    text = exc.value.render()
    assert text.splitlines() == [
        f"{spec}:7:37: scenes[1].video.parallel: 0 is not a parallel setting (use auto, dp, sp, "
        "or a rank count such as 2)",
        f"{spec}:9:37: scenes[2].video.parallel: 'fast' is not a parallel setting (use auto, dp, sp, "
        "or a rank count such as 2)"]


def test_render_parallel_sp_on_cpu_exits_2(project):
    spec = project / "s.yaml"
    spec.write_text("project: p\nscenes:\n  - id: a\n    image: {prompt: x}\n")
    out = CliRunner().invoke(app, ["render", str(spec), "--parallel", "sp", "--device", "cpu"])
    assert out.exit_code == 2
    assert "sequence parallelism needs CUDA GPUs" in out.output
    out = CliRunner().invoke(app, ["render", str(spec), "--nproc", "2", "--parallel", "sp", "--device", "cpu"])
    assert out.exit_code == 2 and "needs CUDA GPUs" in out.output
    out = CliRunner().invoke(app, ["render", str(spec), "--nproc", "0"])
    assert out.exit_code == 2 and "--nproc '0' is not a rank count" in out.output
    out = CliRunner().invoke(app, ["render", str(spec), "--parallel", "fast"])
    assert out.exit_code == 2 and "--parallel 'fast' is not a mode" in out.output


# -- schedule --------------------------------------------------------------------------------------

def chain_schedule(world=2, **kw):
    # two scenes: image -> video, and an assembly of both videos
    up = {"a.image": [], "b.image": [], "a.video": ["a.image"], "b.video": ["b.image"],
          "assemble": ["a.video", "b.video"]}
    slots = {"a.image": "image", "b.image": "image", "a.video": "video", "b.video": "video",
             "assemble": None}
    order = ["a.image", "b.image", "a.video", "b.video", "assemble"]
    return Schedule(order=order, upstream=up, available=set(), world=world, slots=slots, **kw)


def ids(assignments):
    return [(a.stage, a.ranks) for a in assignments]


def test_schedule_keeps_dependencies_and_spreads_work():
    s = chain_schedule()
    assert ids(s.assign()) == [("a.image", (0,)), ("b.image", (1,))]
    assert s.assign() == []                      # everything else waits for an upstream
    s.release(1)
    s.done("b.image", ok=True)
    assert ids(s.assign()) == [("b.video", (1,))]
    s.release(0)
    s.done("a.image", ok=True)
    assert ids(s.assign()) == [("a.video", (0,))]
    for r, st in ((0, "a.video"), (1, "b.video")):
        s.release(r)
        s.done(st, ok=True)
    assert ids(s.assign()) == [("assemble", (0,))]
    s.release(0)
    s.done("assemble", ok=True)
    assert s.finished() and not s.pending


def test_schedule_prefers_the_rank_that_holds_the_model():
    s = chain_schedule()
    s.assign()
    s.release(0), s.release(1)
    s.done("a.image", ok=True), s.done("b.image", ok=True)
    s.held[1] = "video"                           # rank 1 has the video model loaded
    assert ids(s.assign()) == [("a.video", (1,)), ("b.video", (0,))]


def test_schedule_stops_after_a_failure_unless_keep_going():
    s = chain_schedule()
    s.assign()
    s.release(0)
    s.done("a.image", ok=False)
    assert s.assign() == []                       # nothing new starts
    s.release(1)
    s.done("b.image", ok=True)
    assert s.finished() and "b.video" in s.pending

    k = chain_schedule(keep_going=True)
    k.assign()
    k.release(0)
    k.done("a.image", ok=False)
    assert k.block() == [("a.video", ["a.image"]), ("assemble", ["a.video"])]
    k.release(1)
    k.done("b.image", ok=True)
    assert ids(k.assign()) == [("b.video", (0,))]
    assert not k.finished()
    k.release(0)
    k.done("b.video", ok=True)
    assert k.finished() and k.blocked == {"a.video", "assemble"}


def test_split_stage_waits_for_its_whole_group_and_holds_it_fake_gpu():
    up = {"x.image": [], "y.video": [], "z.video": []}
    s = Schedule(order=["y.video", "x.image", "z.video"], upstream=up, available=set(), world=4,
                 degrees={"y.video": 4}, slots={"x.image": "image", "y.video": "video", "z.video": "video"})
    s.busy[2] = "elsewhere"                       # rank 2 still busy with an earlier task
    # y.video needs ranks 0-3: the free ones are held for it, so nothing else takes them
    assert s.assign() == []
    s.release(2)
    assert ids(s.assign()) == [("y.video", (0, 1, 2, 3))]
    assert s.assign() == []
    for r in (1, 2, 3):
        s.release(r)                              # followers report first
    # the ranks hold the video model now: z.video goes first, to the first of them
    assert s.running == {"y.video": (0, 1, 2, 3)} and ids(s.assign()) == [("z.video", (1,)), ("x.image", (2,))]
    s.release(0)
    s.done("y.video", ok=True)
    assert "y.video" in s.available


# -- a rank that died ---------------------------------------------------------------------------

TORCHRUN_REPORT = """
Failures:
[1]:
  time      : 2026-11-25_06:34:57
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 15692)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 15692
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-25_06:34:57
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 15693)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 15693
"""


def ev(event, stage=None, rank=0):
    return {"event": event, "stage": stage, "rank": rank}


def test_root_cause_is_the_first_failed_rank():
    assert root_cause(TORCHRUN_REPORT) == (1, -9)
    assert root_cause("no report here") == (None, None)


def test_dead_rank_names_its_stage_and_the_interrupted_ones():
    events = [ev("render_started"), ev("stage_started", "old", 0),      # an earlier render
              ev("render_started"), ev("stage_started", "a.image", 0), ev("stage_finished", "a.image", 0),
              ev("stage_started", "a.video", 1), ev("stage_started", "b.video", 0)]
    assert unfinished(events) == {"a.video": 1, "b.video": 0}
    text = describe_failure(events, 1, -9)
    assert text.startswith("render failed: rank 1 died (killed by SIGKILL) while running a.video; "
                           "stopped with it: b.video (rank 0)")
    assert "run the same command to resume" in text


def test_a_stage_error_is_left_to_the_rank_that_reported_it():
    events = [ev("render_started"), ev("stage_started", "a.video", 1), ev("stage_failed", "a.video", 1)]
    assert describe_failure(events, 0, 1) is None
    assert describe_failure(events, None, None) is None
    assert describe_failure([ev("render_started")], 1, -9) == (
        "render failed: rank 1 died (killed by SIGKILL) between stages (run the same command to "
        "resume: finished stages are cached, and nothing of an unfinished one entered the cache)")
