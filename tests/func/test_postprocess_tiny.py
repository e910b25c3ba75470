"""Shadow and interpolation as cached stages in a render (specs/examples/postprocess.yaml):
the final video runs at the interpolated rate with every scene's sound, and an edit re-runs
exactly the stages that depend on it."""

from __future__ import annotations


import av
import pytest

from cinesynth_batch.execute.render import render
from cinesynth_batch.media.video_io import probe
from projects import edited_copy, new_project, to_run

OUT = "outputs/postprocess"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    spec = new_project(tmp_path_factory.mktemp("post") / "p", "postprocess.yaml")
    return spec, render(spec, progress=False)


def _edited(rendered, tmp_path, old: str, new: str):
    return edited_copy(rendered[0], tmp_path, old, new)


def _to_run(spec) -> set[str]:
    return to_run(spec)


def _audio_packets(path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


def test_render_runs_the_post_stages_at_the_new_rate(rendered):
    spec, result = rendered
    root = spec.parent
    assert {"dance.shadow", "dance.interpolate", "fox.interpolate"} <= set(result.outcome.ran)
    animate = probe(root / OUT / "scenes/dance.mp4")
    interp = probe(root / OUT / "scenes/dance.interpolated.mp4")
    assert (animate.fps, interp.fps) == (16.0, 64.0)
    assert interp.frames == animate.frames * 4
    # the dancer's clip keeps the reference video's sound through shadow and interpolation
    assert _audio_packets(root / OUT / "scenes/dance.interpolated.mp4") == _audio_packets(
        root / OUT / "scenes/dance.mp4")
    fox = probe(root / OUT / "scenes/fox.interpolated.mp4")
    assert (fox.fps, fox.frames) == (64.0, 17 * 4)
    final = probe(root / OUT / "final.mp4")
    assert final.fps == 64.0 and final.frames == (animate.frames + 17) * 4
    assert final.audio_codec == "aac"
    assert result.outcome.meta["dance.interpolate"]["backend"] == "rife"
    assert result.outcome.meta["fox.interpolate"]["backend"] == "minterpolate"


@pytest.mark.parametrize("old,new,expected", [
    ("interpolate: {fps: 64}", "interpolate: {fps: 48}", {"fox.interpolate", "assemble.final"}),
    ("interpolate: {fps: 64}", "interpolate: {fps: 64, backend: rife}", {"fox.interpolate", "assemble.final"}),
    ("interpolate: {factor: 4, backend: rife}", "interpolate: {factor: 4, backend: rife, scale: 0.5}",
     {"dance.interpolate", "assemble.final"}),
    ("interpolate: {factor: 4, backend: rife}", "interpolate: {factor: 4, backend: amt}",
     {"dance.interpolate", "assemble.final"}),
    ("interpolate: {factor: 4, backend: rife}", "interpolate: {factor: 4, backend: amt, scale: 0.5}",
     {"dance.interpolate", "assemble.final"}),
    ("shadow: true", "shadow: {opacity: 0.3}", {"dance.shadow", "dance.interpolate", "assemble.final"}),
    ("shadow: true", "shadow: false", {"dance.interpolate", "assemble.final"}),
])
def test_an_edit_reruns_exactly_its_dependents(rendered, tmp_path, old, new, expected):
    assert _to_run(_edited(rendered, tmp_path, old, new)) == expected


def test_unchanged_spec_is_all_cached_and_a_rate_edit_renders(rendered, tmp_path):
    spec, _ = rendered
    assert _to_run(spec) == set()
    edited = _edited(rendered, tmp_path, "interpolate: {fps: 64}", "interpolate: {fps: 32}")
    result = render(edited, progress=False)
    assert set(result.outcome.ran) == {"fox.interpolate", "assemble.final"}
    final = probe(edited.parent / OUT / "final.mp4")
    assert final.fps == 64.0                                   # the highest rate of its clips
    assert probe(edited.parent / OUT / "scenes/fox.interpolated.mp4").frames == 17 * 2


def test_switching_to_amt_renders_only_the_interpolation_and_the_assembly(rendered, tmp_path):
    """The dancer's clip through the profile's AMT (tiny: AMT-G's structure) instead of RIFE: the
    same frame count and rate, the reference video's sound packet for packet."""
    spec, _ = rendered
    edited = _edited(rendered, tmp_path, "interpolate: {factor: 4, backend: rife}",
                     "interpolate: {factor: 4, backend: amt}")
    result = render(edited, progress=False)
    assert set(result.outcome.ran) == {"dance.interpolate", "assemble.final"}
    assert result.outcome.meta["dance.interpolate"]["backend"] == "amt"
    root = edited.parent / OUT
    animate, interp = probe(root / "scenes/dance.mp4"), probe(root / "scenes/dance.interpolated.mp4")
    assert (interp.fps, interp.frames) == (64.0, animate.frames * 4)
    assert abs(interp.frames / 64 - animate.frames / 16) < 1 / 16            # the same duration
    assert _audio_packets(root / "scenes/dance.interpolated.mp4") == _audio_packets(root / "scenes/dance.mp4")
    rife = spec.parent / OUT / "scenes/dance.interpolated.mp4"
    assert (root / "scenes/dance.interpolated.mp4").read_bytes() != rife.read_bytes()
    final = probe(root / "final.mp4")
    assert final.fps == 64.0 and final.audio_codec == "aac"
