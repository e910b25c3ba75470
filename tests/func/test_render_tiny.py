"""End to end on the tiny profile: real diffusers pipelines, real ffmpeg, real cache."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cinesynth_batch.errors import RenderError
from cinesynth_batch.execute.render import render
from cinesynth_batch.media.video_io import probe, read_frames
from cinesynth_batch.runtime.devices import gpu_reachable
from fresh import light_cli
from projects import new_project

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ALL = {"intro.image", "outro.image", "intro.upscale", "intro.video", "outro.video.1",
       "outro.video.2", "assemble.final"}


def make_project(root: Path) -> Path:
    new_project(root, "short.yaml")
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("base") / "p")
    result = render(root / "short.yaml", progress=False, events=root / "events.jsonl")
    return root, result


@pytest.fixture
def clone(base, tmp_path):
    root, _ = base
    dst = tmp_path / "p"
    shutil.copytree(root, dst)
    return dst


def edit(spec: Path, old: str, new: str) -> None:
    text = spec.read_text()
    assert old in text
    spec.write_text(text.replace(old, new))


def lock_of(root: Path) -> dict:
    return yaml.safe_load((root / "outputs/short/render.lock").read_text())


def test_first_render_writes_final_video_matching_spec(base):
    root, result = base
    assert set(result.outcome.ran) == ALL and result.outcome.cached == []
    final = root / "outputs/short/final.mp4"
    info = probe(final)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height, info.fps) == (96, 64, 16.0)
    assert info.frames == 17 + 9 + 8          # second outro segment drops its first frame
    assert info.duration == pytest.approx(34 / 16, abs=0.03)
    assert result.outcome.model_loads == {"image": 1, "upscale": 1, "video": 1}
    for name in ("intro.png", "intro_x2.png", "intro.mp4", "outro.1.mp4", "outro.2.mp4", "outro.png"):
        assert (root / "outputs/short/scenes" / name).is_file()
    assert probe(root / "outputs/short/scenes/intro.mp4").frames == 17
    lock = lock_of(root)
    assert set(lock["stages"]) == ALL
    assert lock["outputs"]["final.mp4"]["digest"] == hashlib.sha256(final.read_bytes()).hexdigest()
    manifest = json.loads((root / "outputs/short/manifest.json").read_text())
    assert manifest["files"]["final.mp4"]["frames"] == 34
    assert "final.mp4" in (root / "outputs/short/report.html").read_text()
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    finished = [e["stage"] for e in events if e["event"] == "stage_finished"]
    assert set(finished) == ALL and all(e["seconds"] > 0 for e in events if e["event"] == "stage_finished")
    order = [e["kind"] for e in events if e["event"] == "stage_started"]
    assert order == ["image", "image", "upscale", "video", "video", "video", "assemble"]


def test_second_render_runs_nothing_and_keeps_lock(clone):
    before = (clone / "outputs/short/render.lock").read_bytes()
    result = render(clone / "short.yaml", progress=False)
    assert result.outcome.ran == [] and set(result.outcome.cached) == ALL
    assert result.summary == "0 run, 7 cached"
    assert (clone / "outputs/short/render.lock").read_bytes() == before


@pytest.mark.skipif(gpu_reachable(), reason="where a GPU may be reached, torch decides what a lossy setting runs as")
def test_a_render_with_nothing_to_run_imports_no_torch_even_for_lossy_settings(clone):
    """fp8 storage and SageAttention are keyed as this machine runs them: on a machine without a
    GPU the second render decides that, finds every stage cached and publishes without torch."""
    edit(clone / "short.yaml", "      loras:\n        - {name: tiny/motion",
         "      quantize: fp8_e4m3fn\n      attention: sageattn\n      loras:\n        - {name: tiny/motion")
    first = render(clone / "short.yaml", progress=False)
    assert set(first.outcome.ran) == {"intro.video", "assemble.final"}
    out = light_cli("render", str(clone / "short.yaml"), "--no-progress", cwd=clone)
    assert out.returncode == 0, out.stderr
    assert "0 run, 7 cached" in out.stdout + out.stderr


def test_prompt_edit_reruns_that_video_and_assembly(clone):
    edit(clone / "short.yaml", "walks towards the camera", "runs towards the camera")
    seen = []
    result = render(clone / "short.yaml", progress=False, sinks=[seen.append])
    assert set(result.outcome.ran) == {"intro.video", "assemble.final"}
    reasons = {e.stage: e.reason for e in seen if e.event == "stage_started"}
    assert reasons["intro.video"] == "parameters changed: prompt"
    assert reasons["assemble.final"] == "input changed: intro.video"


def test_lora_low_weight_reruns_video_and_changes_frames(clone, base):
    root, _ = base
    edit(clone / "short.yaml", "high: 1.0, low: 0.5", "high: 1.0, low: 0.0")
    result = render(clone / "short.yaml", progress=False)
    assert set(result.outcome.ran) == {"intro.video", "assemble.final"}
    old = read_frames(root / "outputs/short/scenes/intro.mp4").astype(np.int16)
    new = read_frames(clone / "outputs/short/scenes/intro.mp4").astype(np.int16)
    assert old.shape == new.shape
    assert np.abs(old - new).mean() > 1.0


def test_deleted_cache_entry_reruns_only_that_stage(clone):
    cache = clone / ".cinesynth/cache"
    key = lock_of(clone)["stages"]["outro.video.1"]["key"]
    (cache / "keys" / key[:2] / f"{key}.json").unlink()
    seen = []
    result = render(clone / "short.yaml", progress=False, sinks=[seen.append])
    assert result.outcome.ran == ["outro.video.1"]
    started = [e for e in seen if e.event == "stage_started"]
    assert [e.reason for e in started] == ["missing: artifact not in cache"]
    # the re-made clip is byte-identical, so the stages below it stay cached
    assert "outro.video.2" in result.outcome.cached and "assemble.final" in result.outcome.cached


def test_damaged_object_is_remade(clone):
    lock = lock_of(clone)
    digest = lock["stages"]["intro.upscale"]["output"]["digest"]
    obj = clone / ".cinesynth/cache/objects" / digest[:2] / f"{digest}.png"
    good = obj.read_bytes()
    data = bytearray(good)
    data[-20] ^= 0xFF
    obj.write_bytes(bytes(data))
    warnings = []
    result = render(clone / "short.yaml", progress=False, force=False, warn=warnings.append,
                    only=["intro.video"], )
    # a cached object is checked before it is read or published: found even though nothing reads it
    assert result.outcome.ran == ["intro.upscale"] and any("damaged" in w for w in warnings)
    assert hashlib.sha256(obj.read_bytes()).hexdigest() == digest
    obj.write_bytes(bytes(data))
    result = render(clone / "short.yaml", progress=False, warn=warnings.append, force=True,
                    only=["intro.video"])
    # a forced run makes the same bytes again and replaces the damaged copy in the store
    assert "intro.upscale" in result.outcome.ran
    assert hashlib.sha256(obj.read_bytes()).hexdigest() == digest


def test_failure_names_stage_and_keep_going_finishes_the_rest(clone):
    (clone / "assets" / "broken.png").write_text("not an image")
    edit(clone / "short.yaml", "    video:\n      prompt: \"the fox breathes",
         "    video:\n      image: assets/broken.png\n      prompt: \"the fox breathes")
    with pytest.raises(RenderError) as exc:
        render(clone / "short.yaml", progress=False, keep_going=True)
    assert "outro.video.1" in exc.value.message
    result = exc.value.result
    assert "intro.video" in result.outcome.cached
    assert set(result.outcome.blocked) == {"outro.video.2", "assemble.final"}
    objects = list((clone / ".cinesynth/cache/objects").glob("*/*"))
    assert all(hashlib.sha256(o.read_bytes()).hexdigest() == o.name.split(".")[0] for o in objects)


def test_a_lora_made_for_a_bigger_model_fails_its_stage_in_one_line(clone, capfd):
    """A Wan LoRA of the 14B sizes on the tiny profile: one short line says so, counted and with
    the first tensor's sizes, instead of one line per tensor (twice: diffusers' log, then the error)."""
    from cinesynth_batch.catalog.shapes.configs import A14B_EXPERT
    from cinesynth_batch.catalog.shapes.loras import wan_lora_shapes, write_wan_lora

    big = {**A14B_EXPERT, "num_layers": 2}               # the tiny expert has 2 blocks too, 24 wide
    path = write_wan_lora(clone / "lora_adpts/mov/big/motion.safetensors", rank=1, config=big)
    edit(clone / "short.yaml", "name: tiny/motion", "name: big/motion")
    capfd.readouterr()
    with pytest.raises(RenderError) as exc:
        render(clone / "short.yaml", progress=False, keep_going=True)
    outcome = exc.value.result.outcome
    assert set(outcome.failed) == {"intro.video"}
    mismatched = 2 * len(wan_lora_shapes(big)) * 2       # blocks x modules x (A, B)
    assert outcome.failed["intro.video"] == (
        f"cannot load LoRA 'big/motion' ({path}) into transformer: {mismatched} of its tensors do not "
        "fit the model's layers (the first: blocks.0.attn1.to_q.lora_A is 1x5120 in the file, 1x24 in "
        "the model) (check that the LoRA was trained for this model (same architecture and sizes) and "
        "that the profile is the one it was made for)")
    assert "size mismatch" not in exc.value.message
    assert "was unsuccessful" not in capfd.readouterr().err     # diffusers' own log of the error


SMALL = """
project: small
defaults: {resolution: 64x64, fps: 16, seed: -1}
scenes:
  - id: a
    image: {prompt: "a lighthouse", steps: 2}
    video: {prompt: "waves", frames: 9, steps: 40}
  - id: b
    image: {prompt: "a boat", steps: 2}
    video: {prompt: "sailing", frames: 9, steps: 40}
"""


def test_sigkill_mid_stage_leaves_no_partial_artifact_and_resumes(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "cinesynth.toml").write_text("")
    (root / "small.yaml").write_text(SMALL)
    events = root / "events.jsonl"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "render.py"), str(root / "small.yaml"),
                             "--events", str(events), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        lines = [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []
        if any(e["event"] == "stage_progress" and e.get("kind") == "video" and e["step"] >= 2
               for e in lines):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("render never reached a video stage")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    done = {e["stage"] for e in lines if e["event"] == "stage_finished"}
    assert "a.video" not in done and {"a.image", "b.image"} <= done
    cache = root / ".cinesynth/cache"
    for obj in (cache / "objects").glob("*/*"):
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == obj.name.split(".")[0]
    for kp in (cache / "keys").glob("*/*.json"):
        entry = json.loads(kp.read_text())
        assert (cache / "objects" / entry["digest"][:2] / f"{entry['digest']}{entry['ext']}").is_file()
    assert len(list((cache / "keys").glob("*/*.json"))) == len(done)
    result = render(root / "small.yaml", progress=False)
    assert set(result.outcome.cached) == done
    assert set(result.outcome.ran) == {"a.image", "b.image", "a.video", "b.video",
                                       "assemble.final"} - done
    assert not any((cache / "tmp").iterdir())   # the killed run's scratch folder is gone
    again = render(root / "small.yaml", progress=False)
    assert again.outcome.ran == []


def test_gc_keeps_what_the_lock_needs(clone):
    from typer.testing import CliRunner

    from cinesynth_batch.cli import app

    spec = clone / "short.yaml"
    edit(spec, "walks towards the camera", "runs towards the camera")
    render(spec, progress=False)
    keys = clone / ".cinesynth/cache/keys"
    assert len(list(keys.glob("*/*.json"))) == 9       # 7 current + the old video and assembly
    out = CliRunner().invoke(app, ["gc", str(spec)])
    assert out.exit_code == 0 and "removed 0 objects and 0 keys" in out.output
    out = CliRunner().invoke(app, ["gc", str(spec), "--max-size", "0"])
    assert out.exit_code == 0 and "removed 2 objects and 2 keys" in out.output, out.output
    assert render(spec, progress=False).outcome.ran == []


def test_two_processes_write_identical_locks(tmp_path):
    """The CPU path is deterministic: separate processes, separate caches, the same lock."""
    locks = []
    for name in ("one", "two"):
        root = make_project(tmp_path / name)
        subprocess.run([sys.executable, str(REPO / "render.py"), str(root / "short.yaml"),
                        "--no-progress"], check=True, capture_output=True)
        locks.append((root / "outputs/short/render.lock").read_text())
    assert locks[0] == locks[1]
