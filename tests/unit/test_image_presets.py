"""presets/face_swap_bfs.yaml, pose_edit.yaml and avatar_prepare.yaml carry the seed's values
(SEED_REPO.md §1a / §1b: its graphs flux_klein_faceswap_api.json and flux_klein_pose_edit_api.json,
its registry `face_swap` and avatar_prepare_task), and the tiny profile has their models and LoRA."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from cinesynth_batch.catalog.tiny.build import IMAGE_PRESET_LORAS
from cinesynth_batch.spec import model as m
from cinesynth_batch.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]
PRESETS = REPO / "presets"

# FS#50 / registry `face_swap` prompt default (S:221), FS#51
SEED_SWAP_PROMPT = (
    "head_swap: Use image 1 as the base image, preserving its environment, background, camera perspective, framing, "
    "exposure, contrast, and lighting. Remove the head from image 1 and seamlessly replace it with the head from "
    "image 2. Match the original head size, face-to-body ratio, neck thickness, shoulder alignment, and camera "
    "distance so proportions remain natural and unchanged. Adapt the inserted head to the lighting of image 1 by "
    "matching light direction, intensity, softness, color temperature, shadows, and highlights, with no independent "
    "relighting. Preserve the identity of image 2, including hair texture, eye color, nose structure, facial "
    "proportions, skin details, exact jawline shape and face contour. Do not alter the jawline — keep the same "
    "roundness or softness as image 2. Match the pose and expression from image 1, including head tilt, rotation, "
    "eye direction, gaze, micro-expressions, and lip position. Ensure seamless neck and jaw blending, consistent skin "
    "tone, realistic shadow contact, natural skin texture, and uniform sharpness. Photorealistic, high quality, sharp "
    "details, 4K.")
SEED_SWAP_NEGATIVE = ("Noise, blurry, deformed face, extra limbs, bad anatomy, different person, wrong identity, "
                      "angular jaw, sharp jawline, square jaw, altered face shape")
# PE#50, PE#51
SEED_POSE_PROMPT = ("full body photo of the same person standing straight in attention pose, arms naturally at "
                    "sides, facing forward, centered in frame, solid bright green chroma key background, same "
                    "clothing and accessories, professional studio lighting, high quality, sharp details, 4k")
SEED_POSE_NEGATIVE = "Noise, blurry, cropped, partial body"
BFS = "bfs_head_v1_flux-klein_9b_step3500_rank128"          # FS#21 (.safetensors)


def image_of(project: Path, stage: str) -> m.ImageStage:
    for name in ("body.png", "face.png"):
        (project / name).write_bytes(b"")
    shutil.copytree(PRESETS, project / "presets")
    (project / "spec.yaml").write_text("project: p\nscenes:\n  - id: s\n    image:\n"
                                       + textwrap.indent(textwrap.dedent(stage), " " * 6))
    image = load_spec(project / "spec.yaml").spec.scenes[0].image
    assert image is not None
    return image


def test_face_swap_bfs_holds_the_seeds_values(project):
    img = image_of(project, "preset: face_swap_bfs\nreferences: [body.png, {face_crop: {source: face.png}}]\n")
    assert (img.model, img.steps, img.guidance) == ("base", 16, 4.0)            # FS#20, FS#90, FS#94
    assert [(lo.name, lo.weight) for lo in img.loras] == [(BFS, 0.8)]           # registry default (S:225)
    assert (img.prompt, img.negative_prompt) == (SEED_SWAP_PROMPT, SEED_SWAP_NEGATIVE)
    assert img.references[0] == "body.png" and img.references[1].face_crop.source == "face.png"
    assert img.width is None and img.height is None and img.prepare is None and img.fit is None


def test_pose_edit_holds_the_seeds_values(project):
    img = image_of(project, "preset: pose_edit\nreferences: [body.png]\n")
    assert (img.model, img.steps, img.guidance, img.loras) == ("base", 20, 2.5, [])   # PE#20/#90/#94, no LoRA
    assert (img.prompt, img.negative_prompt) == (SEED_POSE_PROMPT, SEED_POSE_NEGATIVE)


def test_avatar_prepare_chains_pose_edit_face_crop_and_face_swap_at_085(project):
    img = image_of(project, "preset: avatar_prepare\nreferences: [face.png]\n")
    pose, crop = img.prepare
    assert pose.edit.references[0].reference == 1 and crop.face_crop.source.reference == 1
    edit = pose.edit                                                             # step 1 (S:2317): Pose Edit
    assert (edit.model, edit.steps, edit.guidance, edit.loras) == ("base", 20, 2.5, [])
    assert (edit.prompt, edit.negative_prompt) == (SEED_POSE_PROMPT, SEED_POSE_NEGATIVE)
    assert [(lo.name, lo.weight) for lo in img.loras] == [(BFS, 0.85)]          # step 3 at 0.85 (S:2398)
    assert (img.model, img.steps, img.guidance) == ("base", 16, 4.0)
    assert (img.prompt, img.negative_prompt) == (SEED_SWAP_PROMPT, SEED_SWAP_NEGATIVE)
    assert img.fit == "1080x1920"                                               # register-avatar (S:2212)


def test_a_spec_value_wins_over_the_preset(project):
    img = image_of(project, "preset: face_swap_bfs\nsteps: 8\nreferences: [body.png, face.png]\n")
    assert img.steps == 8 and img.guidance == 4.0


@pytest.mark.parametrize("name,cites", [
    ("face_swap_bfs", ("SEED_REPO.md §1a", "FS#20", "FS#21", "FS#50", "FS#51", "FS#90", "FS#94", "S:225")),
    ("pose_edit", ("SEED_REPO.md §1b", "PE#20", "PE#50", "PE#51", "PE#90", "PE#94")),
    ("avatar_prepare", ("SEED_REPO.md §1b", "S:2317", "S:2398", "S:2212")),
])
def test_presets_cite_their_sources(name, cites):
    text = (PRESETS / f"{name}.yaml").read_text()
    for cite in cites:
        assert cite in text, cite


def test_tiny_profile_has_a_stand_in_for_every_preset_lora_and_both_models(tiny_root):
    names = {lo["name"] for name in ("face_swap_bfs", "avatar_prepare", "fashion_change_tryon")
             for lo in yaml.safe_load((PRESETS / f"{name}.yaml").read_text())["loras"]}
    assert names == set(IMAGE_PRESET_LORAS)
    for lora in IMAGE_PRESET_LORAS:
        assert (tiny_root / "lora_adpts" / "img" / f"{lora}.safetensors").is_file()
    for folder, distilled in (("flux2-klein", True), ("flux2-klein-base", False)):
        index = json.loads((tiny_root / folder / "model_index.json").read_text())
        assert index["_class_name"] == "Flux2KleinPipeline" and index["is_distilled"] is distilled
        # the seed's sampler is KSamplerSelect euler (FS#91, PE#91): the pipeline's flow-match Euler
        assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
