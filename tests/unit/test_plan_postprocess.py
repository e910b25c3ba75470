"""Planning the post-processing stages: node shape, what each key holds, the assembly's rate,
and spec errors at their line."""

import textwrap
from pathlib import Path

import pytest

from cinesynth_batch.catalog.registry import TINY_REVISION
from cinesynth_batch.errors import SpecError
from cinesynth_batch.execute.session import Session

SPEC = """
project: p
defaults: {resolution: 64x64, seed: 5}
scenes:
  - id: a
    image: {prompt: fox}
    video: {prompt: walk, frames: 9, segments: 2, interpolate: 2}
  - id: b
    image: {prompt: cat}
    video: {prompt: sit, frames: 9}
"""


def plan(project: Path, text: str = SPEC):
    (project / "spec.yaml").write_text(textwrap.dedent(text))
    return Session.open(project / "spec.yaml").plan()


def test_interpolate_takes_the_whole_clip_and_sets_the_assembly_rate(project):
    p = plan(project)
    node = p.graph["a.interpolate"]
    assert node.kind == "interpolate" and node.model_role is None            # minterpolate: no model
    assert node.params == {"fps": 32, "backend": "minterpolate"}
    assert [i.node for i in node.inputs["clip"]] == ["a.video.1", "a.video.2"]
    asm = p.graph["assemble.final"]
    assert asm.params["fps"] == 32                                           # the highest clip rate
    assert [i.node for i in asm.inputs["v0"]] == ["a.interpolate"]
    assert [i.node for i in asm.inputs["v1"]] == ["b.video"]


def test_an_unset_rate_keeps_the_assembly_key(project):
    plain = plan(project, SPEC.replace(", interpolate: 2", ""))
    assert "a.interpolate" not in plain.graph.nodes
    assert plain.graph["assemble.final"].params["fps"] == 16
    pinned = plan(project, SPEC.replace("    video: {prompt: sit, frames: 9}",
                                        "    video: {prompt: sit, frames: 9}\nassemble: {fps: 24}"))
    assert pinned.graph["assemble.final"].params["fps"] == 24


def test_rife_keys_its_model_and_scale(project):
    p = plan(project, SPEC.replace("interpolate: 2", "interpolate: {fps: 48, backend: rife, scale: 0.5}"))
    node = p.graph["a.interpolate"]
    assert node.model_role == "interpolate"
    assert node.params == {"fps": 48, "backend": "rife", "scale": 0.5}
    assert p.stages["a.interpolate"].model["kind"] == "rife"


def test_amt_keys_its_own_model_and_scale(project):
    """AMT is served by the profile's ``interpolate_amt`` model: a key apart from RIFE's."""
    p = plan(project, SPEC.replace("interpolate: 2", "interpolate: {fps: 48, backend: amt, scale: 0.5}"))
    node = p.graph["a.interpolate"]
    assert node.model_role == "interpolate_amt"
    assert node.params == {"fps": 48, "backend": "amt", "scale": 0.5}
    assert p.stages["a.interpolate"].model == {"role": "interpolate_amt", "kind": "amt",
                                               "id": "tiny/amt-g.safetensors", "revision": TINY_REVISION}
    rife = plan(project, SPEC.replace("interpolate: 2", "interpolate: {fps: 48, backend: rife, scale: 0.5}"))
    assert rife.stages["a.interpolate"].model["id"] == "tiny/rife-v4.25.safetensors"


@pytest.mark.parametrize("value,words", [
    ("{fps: 32, factor: 2}", "give exactly one of fps"),
    ("{factor: 9}", "factor"),
    ("{fps: 32, backend: dain}", "backend"),
    ("{fps: 32, backend: amt, scale: 2.0}", "scale 2.0 is not at most 1 for backend amt"),
])
def test_bad_interpolate_points_at_the_line(project, value, words):
    with pytest.raises(SpecError) as err:
        plan(project, SPEC.replace("interpolate: 2", f"interpolate: {value}"))
    text = err.value.render()
    assert "spec.yaml:7:" in text and "scenes[0].video.interpolate" in text and words in text
