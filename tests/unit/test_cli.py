"""The CLI: fast commands import no torch, formats, summary lines, exit codes."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cinesynth_batch.cli import app
from cinesynth_batch.runtime.devices import gpu_reachable
from fresh import light_cli
from projects import new_project

SPEC = """
project: cli
defaults: {resolution: 64x64, seed: 3}
scenes:
  - id: a
    image: {prompt: "a cat", steps: 2}
"""


def plain(output: str) -> str:
    """A CLI's output as one line of words, without the frame of an error panel."""
    return " ".join(output.replace("│", " ").split())


def spec_in(project: Path) -> Path:
    p = project / "s.yaml"
    p.write_text(textwrap.dedent(SPEC))
    return p


def test_validate_and_plan_do_not_import_torch(project):
    spec = spec_in(project)
    code = ("import sys; from cinesynth_batch.cli import main\n"
            "for args in (['validate', sys.argv[1]], ['plan', sys.argv[1], '-f', 'json'],"
            " ['status', sys.argv[1]], ['schema']):\n"
            "    try: main(args)\n"
            "    except SystemExit as e: assert e.code in (0, None), (args, e.code)\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_plan_json_shape(project):
    spec = spec_in(project)
    result = CliRunner().invoke(app, ["plan", str(spec), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["project"] == "cli"
    (stage,) = [s for s in data["stages"] if s["id"] == "a.image"]
    assert {"id", "kind", "scene", "key", "model", "status", "reason"} <= set(stage)
    assert stage["status"] == "run" and len(stage["key"]) == 64
    assert stage["reason"] == "new stage (no earlier render)"
    assert [s["id"] for s in data["stages"]] == ["a.image", "assemble.final"]


def test_plan_mermaid_and_table(project):
    spec = spec_in(project)
    mer = CliRunner().invoke(app, ["plan", str(spec), "-f", "mermaid"]).output
    assert mer.startswith("flowchart LR") and "n_a_image --> n_assemble_final" in mer
    table = CliRunner().invoke(app, ["plan", str(spec)]).output
    assert table.splitlines()[-2] == "2 to run, 0 cached"
    assert table.splitlines()[-1].startswith("estimated GPU time: ")


def test_dry_run_runs_nothing(project):
    spec = spec_in(project)
    result = CliRunner().invoke(app, ["render", str(spec), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would run a.image: new stage (no earlier render)" in result.output
    assert result.output.strip().splitlines()[-1] == "2 to run, 0 cached"
    assert not (project / "outputs").exists()


def test_schema_is_json_schema(project):
    out = CliRunner().invoke(app, ["schema"]).output
    schema = json.loads(out)
    assert schema["title"] == "CineSynth spec v1"
    assert "scenes" in schema["properties"] and "VideoStage" in schema["$defs"]
    assert schema["$defs"]["VideoStage"]["additionalProperties"] is False


def test_models_list_names_every_role():
    out = CliRunner().invoke(app, ["models", "list", "--profile", "production"]).output
    roles = [line.split()[1] for line in out.splitlines()]
    assert roles == ["animate", "detect", "image", "image_base", "interpolate", "interpolate_amt", "lipsync", "segment",
                     "separate", "tts", "upscale", "video"]
    assert "black-forest-labs/FLUX.2-klein-9B" in out and "Wan-AI/Wan2.2-I2V-A14B-Diffusers" in out
    assert "weights/amt-g.safetensors" in out
    assert "black-forest-labs/FLUX.2-klein-base-9B" in out
    assert "IDEA-Research/grounding-dino-tiny" in out and "facebook/sam-vit-huge" in out
    assert "Wan-AI/Wan2.2-S2V-14B" in out


def test_missing_production_model_is_clear_error(project, monkeypatch):
    spec = spec_in(project)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(project / "hf"))
    result = CliRunner().invoke(app, ["render", str(spec), "--profile", "production"])
    assert result.exit_code == 3
    assert "model 'black-forest-labs/FLUX.2-klein-9B' for 'image' is not in the local Hugging Face " \
           "cache and HF_HUB_OFFLINE is set" in result.output
    assert "huggingface-cli download black-forest-labs/FLUX.2-klein-9B" in result.output
    assert "Traceback" not in result.output


def test_allow_host_and_allow_path_widen_validate_plan_and_status(project, tmp_path_factory, monkeypatch):
    shared = tmp_path_factory.mktemp("shared")
    (shared / "line.wav").write_bytes(b"RIFF")
    p = project / "s.yaml"
    p.write_text(textwrap.dedent(SPEC) + f"    audio: {shared / 'line.wav'}\n"
                 "  - id: b\n    image: {prompt: dog}\n"
                 "    audio: {extract: {source: 'https://media.example.org/a.mp4'}}\n")
    monkeypatch.chdir(project)
    runner = CliRunner()
    refused = runner.invoke(app, ["validate", "s.yaml"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert [ln.split(": ", 2)[1] for ln in refused.output.splitlines()] == [
        "scenes[0].audio.file", "scenes[1].audio.extract.source"]
    allowed = ["--allow-path", str(shared), "--allow-host", "media.example.org"]
    assert runner.invoke(app, ["validate", "s.yaml", *allowed]).output == "s.yaml: ok (2 scenes)\n"
    for command in (["plan", "s.yaml", "-f", "json"], ["status", "s.yaml"]):
        assert runner.invoke(app, command).exit_code == 2
        assert runner.invoke(app, [*command, *allowed]).exit_code == 0


LOSSY = """
project: lossy
defaults: {resolution: 64x64, seed: 3}
scenes:
  - id: a
    image: {prompt: "a cat", steps: 2}
    video: {prompt: "the cat turns", frames: 9, steps: 2, quantize: fp8_e4m3fn, attention: sageattn}
  - id: b
    animate: {preset: change_character_v1_1, reference_video: assets/dance.mp4, character: assets/avatar.png,
              mode: replace}
"""


@pytest.mark.skipif(gpu_reachable(), reason="where a GPU may be reached, torch decides what a lossy setting runs as")
def test_lossy_settings_are_keyed_without_torch_where_no_gpu_can_be_reached(tmp_path, monkeypatch):
    """fp8 storage and SageAttention (the Change Character preset has both) are keyed as this
    machine runs them; without a GPU that is decided without importing torch, and the keys are
    the ones torch's own answer gives."""
    from cinesynth_batch.execute.session import Session
    from cinesynth_batch.runtime import devices
    from cinesynth_batch.stages.effective import effective_params

    spec = new_project(tmp_path / "p", "s.yaml", LOSSY, presets=True)
    out = light_cli("plan", str(spec), "-f", "json")
    assert out.returncode == 0, out.stderr
    keys = {s["id"]: s["key"] for s in json.loads(out.stdout)["stages"]}
    monkeypatch.setattr(devices, "gpu_reachable", lambda dev="/dev": True)      # torch answers
    plan = Session.open(spec).plan()
    assert {sid: plan.stages[sid].key for sid in keys} == keys
    video, animate = (effective_params(plan.stages[sid].node.kind, plan.stages[sid].params, "auto", "bfloat16")
                      for sid in ("a.video", "b.animate"))
    assert plan.stages["a.video"].params["attention"] == plan.stages["b.animate"].params["attention"] == "sageattn"
    assert "attention" not in video and video["quantize"] == "fp8_e4m3fn"          # keyed as exact attention
    assert animate["attention"] == "sdpa" and animate["quantize"] == "fp8_e4m3fn"


@pytest.mark.parametrize("option", ["--vram-budget", "--host-budget"])
def test_a_budget_that_is_not_a_size_stops_the_render_before_anything_runs(project, option):
    spec = spec_in(project)
    result = CliRunner().invoke(app, ["render", str(spec), option, "-5GiB"])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}': '-5GiB' is not a size" in plain(result.output)
    assert not (project / "outputs").exists() and not (project / ".cinesynth").exists()
    result = CliRunner().invoke(app, ["gc", str(spec), "--max-size", "lots"])
    assert result.exit_code == 2 and "'lots' is not a size" in plain(result.output)


@pytest.mark.parametrize("option, value, text", [
    ("--device", "tpu", "'tpu' is not a device: use auto, cpu, cuda or cuda:N"),
    ("--device", "cuda:x", "'cuda:x' is not a device"),
    ("--dtype", "int8", "'int8' is not a dtype: use float32, bfloat16 or float16"),
])
def test_a_device_or_dtype_that_does_not_exist_stops_the_render_before_anything_runs(project, option, value, text):
    spec = spec_in(project)
    result = CliRunner().invoke(app, ["render", str(spec), option, value])
    assert result.exit_code == 2 and f"Invalid value for '{option}': {text}" in plain(result.output)
    assert not (project / "outputs").exists() and not (project / ".cinesynth").exists()


def test_a_cuda_device_this_machine_lacks_is_named_before_anything_runs(project):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        device, why = f"cuda:{torch.cuda.device_count()}", f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    else:
        device = "cuda"
        why = "this torch is built without CUDA" if torch.version.cuda is None else "torch finds no CUDA device"
    spec = spec_in(project)
    result = CliRunner().invoke(app, ["render", str(spec), "--device", device])
    assert result.exit_code == 3
    assert result.output.startswith(f"the models cannot run here: --device {device}: {why}")
    objects = project / ".cinesynth" / "cache" / "objects"
    assert not objects.exists() or not any(objects.rglob("*.*"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_file_the_render_cannot_write_is_named_without_a_traceback(project):
    """An events file on a full disk, and a summary where no file can be made (/proc)."""
    spec = spec_in(project)
    for option, path, why in (("--events", "/dev/full", "No space left on device"),
                              ("--summary", "/proc/cinesynth-summary.json", "No such file or directory")):
        result = CliRunner().invoke(app, ["render", str(spec), "--no-progress", option, path])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.splitlines()[-1] == (
            f"cannot write or read a file: {why}: {path} (fix it and run the same command again)")
    again = CliRunner().invoke(app, ["render", str(spec), "--no-progress"])
    assert again.exit_code == 0 and again.output.splitlines()[-1] == "0 run, 2 cached"


@pytest.mark.parametrize("rank, text", [(0, "greater than or equal to 1"), (4096, "less than or equal to 1024")])
def test_a_lora_rank_out_of_range_writes_nothing(project, rank, text):
    spec = project / "s.yaml"
    spec.write_text(textwrap.dedent(SPEC).replace('image: {prompt: "a cat", steps: 2}',
                                                  'video: {prompt: "a cat", frames: 9, steps: 2, '
                                                  'loras: [{name: missing/one, high: 1.0, low: 0.5}]}'))
    result = CliRunner().invoke(app, ["models", "shapes-loras", str(spec), "--rank", str(rank), "--device", "cpu"])
    assert result.exit_code == 2 and f"Invalid value for '--rank': Input should be {text}" in plain(result.output)
    assert not (project / "lora_adpts").exists()


@pytest.mark.parametrize("option", ["--summary", "--index", "--events"])
def test_a_file_the_render_writes_may_not_be_one_of_its_specs(project, option):
    spec = spec_in(project)
    before = spec.read_bytes()
    result = CliRunner().invoke(app, ["render", str(project), option, str(spec)])   # the folder holds the spec
    assert result.exit_code == 2
    assert result.output.startswith(f"{option} {spec} is a spec of this render: writing it would destroy the spec")
    assert spec.read_bytes() == before and not (project / "outputs").exists()
