"""A flipped byte in any cached object never reaches an output.

Each cached object is damaged in turn; the next render finds it before it is read or
published, says so, runs that stage again (reason "cached artifact was damaged") and
publishes the same bytes as a clean render. ``cinesynth cache verify`` finds the damage and
``--repair`` removes it. Damage that keeps the object's size, mtime and inode (so the cheap
stat check cannot see it) is still caught where the object is read: by the hash of an input
before a stage reads it, and by the hash publishing computes while it copies.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cinesynth_batch.cli import app
from cinesynth_batch.execute.render import render
from store_checks import FINAL, STAGES, check_store, events, make_project, sha, stages_with

pytestmark = pytest.mark.slow

DAMAGED = "cached artifact was damaged"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    spec = make_project(tmp_path_factory.mktemp("clean") / "p")
    render(spec, progress=False)
    lock = yaml.safe_load((spec.parent / "outputs/k/render.lock").read_text())
    return spec.parent, sha(spec.parent / FINAL), lock["stages"]


@pytest.fixture
def copy(clean, tmp_path):
    """A copy of the rendered project whose key entries carry the copied objects' stat stamps
    (as if committed there), so that only damage decides what gets hashed."""
    root, _, _ = clean
    dst = tmp_path / "p"
    shutil.copytree(root, dst)
    cache = dst / ".cinesynth/cache"
    for kp in (cache / "keys").glob("*/*.json"):
        entry = json.loads(kp.read_text())
        st = (cache / "objects" / entry["digest"][:2] / f"{entry['digest']}{entry['ext']}").stat()
        entry["stamp"] = [st.st_size, st.st_mtime_ns, st.st_ino]
        kp.write_text(json.dumps(entry))
    return dst


def object_of(root: Path, lock_stages: dict, stage: str) -> Path:
    out = lock_stages[stage]["output"]
    return root / ".cinesynth/cache/objects" / out["digest"][:2] / f"{out['digest']}{out['ext']}"


def flip(path: Path, keep_stamp: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    with open(path, "r+b") as f:           # in place: same inode and size
        f.write(data)
    if keep_stamp:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def verify(root: Path, *extra: str):
    return CliRunner().invoke(app, ["cache", "verify", str(root / "k.yaml"), *extra])


def rerender(root: Path):
    warnings: list[str] = []
    shutil.rmtree(root / "outputs")
    result = render(root / "k.yaml", progress=False, events=root / "again.jsonl", warn=warnings.append)
    return result, events(root / "again.jsonl"), warnings


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_flipped_byte_in_each_object_is_caught_and_remade(clean, copy, stage):
    _, final, lock_stages = clean
    flip(object_of(copy, lock_stages, stage))
    found = verify(copy)
    assert found.exit_code == 1, found.output
    assert "6 objects verified, 1 damaged, 0 dangling keys" in found.output

    result, evs, warnings = rerender(copy)
    started = [e for e in evs if e["event"] == "stage_started"]
    assert [(e["stage"], e["reason"]) for e in started] == [(stage, DAMAGED)]
    assert set(result.outcome.ran) == {stage}
    assert any("damaged" in w and stage in w for w in warnings), warnings
    assert sha(copy / FINAL) == final
    manifest = json.loads((copy / "outputs/k/manifest.json").read_text())
    assert [r["reason"] for r in manifest["stages"] if r["id"] == stage] == [DAMAGED]
    for rel, info in manifest["files"].items():
        assert sha(copy / "outputs/k" / rel) == info["digest"]
    assert verify(copy).exit_code == 0
    check_store(copy / ".cinesynth/cache")


def test_verify_repair_drops_the_damage_and_the_stage_runs_again(clean, copy):
    _, final, lock_stages = clean
    flip(object_of(copy, lock_stages, "b.video"))
    object_of(copy, lock_stages, "a.extract_audio").unlink()        # a key left dangling
    repaired = verify(copy, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "5 objects verified, 1 damaged, 1 dangling keys" in repaired.output
    again = verify(copy)
    assert again.exit_code == 0 and "4 objects verified, 0 damaged, 0 dangling keys" in again.output
    result, evs, _ = rerender(copy)
    assert set(stages_with(evs, "stage_started")) == {"b.video", "a.extract_audio"}
    assert sha(copy / FINAL) == final


def test_damage_the_stat_check_cannot_see_is_caught_while_publishing(clean, copy):
    _, final, lock_stages = clean
    flip(object_of(copy, lock_stages, "assemble.final"), keep_stamp=True)
    result, evs, warnings = rerender(copy)
    started = [(e["stage"], e["reason"]) for e in evs if e["event"] == "stage_started"]
    assert started == [("assemble.final", DAMAGED)]
    assert any("damaged" in w and "assemble.final" in w for w in warnings), warnings
    assert sha(copy / FINAL) == final


def test_damaged_input_is_caught_before_a_stage_reads_it(clean, copy):
    _, final, lock_stages = clean
    flip(object_of(copy, lock_stages, "a.image_frame"), keep_stamp=True)
    key = lock_stages["a.video"]["key"]
    (copy / ".cinesynth/cache/keys" / key[:2] / f"{key}.json").unlink()   # a.video must run
    result, evs, warnings = rerender(copy)
    started = [(e["stage"], e["reason"]) for e in evs if e["event"] == "stage_started"]
    assert [s for s, _ in started] == ["a.video", "a.image_frame"], started   # found as a.video read it
    assert started[1][1] == DAMAGED
    assert any("damaged" in w and "a.image_frame" in w for w in warnings), warnings
    assert sha(copy / FINAL) == final


@pytest.mark.parametrize("field, value", [
    ("digest", "../../../victim"),                    # objects/../../../../victim.mp4: beside the project
    ("ext", "/../../../../../../victim.mp4"),         # objects/aa/aaa.../../../../../../../victim.mp4
    ("size", -1),
    ("digest", None),
])
def test_a_crafted_key_entry_names_no_file_outside_the_cache(clean, copy, tmp_path, field, value):
    """A key entry's digest and extension become an object's path, which a damaged object's
    removal deletes: an entry that is not one is dropped as unreadable, the file it points at
    is left alone, and the stage runs again."""
    _, final, lock_stages = clean
    victim = tmp_path / "victim.mp4"
    victim.write_text("precious")
    key = lock_stages["b.video"]["key"]
    cache = copy / ".cinesynth/cache"
    kp = cache / "keys" / key[:2] / f"{key}.json"
    entry = json.loads(kp.read_text())
    entry.pop("stamp")
    entry["size"] = victim.stat().st_size
    if field == "ext":
        entry["digest"] = "a" * 64
    entry[field] = value
    kp.write_text(json.dumps(entry))
    if field in ("digest", "ext") and value is not None:        # where the entry points, unchecked
        named = cache / "objects" / entry["digest"][:2] / f"{entry['digest']}{entry['ext']}"
        assert Path(os.path.normpath(named)) == victim
    result, evs, warnings = rerender(copy)
    assert victim.read_text() == "precious"
    assert stages_with(evs, "stage_started") == ["b.video"]
    assert f"cache entry {key[:12]} is unreadable; dropping it" in warnings
    assert sha(copy / FINAL) == final
    listed = verify(copy)
    assert listed.exit_code == 0 and "0 damaged, 0 dangling keys" in listed.output


def test_a_key_entrys_meta_of_another_type_does_not_reach_the_report(clean, copy):
    """An entry's meta is read back from disk: a duration that is not a number ended the render
    in the report's template (TypeError); the media facts keep numbers only."""
    _, final, _ = clean
    for kp in (copy / ".cinesynth/cache/keys").glob("*/*.json"):
        entry = json.loads(kp.read_text())
        entry["meta"] = {**entry["meta"], "duration": "x", "frames": [1], "fps": float("nan")}
        kp.write_text(json.dumps(entry))
    result, evs, _ = rerender(copy)
    assert stages_with(evs, "stage_started") == []
    manifest = json.loads((copy / "outputs/k/manifest.json").read_text())
    assert all(isinstance(f.get("duration", 0.0), float) for f in manifest["files"].values())
    assert (copy / "outputs/k/report.html").is_file() and sha(copy / FINAL) == final
