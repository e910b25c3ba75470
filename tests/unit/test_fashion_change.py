"""Masked edits as the spec takes them (``image.source``, ``image.mask``, ``image.inpaint``), the
stages the planner makes of them, the Fashion Change presets (the seed's values, SEED_REPO.md §1c)
and matrix values read from a file (the seed's style list)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from cinesynth_batch.catalog.tiny.build import IMAGE_PRESET_LORAS
from cinesynth_batch.errors import SpecError
from cinesynth_batch.execute.session import Session
from cinesynth_batch.plan.graph import FileInput, NodeInput
from cinesynth_batch.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]
PHRASE = "clothing, garment, dress, top, bottom, shirt, skirt, pants"
TRYON_PREFIX = "attach the outfit in Image 2 to the woman in Image 1. "


def write(project: Path, scenes: str, head: str = "") -> Path:
    for name in ("a", "b", "m"):
        (project / f"{name}.png").write_bytes(name.encode())
    (project / "spec.yaml").write_text("project: p\ndefaults: {resolution: 64x64, seed: 5}\n"
                                       + textwrap.dedent(head) + "scenes:\n"
                                       + textwrap.indent(textwrap.dedent(scenes), "  "))
    return project / "spec.yaml"


def errors_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    return exc.value.render().splitlines()


def image_of(project: Path, monkeypatch, image: str):
    monkeypatch.setenv("CINESYNTH_PROJECT", str(REPO))
    path = write(project, "- id: s\n  image:\n" + textwrap.indent(textwrap.dedent(image), "    "))
    return load_spec(path, check_files=False).spec.scenes[0].image


# --- the presets -----------------------------------------------------------------------------------

def test_fashion_change_holds_the_seeds_values(project, monkeypatch):
    img = image_of(project, monkeypatch, "preset: fashion_change\nmask: {segment: {source: a.png}}\n")
    seg = img.mask.segment
    assert (seg.source, seg.text, seg.threshold) == ("a.png", PHRASE, 0.3)            # FC#202
    assert img.inpaint.model_dump() == {"size": 1024, "padding": 32, "context": 1.2, "expand": 10, "blend": 64,
                                        "fill_holes": True, "hipass": 0.1, "strength": 1.0,   # FC#106:88, denoise 1
                                        "reference_megapixels": 1.0}                          # FC#106:85
    assert (img.steps, img.guidance, img.negative_prompt) == (4, 1.0, None)             # FC#106:70/62
    assert img.model == "base"                                                          # FC#106:70
    assert img.references == [] and img.prepare is None
    assert img.prompt == "Oversized graphic t-shirt with biker shorts and chunky sneakers"   # S:181
    assert img.loras == [] and img.prompt_prefix is None


def test_the_try_on_variant_adds_the_lora_and_the_prompt_prefix(project, monkeypatch):
    img = image_of(project, monkeypatch, "preset: fashion_change_tryon\nmask: {segment: {source: a.png}}\n"
                                         "references: [b.png]\nprompt: red satin dress\n")
    assert [(lo.name, lo.weight) for lo in img.loras] == [("KleinBase9B_TryOn", 1.5)]   # S:3944-3958
    assert img.full_prompt() == TRYON_PREFIX + "red satin dress"
    assert img.references == ["b.png"] and [r.reference for r in img.prepare] == [1]   # the clothing is image 2
    assert img.mask.segment.threshold == 0.3 and img.steps == 4 and img.model == "base"   # from fashion_change
    assert img.inpaint.reference_megapixels == 1.0                                      # FC#106:85


@pytest.mark.parametrize("references,expected", [
    ("", "spec.yaml:6:7: scenes[0].image: image.prepare (preset fashion_change_tryon) makes the references from "
         "the ones you give: image.references is empty"),
    ("references: [a.png, b.png]", "scenes[0].image.references[1]: references[1] is not used: prepare (preset "
                                   "fashion_change_tryon) takes reference 1"),
])
def test_the_try_on_variant_needs_exactly_one_clothing_picture(project, monkeypatch, references, expected):
    monkeypatch.chdir(project)
    shutil.copytree(REPO / "presets", project / "presets")
    write(project, "- id: s\n  image:\n    preset: fashion_change_tryon\n    mask: {segment: {source: a.png}}\n"
                   + (f"    {references}\n" if references else ""))
    lines = errors_of(Path("spec.yaml"))
    assert any(expected in line for line in lines), "\n".join(lines)


def test_the_tiny_profile_has_the_try_on_lora_and_the_presets_cite_the_seed():
    tryon = yaml.safe_load((REPO / "presets" / "fashion_change_tryon.yaml").read_text())
    assert [lo["name"] for lo in tryon["loras"]] == ["KleinBase9B_TryOn"] and "KleinBase9B_TryOn" in IMAGE_PRESET_LORAS
    text = (REPO / "presets" / "fashion_change.yaml").read_text()
    for cite in ("SEED_REPO.md §1c", "FC#202", "FC#200", "FC#201", "FC#106:88", "FC#106:90", "FC#106:70", "S:181"):
        assert cite in text
    assert "SEED_REPO.md §1c" in (REPO / "presets" / "fashion_change_tryon.yaml").read_text()


# --- the spec ------------------------------------------------------------------------------------

@pytest.mark.parametrize("image,expected", [
    ("{prompt: x, source: a.png}",
     "spec.yaml:5:12: scenes[0].image: source is the picture a masked edit repaints: add a mask"),
    ("{prompt: x, mask: m.png}", "a mask file needs the picture it applies to: set source"),
    ("{prompt: x, mask: {segment: {source: a.png, text: shirt}}, width: 64}",
     "a masked edit keeps its source's size: remove width"),
    ("{prompt: x, inpaint: {size: 256}}", "inpaint settings belong to a masked edit: add a mask, or remove inpaint"),
    ("{prompt: x, mask: {segment: {source: a.png, text: shirt, threshold: 1.5}}}",
     "scenes[0].image.mask.segment.threshold: 1.5"),
    ("{prompt: x, mask: {segment: {source: a.png, text: shirt}}, inpaint: {padding: 7}}",
     "scenes[0].image.inpaint.padding"),
    ("{prompt: x, mask: {segment: {source: a.png, text: shirt}}, inpaint: {size: 100}}",
     "scenes[0].image.inpaint.size: 100 is not a multiple of 16 (try 96)"),
    ("{prompt: x, mask: {segment: {source: nope.png, text: shirt}}}",
     "scenes[0].image.mask.segment.source: segment source 'nope.png' not found"),
    ("{prompt: x, source: nope.png, mask: m.png}", "scenes[0].image.source: image 'nope.png' not found"),
    ("{prompt: x, source: a.png, mask: m.png, references: [a.png, b.png]}",
     "a masked edit is given its crop as image 1 and at most one reference as image 2, not 2"),
])
def test_a_masked_edit_is_checked_where_it_is_written(project, monkeypatch, image, expected):
    monkeypatch.chdir(project)
    write(project, f"- id: s\n  image: {image}\n")
    lines = errors_of(Path("spec.yaml"))
    assert any(expected in line for line in lines), "\n".join(lines)


# --- the plan ------------------------------------------------------------------------------------

def test_a_segment_mask_is_a_detect_and_a_segment_stage(project):
    plan = Session.open(write(project, """
        - id: s
          image: {prompt: red dress, mask: {segment: {source: a.png, text: shirt, threshold: 0.4}},
                  inpaint: {size: 208}}
        """)).plan()
    detect, segment, image = plan.graph["s.detect"], plan.graph["s.segment"], plan.graph["s.image"]
    assert (detect.kind, detect.model_role, detect.params) == ("detect", "detect", {"text": "shirt", "threshold": 0.4})
    assert detect.inputs == {"image": FileInput(project / "a.png", "a.png")}
    assert (segment.model_role, segment.params, segment.publish) == ("segment", {}, "scenes/s.mask.png")
    assert segment.inputs == {"image": detect.inputs["image"], "boxes": NodeInput("s.detect")}
    assert image.inputs == {"source": detect.inputs["image"], "mask": NodeInput("s.segment")}
    assert (image.params["width"], image.params["height"]) == (224, 224)     # 208 rounded up to the padding 32
    assert image.params["inpaint"]["size"] == 208 and image.params["prompt"] == "red dress"
    assert plan.order.index("s.segment") < plan.order.index("s.image")


def test_the_try_on_edit_takes_the_clothing_as_its_reference_on_the_base_model(project):
    shutil.copytree(REPO / "presets", project / "presets")
    plan = Session.open(write(project, """
        - id: s
          image: {preset: fashion_change_tryon, prompt: red dress, references: [b.png],
                  mask: {segment: {source: a.png}}}
        """)).plan()
    image = plan.graph["s.image"]
    a, b = FileInput(project / "a.png", "a.png"), FileInput(project / "b.png", "b.png")
    assert image.inputs == {"references": (b,), "source": a, "mask": NodeInput("s.segment")}
    assert image.model_role == "image_base" and image.params["model"] == "base"
    assert image.params["prompt"] == TRYON_PREFIX + "red dress"
    assert image.params["loras"] == [{"name": "KleinBase9B_TryOn", "weight": 1.5}]
    assert image.params["inpaint"]["reference_megapixels"] == 1.0
    assert plan.graph["s.detect"].inputs == {"image": a}          # the clothing is not looked at for the mask


def test_a_mask_file_and_its_source_are_plain_inputs(project):
    plan = Session.open(write(project, "- id: s\n  image: {prompt: x, source: a.png, mask: m.png}\n")).plan()
    assert plan.graph["s.image"].inputs == {"source": FileInput(project / "a.png", "a.png"),
                                            "mask": FileInput(project / "m.png", "m.png")}
    assert not any(n.kind in ("detect", "segment") for n in plan.graph)


def test_scenes_looking_for_the_same_phrase_in_the_same_picture_share_the_mask(project):
    plan = Session.open(write(project, """
        - id: "s-{{ style }}"
          matrix: {style: [one, two], who: [a]}
          image: {prompt: "{{ style }}", mask: {segment: {source: a.png, text: shirt}}}
        - id: other
          image: {prompt: x, mask: {segment: {source: b.png, text: shirt}}}
        - id: stricter
          image: {prompt: x, mask: {segment: {source: a.png, text: shirt, threshold: 0.5}}}
        """)).plan()
    masks = {n: plan.graph[n].inputs["mask"].node for n in ("s-one.image", "s-two.image", "other.image",
                                                            "stricter.image")}
    assert masks == {"s-one.image": "s-one.segment", "s-two.image": "s-one.segment",
                     "other.image": "other.segment", "stricter.image": "stricter.segment"}
    assert sorted(n.id for n in plan.graph if n.kind == "detect") == ["other.detect", "s-one.detect",
                                                                       "stricter.detect"]


def test_an_image_without_a_mask_keeps_its_params_and_key(project):
    plan = Session.open(write(project, "- id: s\n  image: {prompt: a cat}\n")).plan()
    node = plan.graph["s.image"]
    assert set(node.params) == {"prompt", "negative_prompt", "steps", "guidance", "width", "height", "seed", "loras"}
    assert node.inputs == {}


def test_a_new_threshold_changes_the_detect_key_only(project):
    def keys(threshold):
        spec = write(project, f"- id: s\n  image: {{prompt: x, mask: {{segment: {{source: a.png, text: shirt, "
                              f"threshold: {threshold}}}}}}}\n")
        plan = Session.open(spec).plan()
        return {n: plan.stages[n].key for n in ("s.detect", "s.segment", "s.image")}

    a, b = keys(0.3), keys(0.5)
    assert a["s.detect"] != b["s.detect"]
    assert a["s.segment"] is None and a["s.image"] is None     # known once the boxes exist


def test_two_different_frames_for_source_and_segment_are_refused(project):
    (project / "v.mp4").write_bytes(b"")
    spec = write(project, """
        - id: s
          image:
            prompt: x
            source: {frame: {source: v.mp4, at: first}}
            mask: {segment: {source: {frame: {source: v.mp4, at: last}}, text: shirt}}
        """)
    with pytest.raises(SpecError) as err:
        Session.open(spec).plan()
    assert "scenes[0].image.source: source and mask.segment.source are two different frames" in err.value.render()


def test_source_and_segment_source_may_be_another_scenes_image(project):
    """``{scene: ID}`` is that scene's image as it ends (its fit); ``{stage: ID}`` any image stage.
    Both are inputs by node, so the edit and its mask are keyed by that stage's output digest."""
    plan = Session.open(write(project, """
        - id: avatar
          image: {prompt: a woman, fit: 48x64}
        - id: outfit
          image:
            prompt: red dress
            source: {scene: avatar}
            mask: {segment: {source: {scene: avatar}, text: shirt}}
        - id: raw
          image:
            prompt: blue dress
            source: {stage: avatar.image}
            mask: {segment: {source: {scene: avatar}, text: shirt}}
        - id: drawn
          image: {prompt: x, source: {scene: avatar}, mask: m.png}
        """)).plan()
    fit = NodeInput("avatar.fit")
    assert plan.graph["outfit.detect"].inputs == {"image": fit}
    assert plan.graph["outfit.image"].inputs == {"source": fit, "mask": NodeInput("outfit.segment")}
    assert plan.graph["raw.image"].inputs == {"source": NodeInput("avatar.image"),
                                              "mask": NodeInput("outfit.segment")}     # the same mask
    assert plan.graph["drawn.image"].inputs == {"source": fit, "mask": FileInput(project / "m.png", "m.png")}
    order = plan.order
    assert order.index("avatar.fit") < order.index("outfit.detect") < order.index("outfit.image")
    assert plan.stages["outfit.detect"].key is None         # known once the avatar is made


@pytest.mark.parametrize("image,expected", [
    ("{prompt: x, source: {scene: avatr}, mask: m.png}",
     "spec.yaml:8:40: scenes[1].image.source.scene: unknown scene 'avatr' (did you mean 'avatar'?)"),
    ("{prompt: x, mask: {segment: {source: {scene: avatr}, text: shirt}}}",
     "spec.yaml:8:57: scenes[1].image.mask.segment.source.scene: unknown scene 'avatr' (did you mean 'avatar'?)"),
    ("{prompt: x, source: {scene: clip}, mask: m.png}",
     "spec.yaml:8:40: scenes[1].image.source.scene: scene 'clip' has no image stage to refer to"),
    ("{prompt: x, source: {stage: avatar.imag}, mask: m.png}",
     "spec.yaml:8:40: scenes[1].image.source.stage: unknown stage 'avatar.imag' (did you mean 'avatar.image'?)"),
    ("{prompt: x, mask: {segment: {source: {stage: clip.video}, text: shirt}}}",
     "spec.yaml:8:57: scenes[1].image.mask.segment.source.stage: stage 'clip.video' makes a video output, "
     "not an image"),
    ("{prompt: x, source: {scene: avatar, stage: avatar.image}, mask: m.png}",
     "spec.yaml:8:32: scenes[1].image.source: give exactly one image source, not scene and stage"),
    ("{prompt: x, mask: {segment: {source: {scene: s}, text: shirt}}}",
     "spec.yaml:8:57: scenes[1].image.mask.segment.source.scene: reference cycle: s.image -> s.image"),
    ("{prompt: x, source: {scene: s}, mask: {segment: {source: a.png, text: shirt}}}",
     "spec.yaml:8:40: scenes[1].image.source.scene: reference cycle: s.image -> s.image"),
])
def test_a_scene_or_stage_picture_is_checked_where_it_is_written(project, image, expected):
    spec = write(project, f"""
        - id: avatar
          image: {{prompt: a woman}}
        - id: s
          image: {image}
        - id: clip
          video: {{image: a.png, frames: 5}}
        """)
    with pytest.raises(SpecError) as err:
        Session.open(spec).plan()
    lines = [line.replace(f"{project}/", "") for line in err.value.render().splitlines()]
    assert any(line.startswith(expected) for line in lines), "\n".join(lines)


def test_a_cycle_through_another_scenes_mask_is_an_error(project):
    spec = write(project, """
        - id: a
          image: {prompt: x, references: [{scene: b}]}
        - id: b
          image: {prompt: y, mask: {segment: {source: {scene: a}, text: shirt}}}
        """)
    with pytest.raises(SpecError) as err:
        Session.open(spec).plan()
    assert "spec.yaml:6:45: scenes[0].image.references[0].scene: reference cycle: a.image -> b.image -> " \
           "b.segment -> b.detect -> a.image" in err.value.render().replace(f"{project}/", "")


# --- matrix values from a file -------------------------------------------------------------------

SEED_CSV = ('ID,Style_Keyword,English_Prompt\n'
            '1,Casual,"Oversized graphic t-shirt with biker shorts and chunky sneakers. Messy low bun"\n'
            '2,School,Navy blazer with a pleated check skirt\n'
            '\n')


def test_a_csv_gives_one_mapping_per_row(project):
    (project / "s1.csv").write_text(SEED_CSV)
    loaded = load_spec(write(project, """
        - id: "look-{{ style.ID }}"
          matrix: {style: {file: s1.csv}}
          image: {prompt: "{{ style.English_Prompt }}"}
        """))
    assert [(s.id, s.image.prompt) for s in loaded.spec.scenes] == [
        ("look-1", "Oversized graphic t-shirt with biker shorts and chunky sneakers. Messy low bun"),
        ("look-2", "Navy blazer with a pleated check skirt")]


def test_the_shipped_styles_file_is_the_seeds_columns(project):
    rows = yaml.safe_load((REPO / "specs" / "examples" / "assets" / "fashion_styles.yaml").read_text())
    assert len(rows) == 8 and all(set(r) == {"ID", "Style_Keyword", "English_Prompt"} for r in rows)
    assert len({r["Style_Keyword"] for r in rows}) == 8            # one per category of the seed's list
    assert rows[0]["English_Prompt"].startswith("Oversized graphic t-shirt with biker shorts and chunky sneakers. ")


@pytest.mark.parametrize("files,matrix,expected", [
    ({}, "{file: none.csv}", "spec.yaml:6:28: scenes[0].matrix.style.file: matrix file 'none.csv' not found"),
    ({}, "{file: ../out.csv}", "matrix file '../out.csv' is not a file inside the project"),
    ({"s.txt": "a"}, "{file: s.txt}", "matrix file 's.txt' is not .csv, .yaml or .yml"),
    ({"s.csv": "ID,Prompt\n1,a,b\n"}, "{file: s.csv}", "s.csv:2:1: the row has 3 values for 2 columns"),
    ({"s.yaml": "{a: 1}\n"}, "{file: s.yaml}", "a matrix file holds a list of values"),
    ({"s.yaml": "[]\n"}, "{file: s.yaml}", "matrix file 's.yaml' holds no values"),
])
def test_matrix_file_problems_are_located(project, monkeypatch, files, matrix, expected):
    monkeypatch.chdir(project)
    (project.parent / "out.csv").write_text("ID\n1\n")
    for name, text in files.items():
        (project / name).write_text(text)
    write(project, f"""
        - id: "s-{{{{ index }}}}"
          matrix: {{style: {matrix}}}
          image: {{prompt: x}}
        """)
    lines = errors_of(Path("spec.yaml"))
    assert any(expected in line for line in lines), "\n".join(lines)
