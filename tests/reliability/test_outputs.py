"""Nothing is written or deleted outside the output folder.

A previous ``manifest.json`` is input like any other: a crafted one naming an absolute path, a
``../`` path or a link must delete nothing outside the folder, and the render says it ignored
them. Links planted where a render publishes are replaced, never written through. A render that
runs nothing keeps the last real render's model loads and stage timings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cinesynth_batch.cli import app
from cinesynth_batch.execute.publish import published_before
from cinesynth_batch.execute.render import render
from store_checks import FINAL, make_project, sha

OUT = Path("outputs/k")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    spec = make_project(tmp_path_factory.mktemp("rendered") / "p")
    render(spec, progress=False)
    return spec.parent


@pytest.fixture
def copy(rendered, tmp_path):
    dst = tmp_path / "work" / "p"
    shutil.copytree(rendered, dst)
    return dst


def cli_render(root: Path):
    return CliRunner().invoke(app, ["render", str(root / "k.yaml"), "--no-progress"])


@pytest.mark.slow
def test_crafted_manifest_deletes_nothing_outside(rendered, copy, tmp_path):
    out = copy / OUT
    victims = {name: tmp_path / name for name in ("victim_abs", "victim_rel", "victim_link")}
    for name, path in victims.items():
        path.write_text(f"precious {name}")
    (out / "scenes").mkdir(exist_ok=True)
    (out / "scenes/link.png").symlink_to(victims["victim_link"])
    old = out / "scenes/old.png"
    old.write_bytes(b"an output of a stage since removed from the spec")
    edited = out / "scenes/edited.png"
    edited.write_bytes(b"someone edited this after it was published")
    rel_escape = "../" * 4 + "victim_rel"          # from outputs/k to tmp_path
    assert (out / rel_escape).resolve() == victims["victim_rel"]
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = {
        str(victims["victim_abs"]): {"stage": "x", "digest": sha(victims["victim_abs"])},
        rel_escape: {"stage": "x", "digest": sha(victims["victim_rel"])},
        "scenes/link.png": {"stage": "x", "digest": sha(victims["victim_link"])},
        "scenes/old.png": {"stage": "gone.image", "digest": sha(old)},
        "scenes/edited.png": {"stage": "gone.image", "digest": hashlib.sha256(b"original").hexdigest()},
    }
    stale = out / "thumbs/0123.thumb.webp"                       # a preview no output uses now
    stale.write_bytes(b"an earlier preview")
    manifest["thumbs"] = {f"thumbs/{rel_escape}": {"digest": sha(victims["victim_rel"])},
                          "thumbs/0123.thumb.webp": {"digest": sha(stale)}}
    (out / "manifest.json").write_text(json.dumps(manifest))

    result = cli_render(copy)
    assert result.exit_code == 0, result.output
    for name, path in victims.items():
        assert path.read_text() == f"precious {name}"
    assert (out / "scenes/link.png").is_symlink()               # not ours to remove either
    assert not old.exists()                                      # a file this project published: removed
    assert edited.exists()
    assert not stale.exists()                                    # an earlier preview: removed
    lines = [line for line in result.output.splitlines() if line.startswith("manifest.json lists")]
    assert len(lines) == 5, result.output
    assert any(f"thumbs/{rel_escape}" in line and "earlier preview" in line
               and "not inside the output folder" in line for line in lines)
    assert any(str(victims["victim_abs"]) in line and "not inside the output folder" in line
               for line in lines)
    assert any(rel_escape in line and "not inside the output folder" in line for line in lines)
    assert any("scenes/link.png" in line and "not a regular file" in line for line in lines)
    assert any("scenes/edited.png" in line and "bytes are not the ones" in line for line in lines)
    assert sha(copy / FINAL) == sha(rendered / FINAL)


@pytest.mark.slow
def test_links_planted_where_outputs_go_are_replaced_not_followed(rendered, copy, tmp_path):
    out = copy / OUT
    clean_final = sha(rendered / FINAL)
    victim = tmp_path / "victim.mp4"
    victim.write_bytes(b"precious")
    outside = tmp_path / "outside_dir"
    outside.mkdir()
    (out / "final.mp4").unlink()
    (out / "final.mp4").symlink_to(victim)
    shutil.rmtree(out / "scenes")
    (out / "scenes").symlink_to(outside, target_is_directory=True)
    result = cli_render(copy)
    assert result.exit_code == 0, result.output
    assert victim.read_bytes() == b"precious"
    assert list(outside.iterdir()) == []
    assert not (out / "final.mp4").is_symlink() and sha(out / "final.mp4") == clean_final
    assert (out / "scenes").is_dir() and not (out / "scenes").is_symlink()
    assert "is not a folder" in result.output


@pytest.mark.slow
def test_a_render_that_runs_nothing_keeps_the_last_loads_and_timings(rendered, copy):
    first = json.loads((rendered / OUT / "manifest.json").read_text())
    assert first["model_loads"] == {"video": 1}
    render(copy / "k.yaml", progress=False)
    render(copy / "k.yaml", progress=False)                      # twice: carried over again
    again = json.loads((copy / OUT / "manifest.json").read_text())
    assert again["summary"] == "0 run, 6 cached"
    assert again["model_loads"] == first["model_loads"]
    assert again["earlier_render"]["rendered_at"] == first["rendered_at"]
    ran = {r["id"]: r["seconds"] for r in first["stages"]}
    for row in again["stages"]:
        assert row["status"] == "cached"
        assert row["seconds"] == ran[row["id"]] and row["seconds_from"] == "earlier render"
    report = (copy / OUT / "report.html").read_text()
    assert f"from the render of {first['rendered_at']}; nothing ran in this one" in report
    assert report.count("(earlier render)") == len(again["stages"])
    # the figures (timeline, seconds by kind, loads) are the first render's, dated by it
    assert again["figures"] == first["figures"]
    assert again["earlier_render"]["carried"] == ["model_loads", "model_swaps", "figures"]
    assert {b["stage"] for b in first["figures"]["bars"]} == set(ran)
    assert f"made <b>{first['rendered_at']}</b>: nothing ran in this one (0 run, 6 cached" in report
    assert report.count('class="bar"') == len(ran)
    assert f"{first['figures']['loads']}</b>model loads" in report
    assert again["history"] == first["history"] and len(first["history"]) == 1
    # a render that runs something again: its figures, and the last two renders side by side
    render(copy / "k.yaml", progress=False, force=True, only=["assemble.final"])
    third = json.loads((copy / OUT / "manifest.json").read_text())
    assert "earlier_render" not in third
    assert sorted(b["stage"] for b in third["figures"]["bars"]) == \
        sorted(r["id"] for r in third["stages"] if r["status"] == "ran") != []
    assert [h["rendered_at"] for h in third["history"]] == [third["rendered_at"], first["rendered_at"]]
    report = (copy / OUT / "report.html").read_text()
    assert "Last renders" in report and f"<th>{first['rendered_at']}</th>" in report


@pytest.mark.parametrize("rel", ["/etc/passwd", "../x", "a/../../x", "scenes/../../x", "..", "", ".",
                                 "a\0b", "a\\..\\..\\x", 7, None, ["a"]])
def test_earlier_manifest_paths_outside_the_folder_are_refused(tmp_path, rel):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "x").write_text("outside")
    path, problem = published_before(out, rel, {"digest": sha(tmp_path / "x")})
    assert path is None and problem == "the path is not inside the output folder"


def test_earlier_manifest_path_through_a_linked_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/f.png").write_text("outside")
    (out / "scenes").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    path, problem = published_before(out, "scenes/f.png", {"digest": sha(tmp_path / "elsewhere/f.png")})
    assert path is None and problem == "its folder leads outside the output folder"


@pytest.mark.slow
def test_an_oversized_lock_or_manifest_is_not_read(copy, monkeypatch):
    """A lock or manifest past its bound is taken as missing (a crafted 46 MB lock held a render
    for a minute and gigabytes of RAM): the render finds its stages by key, runs nothing, and
    writes both files anew."""
    from cinesynth_batch.cache import lock as lock_module
    from cinesynth_batch.plan import cost

    out = copy / OUT
    monkeypatch.setattr(lock_module, "MAX_LOCK_BYTES", 4096)
    monkeypatch.setattr(cost, "MAX_MANIFEST_BYTES", 4096)
    padding = "#" + "x" * 5000 + "\n"
    (out / "render.lock").write_text((out / "render.lock").read_text() + padding)
    old = out / "scenes/old.png"                  # a stale output: removed when the manifest is read
    old.write_bytes(b"an output of a stage since removed from the spec")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["scenes/old.png"] = {"stage": "gone.image", "digest": sha(old)}
    manifest["padding"] = "x" * 5000
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert lock_module.Lock.read(out / "render.lock").stages == {}
    result = cli_render(copy)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("0 run, ")
    assert old.is_file()                                         # the oversized manifest was not read
    assert padding not in (out / "render.lock").read_text() and "padding" not in (out / "manifest.json").read_text()
    assert lock_module.Lock.read(out / "render.lock").stages


@pytest.mark.slow
@pytest.mark.parametrize("field, value", [("stages", 5), ("stages", [5, {"id": 7}]), ("model_swaps", [1]),
                                          ("model_loads", "x"), ("figures", {"bars": 5}), ("files", [1])])
def test_an_earlier_manifest_of_another_shape_is_read_as_far_as_it_is_one(copy, field, value):
    """The earlier manifest is input like any other: a field of another type ("stages": 5 ended
    the render in a TypeError) is left out, and the render runs nothing and writes it anew."""
    out = copy / OUT
    manifest = json.loads((out / "manifest.json").read_text())
    manifest[field] = value
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = cli_render(copy)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("0 run, ")
    written = json.loads((out / "manifest.json").read_text())
    assert isinstance(written["stages"], list) and isinstance(written.get("model_swaps", {}), dict)
