"""Planning without running: graph shape, order, keys, reasons, selection, presets, matrix."""

import textwrap
from pathlib import Path

import pytest

from cinesynth_batch.cache.lock import Lock, LockEntry
from cinesynth_batch.errors import SpecError
from cinesynth_batch.execute.session import Session
from cinesynth_batch.plan.keys import content_key
from cinesynth_batch.spec.load import load_spec

SPEC = """
project: p
defaults: {resolution: 64x64, seed: 5}
vars: {who: fox}
scenes:
  - id: "s-{{ c }}"
    matrix: {c: [red, blue]}
    image: {prompt: "a {{ c }} {{ who }}", upscale: x2}
    video: {prompt: walk, frames: 9, segments: 2}
  - id: still
    image: {prompt: cat}
"""


def session(project: Path, text: str = SPEC) -> Session:
    (project / "spec.yaml").write_text(textwrap.dedent(text))
    return Session.open(project / "spec.yaml")


def test_graph_ids_and_order_group_models(project):
    plan = session(project).plan()
    kinds = [plan.graph[n].kind for n in plan.order]
    assert kinds == ["image"] * 3 + ["upscale"] * 2 + ["video"] * 4 + ["assemble"]
    assert plan.order[:5] == ["s-red.image", "s-blue.image", "still.image", "s-red.upscale",
                              "s-blue.upscale"]
    assert plan.order.index("s-red.video.1") < plan.order.index("s-red.video.2")
    assert set(plan.graph["s-red.video.2"].upstream()) == {"s-red.video.1"}
    assert set(plan.graph["s-red.video.1"].upstream()) == {"s-red.upscale"}
    assert plan.graph["s-red.image"].params["prompt"] == "a red fox"
    segs = [plan.graph[n].params["seed"] for n in ("s-red.video.1", "s-red.video.2")]
    assert segs == [5, 6]


def test_keys_are_stable_and_sensitive(project):
    s = session(project)
    k1 = s.plan().stages["s-red.image"].key
    assert k1 == s.plan().stages["s-red.image"].key
    s2 = session(project, SPEC.replace("a {{ c }} {{ who }}", "a {{ c }} {{ who }}!"))
    assert s2.plan().stages["s-red.image"].key != k1
    assert s2.plan().stages["still.image"].key == s.plan().stages["still.image"].key


def test_key_changes_with_model_revision_and_boundary():
    base = content_key("video", {"id": "m", "revision": "a"}, {"boundary": 0.9}, {"image": "d"})
    assert base != content_key("video", {"id": "m", "revision": "b"}, {"boundary": 0.9}, {"image": "d"})
    assert base != content_key("video", {"id": "m", "revision": "a"}, {"boundary": 0.875}, {"image": "d"})
    assert base != content_key("video", {"id": "m", "revision": "a"}, {"boundary": 0.9}, {"image": "e"})


def test_reasons_compare_with_lock(project):
    s = session(project)
    plan = s.plan()
    st = plan.stages["still.image"]
    lock = Lock(project="p")
    changed = dict(st.params, prompt="dog", steps=8)
    lock.stages["still.image"] = LockEntry("image", "old", st.model, changed, st.inputs, {"digest": "x"})
    lock.write(s.lock_path)
    again = s.plan().stages["still.image"]
    assert str(again.reason) == "parameters changed: prompt, steps"
    lock.stages["still.image"] = LockEntry("image", again.key, st.model, st.params, st.inputs, {})
    lock.write(s.lock_path)
    assert str(s.plan().stages["still.image"].reason) == "missing: artifact not in cache"
    assert str(s.plan(force=True).stages["still.image"].reason).startswith("forced")


def test_seed_minus_one_is_drawn_then_taken_from_lock(project):
    s = session(project, SPEC.replace("seed: 5", "seed: -1"))
    plan = s.plan()
    seed = plan.stages["still.image"].params["seed"]
    assert 0 <= seed < 2**32
    lock = Lock(project="p")
    lock.stages["still.image"] = LockEntry("image", "k", None, {"seed": 1234}, {}, {})
    lock.write(s.lock_path)
    assert s.plan().stages["still.image"].params["seed"] == 1234
    assert s.plan(reseed=True).stages["still.image"].params["seed"] != 1234


def test_only_and_until_select_upstream(project):
    s = session(project)
    plan = s.plan(only=["s-blue.video.2"])
    chosen = {n for n, st in plan.stages.items() if st.status != "skip"}
    assert chosen == {"s-blue.image", "s-blue.upscale", "s-blue.video.1", "s-blue.video.2"}
    plan = s.plan(until="upscale")
    chosen = {n for n, st in plan.stages.items() if st.status != "skip"}
    assert chosen == {"s-red.image", "s-blue.image", "still.image", "s-red.upscale", "s-blue.upscale"}
    plan = s.plan(only=["still"])
    assert {n for n, st in plan.stages.items() if st.status != "skip"} == {"still.image"}
    with pytest.raises(SpecError) as exc:
        s.plan(only=["stil"])
    assert "did you mean 'still'?" in exc.value.render()


def test_missing_lora_is_a_spec_error_with_line(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(SpecError) as exc:      # known before planning: the session refuses it
        session(project, SPEC.replace("profile", "x").replace(
            "video: {prompt: walk, frames: 9, segments: 2}",
            "video: {prompt: walk, frames: 9, loras: [{name: nope/none, high: 1, low: 0.5}]}")
            .replace("project: p", "project: p\nprofile: production"))
    text = exc.value.render()
    assert "spec.yaml:10:53: scenes[0].video.loras[0].name: LoRA 'nope/none' not found" in text


def test_preset_merge_rules(project, monkeypatch):
    (project / "presets").mkdir()
    (project / "presets" / "base.yaml").write_text(
        "video:\n  steps: 30\n  shift: 3.0\n  loras: [{name: a, high: 1, low: 1}]\n")
    (project / "presets" / "fast.yaml").write_text(
        "extends: base\ndescription: fewer steps\nvideo:\n  steps: 8\n")
    (project / "spec.yaml").write_text(textwrap.dedent("""
        project: p
        presets:
          inline: {guidance: 2.0}
        scenes:
          - id: a
            preset: fast
            image: {prompt: cat}
            video: {frames: 9, loras: [{name: b, high: 0.5, low: 0.25}], shift: null}
          - id: b
            image: {prompt: cat}
            video: {preset: inline, frames: 9}
        """))
    spec = load_spec(project / "spec.yaml").spec
    v = spec.scenes[0].video
    assert (v.steps, v.shift, [lo.name for lo in v.loras]) == (8, 5.0, ["b"])
    assert spec.scenes[1].video.guidance == 2.0 and spec.scenes[1].video.steps == 40


def test_package_and_project_presets(project, monkeypatch):
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("CINESYNTH_PROJECT", str(repo))   # the repo's presets/ is the project's
    (project / "spec.yaml").write_text(textwrap.dedent("""
        project: p
        scenes:
          - id: a
            preset: portrait_720p
            image: {prompt: cat}
            video: {prompt: walk, steps: 12}
          - id: b
            image: {prompt: cat, preset: flux_klein, upscale: false}
        """))
    spec = load_spec(project / "spec.yaml").spec
    a, b = spec.scenes
    assert a.resolution == "720x1280"
    assert (a.image.steps, a.image.guidance, a.image.upscale) == (4, 1.0, "x2")
    assert (a.video.frames, a.video.steps, a.video.shift, a.video.boundary) == (81, 12, 5.0, 0.9)
    assert (b.image.upscale, b.image.steps) == (False, 4)


def test_lora_path_may_not_leave_the_project(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "x.safetensors"
    outside.write_bytes(b"\0")
    with pytest.raises(SpecError) as exc:      # a LoRA name is a name, never a path
        session(project, SPEC.replace(
            "video: {prompt: walk, frames: 9, segments: 2}",
            f"video: {{prompt: walk, frames: 9, loras: [{{name: '{outside}', high: 1, low: 1}}]}}"))
    assert (f"scenes[0].video.loras[0].name: LoRA '{outside}': a LoRA name is a name inside the "
            "LoRA folders, not an absolute path") in exc.value.render()


def test_speed_options_key_only_what_changes_the_output(project):
    keyed = {}
    for label, opts in {"default": "", "exact": ", attention: fa3, compile: off, block_swap: 20, lora_fuse: off",
                        "fp8": ", quantize: fp8", "fp8_e4m3fn": ", quantize: fp8_e4m3fn"}.items():
        plan = session(project, SPEC.replace("frames: 9, segments: 2", "frames: 9, segments: 2" + opts)).plan()
        keyed[label] = {n: plan.stages[n].params for n in plan.order}      # what the content keys hash
        node = plan.graph["s-red.video.1"]
        speed = {"attention": "fa3", "compile": "off", "block_swap": 20, "lora_fuse": "off"} if label == "exact" \
            else {"attention": "auto", "compile": "auto", "block_swap": 0, "lora_fuse": "auto"}
        assert node.runtime == {**speed, "segment": 1, "segments": 2}     # its place in the chain
    assert keyed["exact"] == keyed["default"]   # kernels, compile, block swap, LoRA fusing: same output, same keys
    for quantize in ("fp8", "fp8_e4m3fn"):
        changed = {n for n in keyed[quantize] if keyed[quantize][n] != keyed["default"][n]}
        assert changed == {"s-red.video.1", "s-red.video.2", "s-blue.video.1", "s-blue.video.2"}
        assert keyed[quantize]["s-red.video.1"]["quantize"] == quantize


def test_speed_option_errors_point_at_the_line(project):
    bad = SPEC.replace("frames: 9, segments: 2", "frames: 9, segments: 2, attention: flash3")
    with pytest.raises(SpecError) as err:
        session(project, bad).plan()
    text = err.value.render()
    assert "spec.yaml:9:62:" in text and "scenes[0].video.attention" in text and "flash3" in text
