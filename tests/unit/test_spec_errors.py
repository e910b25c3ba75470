"""Invalid specs: each error names file:line:col, the path, the value and a fix; exit 2."""

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cinesynth_batch.cli import app
from cinesynth_batch.errors import SpecError
from cinesynth_batch.spec.load import load_spec


def write(project: Path, text: str, name: str = "spec.yaml") -> Path:
    p = project / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def errors_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    return exc.value.render().splitlines()


BASE = """
project: demo
defaults: {resolution: 64x64}
scenes:
  - id: one
    image: {prompt: "a cat"}
"""

CASES = {
    "bad_resolution": (
        """
        project: demo
        defaults:
          resolution: 720p
        scenes:
          - id: one
            image: {prompt: cat}
        """,
        "spec.yaml:3:15: defaults.resolution: '720p' is not a resolution "
        "(write WIDTHxHEIGHT, e.g. 720x1280)"),
    "resolution_not_16": (
        """
        project: demo
        scenes:
          - id: one
            resolution: 700x1280
            image: {prompt: cat}
        """,
        "spec.yaml:4:17: scenes[0].resolution: '700x1280' is not a multiple of 16 on each side "
        "(try 704x1280)"),
    "frames_not_4k1": (
        """
        project: demo
        scenes:
          - id: one
            image: {prompt: cat}
            video:
              prompt: walk
              frames: 80
        """,
        "spec.yaml:7:15: scenes[0].video.frames: 80 is not 4k+1 (try 81)"),
    "unknown_key": (
        """
        project: demo
        scenes:
          - id: one
            image: {prompt: cat, stpes: 4}
        """,
        "spec.yaml:4:26: scenes[0].image: unknown key 'stpes' (did you mean 'steps'?)"),
    "unknown_top_key": (
        """
        project: demo
        scenez: []
        scenes:
          - id: one
            image: {prompt: cat}
        """,
        "spec.yaml:2:1: unknown key 'scenez' (did you mean 'scenes'?)"),
    "missing_file": (
        """
        project: demo
        scenes:
          - id: one
            video:
              image: assets/hero.png
        """,
        "spec.yaml:5:14: scenes[0].video.image: image 'assets/hero.png' not found "
        "(paths are relative to the spec's folder"),
    "undefined_var": (
        """
        project: demo
        vars: {subject: fox}
        scenes:
          - id: one
            image: {prompt: "a {{ subjet }}"}
        """,
        "spec.yaml:5:21: scenes[0].image.prompt: undefined template variable 'subjet' in "
        "'a {{ subjet }}' (did you mean 'subject'?)"),
    "preset_cycle": (
        """
        project: demo
        presets:
          a: {extends: b}
          b: {extends: a}
        scenes:
          - id: one
            preset: a
            image: {prompt: cat}
        """,
        "spec.yaml:4:16: preset b.extends: preset cycle: a -> b -> a "
        "(remove 'extends: a' from one of these presets)"),
    "unknown_preset": (
        """
        project: demo
        presets:
          fast: {}
        scenes:
          - id: one
            preset: fsat
            image: {prompt: cat}
        """,
        "spec.yaml:6:13: scenes[0].preset: unknown preset 'fsat' (did you mean 'fast'?)"),
    "duplicate_scene": (
        """
        project: demo
        scenes:
          - id: one
            image: {prompt: cat}
          - id: one
            image: {prompt: dog}
        """,
        "spec.yaml:5:9: scenes[1].id: duplicate scene id 'one' (scenes[0] already uses it"),
    "bad_type": (
        """
        project: demo
        scenes:
          - id: one
            image: {prompt: cat, steps: many}
        """,
        "spec.yaml:4:33: scenes[0].image.steps: 'many': input should be a valid integer, unable "
        "to parse string as an integer (write a whole number)"),
    "missing_required": (
        """
        project: demo
        scenes:
          - id: one
            image: {steps: 4}
        """,
        "spec.yaml:4:12: scenes[0].image: missing required key 'prompt' (add 'prompt:')"),
    "asset_outside": (
        """
        project: demo
        scenes:
          - id: one
            image: {prompt: cat}
            audio: ../../etc/passwd
        """,
        "spec.yaml:5:12: scenes[0].audio.file: audio file '../../etc/passwd' is outside the project"),
    "yaml_syntax": (
        """
        project: demo
        scenes:
          - id: one
            image: {prompt: cat
        """,
        "spec.yaml:5:1: YAML syntax error"),
    "bad_seed": (
        """
        project: demo
        defaults: {seed: -7}
        scenes:
          - id: one
            image: {prompt: cat}
        """,
        "spec.yaml:2:18: defaults.seed: -7 is not a seed (use 0..4294967295, or -1 to draw one)"),
    "infer_frames_not_multiple_of_4": (
        """
        project: demo
        scenes:
          - id: talk
            image: {prompt: cat}
            lipsync:
              audio: nothere.wav
              infer_frames: 81
        """,
        "spec.yaml:7:21: scenes[0].lipsync.infer_frames: 81 is not a multiple of 4 (try 80)"),
    "lipsync_missing_audio_file": (
        """
        project: demo
        scenes:
          - id: talk
            image: {prompt: cat}
            lipsync: {audio: speech.wav}
        """,
        "spec.yaml:5:22: scenes[0].lipsync.audio: audio file 'speech.wav' not found"),
    "lipsync_and_video": (
        """
        project: demo
        scenes:
          - id: talk
            image: {prompt: cat}
            video: {prompt: walk}
            lipsync: {audio: speech.wav}
        """,
        "spec.yaml:3:5: scenes[0]: a scene has one of 'video', 'lipsync', 'animate', not video and lipsync"),
    "unknown_assemble_scene": (
        """
        project: demo
        scenes:
          - id: intro
            image: {prompt: cat}
        assemble:
          scenes: [intro, outr]
        """,
        "spec.yaml:6:19: assemble[0].scenes[1]: unknown scene 'outr' (scene ids: intro)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_spec_reports_line_and_fix(project, case, monkeypatch):
    text, expected = CASES[case]
    write(project, text)
    monkeypatch.chdir(project)
    lines = errors_of(Path("spec.yaml"))
    assert any(line.startswith(expected) for line in lines), "\n".join(lines)


def test_cli_validate_exit_2_without_traceback(project, monkeypatch):
    write(project, CASES["frames_not_4k1"][0])
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["validate", "spec.yaml"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "spec.yaml:7:15: scenes[0].video.frames: 80 is not 4k+1 (try 81)" in result.output


def test_all_errors_reported_at_once(project, monkeypatch):
    write(project, """
        project: demo
        scenes:
          - id: one
            image: {prompt: "{{ nope }}", stpes: 2}
            video: {frames: 12}
          - id: bad id
            image: {prompt: cat}
        """)
    monkeypatch.chdir(project)
    lines = errors_of(Path("spec.yaml"))
    assert [line.split(": ", 1)[0] for line in lines] == [
        "spec.yaml:4:21", "spec.yaml:4:35", "spec.yaml:5:21", "spec.yaml:6:9"]


def test_matrix_errors_name_the_written_scene_once(project, monkeypatch):
    write(project, """
        project: demo
        scenes:
          - id: "shot-{{ c }}"
            matrix: {c: [red, green, blue]}
            image: {prompt: "{{ c }}"}
            video: {frames: 10}
        """)
    monkeypatch.chdir(project)
    assert errors_of(Path("spec.yaml")) == [
        "spec.yaml:6:21: scenes[0].video.frames: 10 is not 4k+1 (try 9)"]


def test_error_inside_preset_file_points_at_preset(project, monkeypatch):
    (project / "presets").mkdir()
    (project / "presets" / "slow.yaml").write_text("video:\n  frames: 82\n")
    write(project, """
        project: demo
        scenes:
          - id: one
            preset: slow
            image: {prompt: cat}
        """)
    monkeypatch.chdir(project)
    lines = errors_of(Path("spec.yaml"))
    assert lines == ["presets/slow.yaml:2:11: scenes[0].video.frames: 82 is not 4k+1 (try 81)"]


def test_duplicate_id_hint_names_the_matrix_variable_the_id_lacks(project, monkeypatch):
    write(project, """
        project: demo
        scenes:
          - id: shot-{{ size }}
            matrix: {size: [s], color: [red, blue]}
            image: {prompt: "a {{ color }} cat"}
        """)
    monkeypatch.chdir(project)
    assert errors_of(Path("spec.yaml")) == [
        "spec.yaml:3:9: scenes[0].id: duplicate scene id 'shot-s' (scenes[0] already uses it; put "
        "{{ color }} in the id, e.g. id: shot-{{ size }}-{{ color }})"]


def test_audio_only_scene_is_refused_as_docs_spec_md_says(project, monkeypatch):
    (project / "line.wav").write_bytes(b"")
    write(project, """
        project: demo
        scenes:
          - id: talk
            audio: line.wav
        """)
    monkeypatch.chdir(project)
    assert errors_of(Path("spec.yaml")) == [
        "spec.yaml:3:5: scenes[0]: a scene needs a picture: 'audio' alone is not a scene (add an 'image' "
        "for a still, or lay the sound under another scene or as assemble.music)"]
    docs = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text()
    assert "`audio` alone is not a scene" in docs


def test_music_shorthand_is_a_file(project, monkeypatch):
    (project / "bed.wav").write_bytes(b"")
    write(project, BASE + "assemble:\n  music: bed.wav\n")
    monkeypatch.chdir(project)
    music = load_spec(Path("spec.yaml")).spec.assemble[0].music
    assert music.file == "bed.wav" and music.gain_db == -18.0
    write(project, BASE + "assemble:\n  music: nope.wav\n")
    assert errors_of(Path("spec.yaml")) == [
        "spec.yaml:7:10: assemble[0].music.file: music file 'nope.wav' not found (did you mean 'bed.wav'?)"]


@pytest.mark.parametrize("data,expected", [
    ("project: demo\nscenes: [{id: one, image: {prompt: café}}]\n".encode("latin-1"),
     "spec.yaml:2:39: byte 0xe9 is not UTF-8 (save the file as UTF-8; it looks like Latin-1"),
    ("project: demo\n".encode("utf-16"), "spec.yaml:1:1: the file is UTF-16, not UTF-8 (save it as UTF-8)"),
    (b"project: demo\nscenes: [{id: one, image: {prompt: \x01}}]\n",
     "spec.yaml:2:36: control character 0x01 is not allowed in YAML"),
])
def test_undecodable_spec_is_a_located_error(project, monkeypatch, data, expected):
    (project / "spec.yaml").write_bytes(data)
    monkeypatch.chdir(project)
    lines = errors_of(Path("spec.yaml"))
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_limits_are_read_from_cinesynth_toml(project, monkeypatch):
    write(project, BASE.replace('"a cat"', '"a cat", steps: 150, width: 4112'))
    monkeypatch.chdir(project)
    assert errors_of(Path("spec.yaml")) == [
        "spec.yaml:5:49: scenes[0].image.width: 4112, over the limit of 4096 (side) (lower it, or raise "
        "[limits] side in cinesynth.toml)"]
    (project / "cinesynth.toml").write_text("[limits]\nside = 8192\nsteps = 100\n")
    assert errors_of(Path("spec.yaml")) == [
        "spec.yaml:5:37: scenes[0].image.steps: 150, over the limit of 100 (steps) (lower it, or raise "
        "[limits] steps in cinesynth.toml)"]


def test_cli_validate_reports_unknown_lora_and_missing_models_file(project, monkeypatch):
    write(project, BASE.replace("project: demo", "project: demo\nprofile: production")
          .replace('"a cat"', '"a cat", loras: [{name: nope}]'))
    write(project, BASE.replace("project: demo", "project: demo\nprofile: models/none.yaml"), "b.yaml")
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["validate", "spec.yaml", "b.yaml"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("spec.yaml:6:45: scenes[0].image.loras[0].name: LoRA 'nope' not found "
                               "(put nope.safetensors under lora_adpts/img/")
    assert lines[1] == ("b.yaml:2:10: profile: models file 'models/none.yaml' not found (profile is 'tiny', "
                        "'production', 'shapes' or a path to a models .yaml)")


def test_every_limit_is_documented_with_its_default():
    from dataclasses import fields

    from cinesynth_batch.config import Limits

    docs = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text()
    table = docs.split("## Limits", 1)[1].split("\n## ", 1)[0]
    for f in fields(Limits):
        assert f"| `{f.name}` | `{f.default}`" in table or f"| `{f.name}` | `{f.default}` (" in table, f.name
    assert "## Project configuration" in docs
