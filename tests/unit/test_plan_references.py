"""``image.references``, ``image.prepare``, ``image.model`` and ``image.fit`` as the spec takes
them and the planner expands them: the nodes, their inputs in order, what is keyed, and the
errors (no render, no torch)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from cinesynth_batch.errors import SpecError
from cinesynth_batch.execute.session import Session
from cinesynth_batch.plan.graph import FileInput, NodeInput
from cinesynth_batch.plan.keys import content_key
from cinesynth_batch.preprocess.face_crop import detector_identity

REPO = Path(__file__).resolve().parents[2]


def session(project: Path, scenes: str, head: str = "") -> Session:
    for name in ("body.png", "face.png", "clip.mp4"):
        (project / name).write_bytes(name.encode())
    if not (project / "presets").exists():
        shutil.copytree(REPO / "presets", project / "presets")
    (project / "spec.yaml").write_text("project: p\ndefaults: {resolution: 64x96, seed: 5}\n" + textwrap.dedent(head)
                                       + "scenes:\n" + textwrap.indent(textwrap.dedent(scenes), "  "))
    return Session.open(project / "spec.yaml")


def problems(project: Path, scenes: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        session(project, scenes).plan()
    return [p.render().replace(f"{project}/", "") for p in info.value.problems]


def refs(plan, node_id: str) -> list[str]:
    """A node's references: upstream stage ids, or file names."""
    return [i.node if isinstance(i, NodeInput) else Path(i.path).name
            for i in plan.graph[node_id].inputs.get("references", ())]


def test_references_are_inputs_in_order_and_scene_means_its_final_image(project):
    plan = session(project, """
        - id: body
          image: {prompt: a dancer, upscale: x2}
        - id: posed
          image: {prompt: a pose, fit: 90x160, references: [body.png]}
        - id: swap
          image:
            prompt: swap
            references:
              - {scene: body}
              - {face_crop: {source: face.png}}
              - {stage: body.image}
              - {scene: posed}
              - {frame: {source: clip.mp4, at: 0.5}}
        """).plan()
    assert refs(plan, "swap.image") == ["body.upscale", "swap.references_2", "body.image", "posed.fit",
                                        "swap.references_5_frame"]
    crop = plan.graph["swap.references_2"]
    assert crop.kind == "face_crop" and crop.inputs == {"image": FileInput((project / "face.png").resolve(),
                                                                           "face.png")}
    assert crop.params == {"detector": detector_identity(), "confidence": 0.4, "max_face_area": 0.15,
                           "padding": 2.5, "above": 1.0, "below": 1.5}
    assert plan.graph["swap.references_5_frame"].kind == "extract_frame"
    fit = plan.graph["posed.fit"]
    assert (fit.kind, fit.params, fit.inputs, fit.publish) == (
        "fit", {"width": 90, "height": 160, "tolerance": 0.02}, {"image": NodeInput("posed.image")},
        "scenes/posed_90x160.png")
    # an edit takes its first reference's size; a text-to-image keeps the scene's
    assert (plan.graph["swap.image"].params["width"], plan.graph["swap.image"].params["height"]) == (None, None)
    assert (plan.graph["body.image"].params["width"], plan.graph["body.image"].params["height"]) == (64, 96)
    order = plan.order
    assert order.index("body.upscale") < order.index("swap.image") and order.index("posed.fit") < order.index(
        "swap.image")
    assert plan.graph["assemble.final"].inputs["v1"] == NodeInput("posed.fit")   # the scene shows its fit


def test_an_image_without_the_new_keys_keeps_its_key(project):
    """``model: distilled`` (the default), no references, no fit: the node is keyed exactly as
    before these keys existed (the same params, no inputs)."""
    plan = session(project, """
        - id: a
          image: {prompt: a lighthouse, steps: 3}
        - id: b
          image: {prompt: a lighthouse, steps: 3, model: distilled}
        """).plan()
    a = plan.stages["a.image"]
    assert set(a.params) == {"prompt", "negative_prompt", "steps", "guidance", "width", "height", "seed", "loras"}
    assert a.inputs == {} and a.node.model_role == "image"
    assert a.key == content_key("image", plan.registry.identity("image"), a.params, {})
    assert plan.stages["b.image"].key == a.key


def test_the_base_model_is_its_own_role_and_keyed(project):
    plan = session(project, """
        - id: a
          image: {prompt: a lighthouse, model: base}
        - id: b
          image: {prompt: a lighthouse}
        """).plan()
    a, b = plan.stages["a.image"], plan.stages["b.image"]
    assert a.node.model_role == "image_base" and a.params["model"] == "base"
    assert a.model["id"] == "tiny/flux2-klein-base" and b.model["id"] == "tiny/flux2-klein"
    assert a.key != b.key


def test_avatar_prepare_expands_to_four_stages(project):
    plan = session(project, """
        - id: yuna
          image: {preset: avatar_prepare, references: [face.png]}
        """).plan()
    assert [n for n in plan.order if n.startswith("yuna.")] == ["yuna.prepare_2", "yuna.prepare_1", "yuna.image",
                                                                "yuna.fit"]
    pose, crop, swap, fit = (plan.graph[f"yuna.{n}"] for n in ("prepare_1", "prepare_2", "image", "fit"))
    assert refs(plan, "yuna.prepare_1") == ["face.png"] and crop.inputs["image"].path.name == "face.png"
    assert refs(plan, "yuna.image") == ["yuna.prepare_1", "yuna.prepare_2"]           # body, then face
    assert (pose.kind, pose.model_role, pose.params["steps"], pose.params["guidance"], pose.params["loras"]) == (
        "image", "image_base", 20, 2.5, [])
    assert (swap.model_role, swap.params["steps"], swap.params["guidance"]) == ("image_base", 16, 4.0)
    assert plan.stages["yuna.image"].params["loras"][0]["weight"] == 0.85
    assert (fit.params["width"], fit.params["height"], fit.inputs["image"]) == (1080, 1920, NodeInput("yuna.image"))
    assert pose.publish == "scenes/yuna.prepare_1.png" and fit.publish == "scenes/yuna_1080x1920.png"


def test_the_same_edit_written_by_hand_is_the_same_stage_work(project):
    """A preset's ``prepare`` and the same references written out plan the same keys for the
    stages that do not depend on the (not yet made) pose edit."""
    plan = session(project, """
        - id: a
          image: {preset: avatar_prepare, references: [face.png]}
        - id: b
          image:
            preset: face_swap_bfs
            loras: [{name: bfs_head_v1_flux-klein_9b_step3500_rank128, weight: 0.85}]
            fit: 1080x1920
            references:
              - {edit: {preset: pose_edit, references: [face.png]}}
              - {face_crop: {source: face.png}}
        """).plan()
    assert plan.stages["a.prepare_2"].key == plan.stages["b.references_2"].key
    assert plan.stages["a.prepare_1"].key == plan.stages["b.references_1"].key
    assert plan.stages["a.image"].params == plan.stages["b.image"].params


@pytest.mark.parametrize("scenes,expected", [
    ("""
     - id: a
       image: {prompt: x, references: [{scene: nope}]}
     - id: nope2
       image: {prompt: y}
     """, "spec.yaml:6:45: scenes[0].image.references[0].scene: unknown scene 'nope' (did you mean 'nope2'?)"),
    ("""
     - id: a
       image: {prompt: x, references: [{scene: v}]}
     - id: v
       video: {image: body.png, frames: 5}
     """, "spec.yaml:6:45: scenes[0].image.references[0].scene: scene 'v' has no image stage to refer to"),
    ("""
     - id: a
       image: {prompt: x, references: [{reference: 1}]}
     """, "scenes[0].image.references[0].reference: {reference: N} stands for one of the stage's references and "
          "belongs in image.prepare only"),
    ("""
     - id: a
       image: {preset: avatar_prepare}
     """, "scenes[0].image: image.prepare (preset avatar_prepare) makes the references from the ones you give: "
          "image.references is empty (add references: [PHOTO])"),
    ("""
     - id: a
       image: {preset: avatar_prepare, references: [face.png, body.png]}
     """, "spec.yaml:6:60: scenes[0].image.references[1]: references[1] is not used: prepare (preset "
          "avatar_prepare) takes reference 1"),
    ("""
     - id: a
       image: {prompt: x, references: [{scene: a, stage: a.image}]}
     """, "spec.yaml:6:37: scenes[0].image.references[0]: give exactly one image source, not scene and stage"),
])
def test_reference_mistakes_are_reported_where_they_are_written(project, scenes, expected):
    assert any(expected in line for line in problems(project, scenes)), problems(project, scenes)


def test_a_stage_reference_must_name_an_image_stage(project):
    assert problems(project, """
        - id: a
          image: {prompt: x, references: [{stage: b.imag}]}
        - id: b
          image: {prompt: y}
        """) == ["spec.yaml:6:45: scenes[0].image.references[0].stage: unknown stage 'b.imag' "
                 "(did you mean 'b.image'?)"]
    assert problems(project, """
        - id: a
          image: {prompt: x, references: [{stage: v.video}]}
        - id: v
          video: {image: body.png, frames: 5}
        """) == ["spec.yaml:6:45: scenes[0].image.references[0].stage: stage 'v.video' makes a video output, "
                 "not an image (refer to a stage of kind image, upscale, fit, face_crop, extract_frame)"]


def test_a_reference_cycle_is_an_error(project):
    lines = problems(project, """
        - id: a
          image: {prompt: x, references: [{scene: b}]}
        - id: b
          image: {prompt: y, references: [{face_crop: {source: {scene: a}}}]}
        """)
    assert lines == ["spec.yaml:6:45: scenes[0].image.references[0].scene: reference cycle: a.image -> b.image -> "
                     "b.references_1 -> a.image (an image cannot be made from itself: refer to another scene or "
                     "stage)"]
    assert problems(project, """
        - id: a
          image: {prompt: x, upscale: x2, references: [body.png, {scene: a}]}
        """)[0].endswith("reference cycle: a.image -> a.upscale -> a.image (an image cannot be made from itself: "
                         "refer to another scene or stage)")


def test_a_lora_name_of_an_inline_edit_is_checked_where_it_is_written(project):
    lines = problems(project, """
        - id: a
          image:
            prompt: x
            references:
              - {edit: {prompt: y, references: [body.png], loras: [{name: ../outside}]}}
        """)
    assert len(lines) == 1 and lines[0].startswith(
        "spec.yaml:9:69: scenes[0].image.references[0].edit.loras[0].name: LoRA '../outside': ")
