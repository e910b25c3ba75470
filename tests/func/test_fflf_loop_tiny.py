"""A looping keyframe chain (specs/examples/fflf_loop.yaml, preset fflf_auto_loop_v2) renders on
the tiny profile: one first-last-frame clip per keyframe pair and one back to the first, joined
without doubled seams; an edit re-runs exactly the clips that touch what changed."""

from __future__ import annotations

import hashlib

import pytest

from cinesynth_batch.execute.render import render
from cinesynth_batch.execute.session import Session
from cinesynth_batch.media.video_io import probe
from projects import edited_copy, render_example, to_run

OUT = "outputs/fflf_loop"
LENGTHS = [33, 37, 33, 33]          # the preset's clip lengths
CLIPS = [f"loop.video.{k}" for k in range(1, 5)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render_example(tmp_path_factory, "fflf_loop")


def _edited(rendered, tmp_path, old: str, new: str):
    return edited_copy(rendered[0], tmp_path, old, new)


def _to_run(spec) -> set[str]:
    return to_run(spec)


def test_the_loop_renders_one_clip_per_pair_joined_without_doubled_seams(rendered):
    spec, result = rendered
    root = spec.parent
    assert set(CLIPS) <= set(result.outcome.ran)
    for k, frames in enumerate(LENGTHS, start=1):
        info = probe(root / OUT / f"scenes/loop.{k}.mp4")
        assert (info.frames, info.width, info.height, info.fps) == (frames, 80, 48, 16.0)
        assert result.outcome.meta[f"loop.video.{k}"]["two_pass"] == {"base": [32, 16], "high_steps": 4}
    joined = sum(LENGTHS) - (len(LENGTHS) - 1)            # every clip after the first drops its first frame
    interp = probe(root / OUT / "scenes/loop.interpolated.mp4")
    assert (interp.fps, interp.frames) == (32.0, joined * 2)   # the preset's x2 (16 -> 32 fps)
    final = probe(root / OUT / "final.mp4")
    assert (final.fps, final.frames) == (32.0, joined * 2)


def test_the_last_clip_ends_on_the_first_keyframe(rendered):
    spec, _ = rendered
    plan = Session.open(spec).plan()
    assert plan.to_run() == []
    clip = {k: plan.stages[f"loop.video.{k}"].inputs for k in range(1, 5)}
    first_keyframe = hashlib.sha256((spec.parent / "assets/avatar.png").read_bytes()).hexdigest()
    assert clip[1]["image"] == clip[4]["last_image"] == first_keyframe
    for k in range(1, 4):                                   # each clip starts on the keyframe the last one ended on
        assert clip[k]["last_image"] == clip[k + 1]["image"]
    assert len({clip[k]["image"] for k in clip}) == 4
    # the first keyframe is the first frame of the output and the last clip's end image: its digest
    # is the start image of clip 1 and the end image of clip 4, and nothing else's
    assert [k for k in clip if first_keyframe in (clip[k]["image"], clip[k]["last_image"])] == [1, 4]


@pytest.mark.parametrize("old,new,expected", [
    # the third keyframe: the clips into and out of it
    ("at: 1.0}", "at: 1.5}", {"loop.keyframes_3_frame", "loop.video.2", "loop.video.3"}),
    # the first keyframe: the first clip and the loop's last one, back to it
    ("- assets/avatar.png", "- assets/avatar2.png", {"loop.video.1", "loop.video.4"}),
    # the second clip's length only
    ("keyframes:", "lengths: [33, 41, 33, 33]\n      keyframes:", {"loop.video.2"}),
])
def test_an_edit_reruns_exactly_the_clips_that_touch_it(rendered, tmp_path, old, new, expected):
    spec, _ = rendered
    from PIL import Image

    with Image.open(spec.parent / "assets/avatar.png") as im:
        im.convert("RGB").rotate(90).save(spec.parent / "assets/avatar2.png")
    assert _to_run(_edited(rendered, tmp_path, old, new)) == expected | {"loop.interpolate", "assemble.final"}


def test_an_open_chain_keeps_its_clips_and_drops_the_return(rendered, tmp_path):
    edited = _edited(rendered, tmp_path, "keyframes:", "loop: false\n      lengths: [33, 37, 33]\n      keyframes:")
    assert _to_run(edited) == {"loop.interpolate", "assemble.final"}
    result = render(edited, progress=False)
    assert set(result.outcome.ran) == {"loop.interpolate", "assemble.final"}
    assert probe(edited.parent / OUT / "final.mp4").frames == (33 + 37 + 33 - 2) * 2


def test_the_join_drops_each_later_clips_first_frame(rendered, tmp_path):
    """Without the interpolation the scene is the clips themselves: clip 1 whole, then clips 2..4
    from their second frame; the output starts on clip 1's first frame (keyframe 1) and ends on
    clip 4's last (keyframe 1 again, the loop's end image)."""
    import numpy as np

    from cinesynth_batch.media.video_io import read_frames

    edited = _edited(rendered, tmp_path, "      resolution: 80x48", "      interpolate: false\n      resolution: 80x48")
    assert _to_run(edited) == {"assemble.final"}
    render(edited, progress=False)
    out = edited.parent / OUT
    final = read_frames(out / "final.mp4").astype(np.float32)
    clips = [read_frames(out / f"scenes/loop.{k}.mp4").astype(np.float32) for k in range(1, 5)]
    assert final.shape[0] == sum(LENGTHS) - 3
    joined = np.concatenate([clips[0]] + [c[1:] for c in clips[1:]])
    kept_firsts = np.concatenate([clips[0]] + [c[:-1] for c in clips[1:]])

    def diff(a, b):
        return np.abs(a - b).mean(axis=(1, 2, 3))            # per frame, in 8-bit levels (h264 both ways)

    assert diff(final, joined).max() < 12
    assert diff(final[LENGTHS[0]:], kept_firsts[LENGTHS[0]:]).mean() > 20
    assert diff(final[:1], clips[0][:1])[0] < 12 and diff(final[-1:], clips[3][-1:])[0] < 12
