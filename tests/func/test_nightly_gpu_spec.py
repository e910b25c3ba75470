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


def test_every_model_fits_a_24_gib_budget_before_it_runs_fake_gpu(spec, monkeypatch):
    """``--vram-budget 24GiB`` on one H200 (141 GiB; the card's size and the node's RAM are
    given, since no GPU is here): the fit check that precedes every render passes each model of
    the batch, the FLUX.2-klein pipeline with its text encoder and transformer taking turns on
    the device; at 17 GiB the image model is refused, naming what it needs on the device and
    in pinned RAM."""
    from cinesynth_batch.catalog import budget
    from cinesynth_batch.catalog.budget import MemoryRequest
    from cinesynth_batch.execute.fit import ModelFitError
    from cinesynth_batch.execute.runner import LocalExecutor
    from cinesynth_batch.execute.session import Session
    from cinesynth_batch.runtime import devices

    gib = 1 << 30
    monkeypatch.chdir(spec.parent)
    wrote = CliRunner().invoke(app, ["models", "shapes-loras", spec.name, "--rank", "1", "--device", "cpu"])
    assert wrote.exit_code == 0, wrote.output
    monkeypatch.setattr(budget, "device_memory", lambda device: 141 * gib)
    monkeypatch.setattr(budget, "host_ram", lambda: 128 * gib)
    monkeypatch.setattr(devices, "cuda_problem", lambda device: None)          # the fake GPU is there
    plan = Session.open(spec).plan(device="cuda:0")
    assert {st.node.model_role for st in plan.to_run() if st.node.model_role} >= \
        {"image", "upscale", "video", "lipsync", "animate"}
    LocalExecutor(device="cuda:0", memory=MemoryRequest(vram=24 * gib)).preflight(plan)
    with pytest.raises(ModelFitError) as exc:
        LocalExecutor(device="cuda:0", memory=MemoryRequest(vram=17 * gib)).preflight(plan)
    assert exc.value.message.splitlines()[1:] == [
        "  animate: shapes/wan2.2-animate-14b needs 44.2 GiB (22.4 GiB with 20 of its 40 blocks streamed), the "
        "budget of rank 0 on cuda:0 is 17.0 GiB",
        "  image: shapes/flux2-klein-9b needs 32.3 GiB (17.1 GiB with its text encoder and its transformer "
        "waiting in pinned RAM when idle), the budget of rank 0 on cuda:0 is 17.0 GiB",
        "  lipsync: shapes/wan2.2-s2v-14b needs 42.3 GiB (17.5 GiB with its transformer blocks offloaded), the "
        "budget of rank 0 on cuda:0 is 17.0 GiB"]
    with pytest.raises(ModelFitError) as exc:
        LocalExecutor(device="cuda:0", memory=MemoryRequest(vram=24 * gib, host=30 * gib)).preflight(plan)
    assert exc.value.message.splitlines()[1:] == [
        "  animate: shapes/wan2.2-animate-14b needs 44.2 GiB, its rest copy, streamed blocks and parked text "
        "encoder need 57.9 GiB of host RAM, the host budget of rank 0 on cuda:0 is 30.0 GiB",
        "  image: shapes/flux2-klein-9b needs 32.3 GiB (17.1 GiB with its text encoder and its transformer "
        "waiting in pinned RAM when idle, fitting the budget of rank 0 on cuda:0), its text encoder and its "
        "transformer need 32.2 GiB of pinned RAM, the host budget of rank 0 on cuda:0 is 30.0 GiB",
        "  video: shapes/wan2.2-i2v-a14b needs 64.2 GiB (13.1 GiB with its transformer blocks offloaded, "
        "fitting the budget of rank 0 on cuda:0), its streamed blocks need 52.4 GiB of pinned RAM, the host "
        "budget of rank 0 on cuda:0 is 30.0 GiB"]


@pytest.mark.parametrize("name", ["../../outside", "/tmp/abs", "a/../../b"])
def test_a_lora_name_that_leaves_the_lora_folder_is_refused_and_nothing_is_written(tmp_path, name):
    from cinesynth_batch.catalog.shapes.loras import write_missing_loras
    from cinesynth_batch.errors import ModelError

    (tmp_path / "spec").mkdir()
    with pytest.raises(ModelError, match="leaves"):
        write_missing_loras(tmp_path / "spec", [(name, "mov")], rank=1)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_only_wan_loras_have_a_full_shape_writer(tmp_path):
    from cinesynth_batch.catalog.shapes.loras import write_missing_loras
    from cinesynth_batch.errors import ModelError

    with pytest.raises(ModelError, match="no full-shape writer for lora_adpts/img/"):
        write_missing_loras(tmp_path, [("style", "img")], rank=1)
    assert not (tmp_path / "lora_adpts").exists()
