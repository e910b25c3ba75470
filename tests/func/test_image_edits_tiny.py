"""The seed's FLUX.2-klein edits as example specs rendered on the tiny profile
(specs/examples/face_swap.yaml, pose_edit.yaml, avatar_prepare.yaml): references reach the edit in
their order, by digest; the avatar comes out at 1080x1920; changing one reference re-runs exactly
the stages that depend on it."""

from __future__ import annotations


import pytest
from PIL import Image

from projects import edited_copy, file_sha256, render_example, to_run


@pytest.fixture(scope="module")
def face_swap(tmp_path_factory):
    return render_example(tmp_path_factory, "face_swap")


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    return render_example(tmp_path_factory, "avatar_prepare")




def _rotated_portrait(spec):
    """Another face photo in place of the example's (the same photo turned upside down)."""
    path = spec.parent / "assets/portrait.jpg"
    with Image.open(path) as im:
        im.convert("RGB").rotate(180).save(spec.parent / "assets/other.jpg", quality=90)


def test_face_swap_gives_the_body_then_the_cropped_face(face_swap):
    spec, result = face_swap
    out = spec.parent / "outputs/face_swap/scenes"
    assert set(result.outcome.ran) == {"body.image", "swap.references_2", "swap.image", "assemble.final"}
    refs = result.outcome.meta["swap.image"]["references"]
    assert [r["sha256"] for r in refs] == [file_sha256(out / "body.png"), file_sha256(out / "swap.references_2.png")]
    crop = result.outcome.meta["swap.references_2"]
    assert crop["cropped"] is True and crop["face"]["found_by"] == "upper_half"
    with Image.open(out / "swap.png") as swap, Image.open(out / "body.png") as body:
        assert swap.size == body.size == (96, 160)              # the edit takes image 1's size


@pytest.mark.parametrize("old,new,expected", [
    # the body (image 1): its own stage and the swap
    ("prompt: a dancer in a red dress", "prompt: a dancer in a blue dress", {"body.image", "swap.image"}),
    # the face photo (image 2): its crop and the swap
    ("source: assets/portrait.jpg", "source: assets/other.jpg", {"swap.references_2", "swap.image"}),
    # the order of the references: the swap only
    ("- {scene: body}                                  # image 1: the body to keep\n"
     "        - {face_crop: {source: assets/portrait.jpg}}",
     "- {face_crop: {source: assets/portrait.jpg}}\n        - {scene: body}", {"swap.image"}),
    # the swap's own setting: the swap only
    ("      preset: face_swap_bfs", "      preset: face_swap_bfs\n      guidance: 3.5", {"swap.image"}),
])
def test_changing_one_reference_reruns_exactly_what_depends_on_it(face_swap, tmp_path, old, new, expected):
    spec, _ = face_swap
    _rotated_portrait(spec)
    assert to_run(edited_copy(spec, tmp_path, old, new)) == expected | {"assemble.final"}


def test_avatar_prepare_makes_a_1080x1920_avatar_from_the_pose_edit_and_the_original_face(avatar):
    spec, result = avatar
    out = spec.parent / "outputs/avatar_prepare/scenes"
    assert set(result.outcome.ran) == {"yuna.prepare_1", "yuna.prepare_2", "yuna.image", "yuna.fit",
                                       "assemble.final"}
    meta = result.outcome.meta
    assert [r["sha256"] for r in meta["yuna.prepare_1"]["references"]] == [
        file_sha256(spec.parent / "assets/portrait.jpg")]                       # step 1: the photo itself
    assert [r["sha256"] for r in meta["yuna.image"]["references"]] == [
        file_sha256(out / "yuna.prepare_1.png"), file_sha256(out / "yuna.prepare_2.png")]   # body, then face
    with Image.open(out / "yuna_1080x1920.png") as avatar_png, Image.open(out / "yuna.png") as swap:
        assert avatar_png.size == (1080, 1920)     # a resize: the same size on every profile
        assert swap.size == (256, 480)             # the pose edit's size (the photo's 270x480, to 16s)
    assert meta["yuna.fit"]["kept"] == [0, 0, 256, 455]                      # too tall: the top kept


@pytest.mark.parametrize("old,new,expected", [
    ("references: [assets/portrait.jpg]", "references: [assets/other.jpg]",
     {"yuna.prepare_1", "yuna.prepare_2", "yuna.image", "yuna.fit"}),
    ("    duration: 1.0", "      fit: 720x1280\n    duration: 1.0", {"yuna.fit"}),
    ("    duration: 1.0", "      steps: 12\n    duration: 1.0", {"yuna.image", "yuna.fit"}),
])
def test_avatar_edits_rerun_exactly_the_dependent_stages(avatar, tmp_path, old, new, expected):
    spec, _ = avatar
    _rotated_portrait(spec)
    assert to_run(edited_copy(spec, tmp_path, old, new)) == expected | {"assemble.final"}


def test_pose_edit_takes_each_references_size(tmp_path_factory):
    spec, result = render_example(tmp_path_factory, "pose_edit")
    meta = result.outcome.meta
    assert (meta["photo.image"]["width"], meta["photo.image"]["height"]) == (256, 480)
    assert (meta["still.image"]["width"], meta["still.image"]["height"]) == (128, 128)
    out = spec.parent / "outputs/pose_edit/scenes"
    assert meta["still.image"]["references"][0]["sha256"] == file_sha256(out / "still.references_1_frame.png")
