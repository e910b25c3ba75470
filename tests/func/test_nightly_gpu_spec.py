"""``specs/examples/nightly_gpu.yaml`` renders only on a GPU (profile ``shapes``); on the CPU its
LoRA files are written (``cinesynth models shapes-loras``, rank 1 here to keep them small), it
validates, and its plan has the stages a studio's nightly batch needs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from projects import new_project  # noqa: E402

from cinesynth_batch.cli import app  # noqa: E402

PRESET_LORAS = ("lightx2v_elite_it2v_animate_face", "WAN22_MoCap_fullbodyCOPY_ED",
                "Wan2.2-Fun-A14B-InP-Fusion-Elite", "FullDynamic_Ultimate_Fusion_Elite",
                "WanAnimate_relight_lora_fp16")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return new_project(tmp_path_factory.mktemp("nightly"), "nightly_gpu.yaml", presets=True)


def test_missing_loras_are_named_then_written_at_full_shape_once(spec, monkeypatch):
    from safetensors import safe_open

    from cinesynth_batch.catalog.shapes.loras import wan_lora_shapes

    monkeypatch.chdir(spec.parent)
    runner = CliRunner()
    refused = runner.invoke(app, ["validate", spec.name])
    assert refused.exit_code == 2
    assert f"{spec.name}:31:18: scenes[0].video.loras[1].name: LoRA 'shapes/camera' not found" in refused.output

    wrote = runner.invoke(app, ["models", "shapes-loras", spec.name, "--rank", "1", "--device", "cpu"])
    assert wrote.exit_code == 0, wrote.output
    folder = spec.parent / "lora_adpts" / "mov"
    names = ["shapes/motion", "shapes/camera", *PRESET_LORAS]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors")) == \
        sorted(f"{n}.safetensors" for n in names)
    assert "7 LoRA(s) at rank 1" in wrote.output

    with safe_open(str(folder / "shapes" / "motion.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert len(keys) == 40 * 10 * 2
        out_f, in_f = wan_lora_shapes()["ffn.0"]
        assert f.get_slice("diffusion_model.blocks.39.ffn.0.lora_A.weight").get_shape() == [1, in_f]
        assert f.get_slice("diffusion_model.blocks.39.ffn.0.lora_B.weight").get_shape() == [out_f, 1]
    before = (folder / "shapes" / "camera.safetensors").stat().st_mtime_ns
    again = runner.invoke(app, ["models", "shapes-loras", spec.name])
    assert again.exit_code == 0 and "nothing written" in again.output
    assert (folder / "shapes" / "camera.safetensors").stat().st_mtime_ns == before

    assert runner.invoke(app, ["validate", spec.name]).exit_code == 0
    plan = runner.invoke(app, ["plan", spec.name])
    assert plan.exit_code == 0, plan.output
    rows = {line.split()[0]: line.split()[1] for line in plan.output.splitlines()[1:]
            if line.strip() and "." in line.split()[0]}
    assert rows == {"anchor.tts": "tts", "dancer.pose": "animate_prep", "dancer.face": "animate_prep",
                    "dancer.mask": "animate_prep", "dancer.background": "animate_prep",
                    "harbour.image": "image", "harbour.upscale": "upscale", "harbour.video": "video",
                    "anchor.lipsync": "lipsync", "dancer.animate": "animate",
                    "assemble.nightly.srt": "subtitles", "assemble.nightly": "assemble"}
