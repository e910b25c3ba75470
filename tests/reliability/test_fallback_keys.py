"""A key names what ran: a lossy setting this machine cannot honour is keyed as what it used.

On this CPU machine ``quantize: fp8`` and ``attention: sageattn`` fall back to exact compute. The
render must store its output under the key of what it computed, never under the key a GPU render
of the same spec computes (the plan's key of the requested params) and would publish as fp8."""

import json
import warnings

import pytest
import yaml

from cinesynth_batch.errors import FallbackWarning
from cinesynth_batch.execute.render import render
from cinesynth_batch.execute.session import Session
from cinesynth_batch.plan.keys import content_key
from cinesynth_batch.stages.base import StageError
from cinesynth_batch.stages.effective import effective_params
from projects import new_project

SPEC = """\
project: fb
profile: tiny
defaults: {{resolution: 32x32, fps: 8, seed: 7}}
scenes:
  - id: q
    video: {{image: assets/avatar.png, prompt: a fox runs, frames: 5, steps: 1{q}}}
  - id: s
    video: {{image: assets/avatar.png, prompt: a fox sleeps, frames: 5, steps: 1{s}}}
"""
LOSSY = SPEC.format(q=", quantize: fp8", s=", attention: sageattn")
EXACT = SPEC.format(q="", s="")


def requested_keys(spec) -> dict:
    """The keys of the requested params (what a GPU render looks up), and the stages as this
    machine's plan keys them."""
    plan = Session.open(spec).plan(device="cpu")
    return {n: (content_key("video", st.model, st.params, st.inputs), st)
            for n, st in ((n, plan.stages[n]) for n in ("q.video", "s.video"))}


def stage_row(manifest: dict, nid: str) -> dict:
    return next(r for r in manifest["stages"] if r["id"] == nid)


@pytest.fixture(scope="module")
def lossy_render(tmp_path_factory):
    root = tmp_path_factory.mktemp("fallback") / "p"
    spec = new_project(root, "spec.yaml", LOSSY)
    asked = requested_keys(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = render(spec, progress=False, device="cpu")
    return root, spec, asked, result, caught


@pytest.mark.slow
def test_cpu_fallback_is_stored_under_the_key_of_what_ran(lossy_render):
    root, _, asked, result, caught = lossy_render
    assert sorted(result.outcome.ran) == ["assemble.final", "q.video", "s.video"]
    lock = yaml.safe_load((root / "outputs/fb/render.lock").read_text())
    fell = {str(w.message).split(":")[1].strip().split("=")[0] for w in caught
            if issubclass(w.category, FallbackWarning)}
    assert fell == {"quantize", "attention"}
    for nid, setting, value in (("q.video", "quantize", "fp8"), ("s.video", "attention", "sageattn")):
        gpu_key, st = asked[nid]
        assert st.params[setting] == value                    # the request is what the stage gets ...
        ran_params = {k: v for k, v in st.params.items() if k != setting}
        assert lock["stages"][nid]["key"] == content_key("video", st.model, ran_params, st.inputs)
        assert st.key == lock["stages"][nid]["key"]           # the plan already keys what will run
        assert lock["stages"][nid]["key"] != gpu_key          # ... and the run is keyed as what ran
        assert result.plan.cache.lookup(gpu_key) is None      # nothing a GPU render would take for fp8
        assert not result.plan.cache.key_path(gpu_key).exists()


@pytest.mark.slow
def test_manifest_says_what_was_asked_and_what_ran(lossy_render):
    root, *_ = lossy_render
    manifest = json.loads((root / "outputs/fb/manifest.json").read_text())
    q, s = stage_row(manifest, "q.video"), stage_row(manifest, "s.video")
    assert q["facts"]["fell_back"] == {"quantize": {"asked": "fp8", "ran": None}}
    assert s["facts"]["fell_back"] == {"attention": {"asked": "sageattn", "ran": "sdpa"}}
    for name in ("transformer", "transformer_2"):
        assert q["facts"]["speed"][name]["requested"]["quantize"] == "fp8"
        assert q["facts"]["speed"][name]["quantize"] is None
        assert s["facts"]["speed"][name]["requested"]["attention"] == "sageattn"
        assert s["facts"]["speed"][name]["attention"] == "sdpa"
    lock = yaml.safe_load((root / "outputs/fb/render.lock").read_text())
    assert q["key"] == lock["stages"]["q.video"]["key"]
    assert lock["stages"]["q.video"]["params"]["quantize"] == "fp8"        # asked, next to the key of what ran


@pytest.mark.slow
def test_exact_render_sharing_the_cache_finds_the_fallback_result(lossy_render):
    root, spec, *_ = lossy_render
    spec.write_text(EXACT)
    again = render(spec, progress=False, device="cpu")
    assert sorted(again.outcome.cached) == ["assemble.final", "q.video", "s.video"]
    assert again.outcome.ran == []
    spec.write_text(LOSSY)
    third = render(spec, progress=False, device="cpu")
    assert third.outcome.ran == [] and sorted(third.outcome.cached) == ["assemble.final", "q.video", "s.video"]


def test_animate_keys_what_resolve_runtime_decides():
    from cinesynth_batch.stages import animate

    asked = {"precision": "bf16", "quantize": "fp8_e4m3fn", "attention": "sageattn", "seed": 1}
    # fp8 storage runs on the CPU (diffusers' layerwise casting); SageAttention needs CUDA
    assert animate.effective_params(asked, "cpu", "float32") == {**asked, "attention": "sdpa"}
    scaled = {**asked, "quantize": "fp8_e4m3fn_scaled"}                # no pre-scaled weights: plain fp8
    assert animate.effective_params(scaled, "cpu", "float32") == {**asked, "attention": "sdpa"}
    exact = {"precision": "bf16", "quantize": None, "attention": "sdpa"}
    assert not animate.may_fall_back(exact) and animate.may_fall_back(asked)
    assert effective_params("animate", exact, "cpu", "float32") is exact
    report = {"quantization": None, "attention": "sdpa"}      # a run that dropped fp8 on the CPU
    with pytest.raises(StageError, match="ran with quantize=None but the key names 'fp8_e4m3fn'"):
        animate.checked_runtime(asked, report, "cpu")
    fell = animate.checked_runtime(asked, {"quantization": "fp8_e4m3fn", "attention": "sdpa"}, "cpu")
    assert fell == {"attention": {"asked": "sageattn", "ran": "sdpa"}}


@pytest.mark.slow
def test_plan_on_a_falling_back_machine_shows_the_fallback_result_cached(lossy_render):
    """``plan`` keys what this machine will run, so it does not promise a run that the render
    then finds cached."""
    _, spec, *_ = lossy_render
    spec.write_text(LOSSY)
    plan = Session.open(spec).plan(device="cpu")
    assert {n: plan.stages[n].status for n in ("q.video", "s.video", "assemble.final")} == {
        "q.video": "cached", "s.video": "cached", "assemble.final": "cached"}
