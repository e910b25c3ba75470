"""Batch helpers: which files the arguments name, the exit code, refusals of the CLI, the
index page's lines and links."""

import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

from typer.testing import CliRunner

from cinesynth_batch.cli import app
from cinesynth_batch.execute.batch import BatchResult, ModelPool, SpecResult, expand_specs
from cinesynth_batch.execute.batch_index import default_index, index_line, write_index


def test_folders_and_patterns_expand_to_sorted_yaml_files_once(tmp_path):
    for name in ("b.yaml", "a.yaml", "notes.txt", "c.yml"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.yaml").write_text("")
    assert expand_specs([tmp_path]) == [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    assert expand_specs([str(tmp_path / "*.yaml"), tmp_path / "a.yaml"]) == \
        [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    assert expand_specs([tmp_path / "sub" / "z.yaml", tmp_path]) == \
        [tmp_path / "sub" / "z.yaml", tmp_path / "a.yaml", tmp_path / "b.yaml"]
    assert expand_specs([tmp_path / "missing.yaml"]) == [tmp_path / "missing.yaml"]
    assert expand_specs([str(tmp_path / "*.json")]) == []


def test_exit_code_invalid_over_failed_over_rendered():
    ok, bad = SpecResult("a", "a", "rendered"), SpecResult("b", "b", "failed")
    assert BatchResult([ok], {}).exit_code == 0
    assert BatchResult([ok, bad], {}).exit_code == 1
    assert BatchResult([bad, SpecResult("c", None, "invalid"), ok], {}).exit_code == 2


def test_summary_entry_has_the_documented_fields():
    row = SpecResult("s.yaml", "p", "failed", ran=1, cached=2, failed=1, seconds=0.5, error="boom",
                     output_dir="/x", summary="1 run", would_run=["x"])
    assert row.to_json() == {"spec": "s.yaml", "project": "p", "status": "failed", "ran": 1,
                             "cached": 2, "failed": 1, "seconds": 0.5, "error": "boom"}


def test_several_specs_refuse_nproc_and_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "b.yaml").write_text("")
    result = CliRunner().invoke(app, ["render", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"),
                                      "--nproc", "2"])
    assert result.exit_code == 2
    assert "several specs render in one process: --nproc, torchrun and --parallel sp take one " \
           "spec (render each spec on its own)" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["render", str(empty)])
    assert result.exit_code == 2
    assert f"no spec files in {empty} (a folder argument renders the *.yaml files in it)" in result.output


class FakeResidency:
    def __init__(self, registry):
        self.registry, self.loads, self.cleared = registry, Counter(), False

    def clear(self):
        self.cleared = True


class FakeExecutor:
    def make_residency(self, plan):
        return FakeResidency(plan.registry)


def registry(name, models):
    return SimpleNamespace(name=name, base_dir=Path("/p"), dtype="float32", lora_dirs=[], models=models)


def test_pool_keeps_one_residency_while_the_models_are_the_same():
    pool, ex = ModelPool(), FakeExecutor()
    first = pool.residency(ex, SimpleNamespace(registry=registry("tiny", {"image": 1})))
    first.loads.update({"image": 1})
    assert pool.residency(ex, SimpleNamespace(registry=registry("tiny", {"image": 1}))) is first
    other = pool.residency(ex, SimpleNamespace(registry=registry("tiny", {"image": 2})))
    assert other is not first and first.cleared and not other.cleared
    other.loads.update({"image": 1, "video": 1})
    assert pool.loads == {"image": 2, "video": 1}


def test_index_lines_say_ok_partial_or_failed_and_link_only_reports_inside_the_index_folder(tmp_path):
    """Statuses from the batch's rows; links relative, quoted, and only to a regular report.html
    whose real place is inside the index's folder; every text escaped."""
    outputs = tmp_path / "proj" / "outputs"
    elsewhere = tmp_path / "elsewhere"
    for folder in (outputs / "alpha", outputs / "beta", outputs / "odd name #?%", elsewhere):
        folder.mkdir(parents=True)
        (folder / "report.html").write_text("<p>a report</p>")
    (outputs / "linked").mkdir()
    (outputs / "linked" / "report.html").symlink_to(elsewhere / "report.html")   # a planted link
    (outputs / "escape").symlink_to(elsewhere)                                    # a folder link out
    rows = [SpecResult("a.yaml", "alpha", "rendered", ran=2, cached=1, seconds=1.5, output_dir=str(outputs / "alpha")),
            SpecResult("b.yaml", "beta", "failed", ran=1, failed=1, seconds=0.25,
                       error="1 stage(s) failed: b.video (boom)\nhint", output_dir=str(outputs / "beta")),
            SpecResult("c.yaml", "gamma", "failed", error="image: tiny/flux2-klein is not installed"),
            SpecResult("<script>alert(1)</script>.yaml", None, "invalid", error="x.yaml:1:2: YAML syntax error"),
            SpecResult("d.yaml", "odd", "rendered", output_dir=str(outputs / "odd name #?%")),
            SpecResult("e.yaml", "linked", "rendered", output_dir=str(outputs / "linked")),
            SpecResult("f.yaml", "escape", "rendered", output_dir=str(outputs / "escape")),
            SpecResult("g.yaml", "out", "rendered", output_dir=str(elsewhere)),
            SpecResult("h.yaml", "stopped", "failed", failed=1, output_dir=str(outputs / "beta"))]
    lines = [index_line(r, outputs) for r in rows]
    assert [(x["status"], x["href"]) for x in lines] == [
        ("ok", "alpha/report.html"), ("partial", "beta/report.html"), ("failed", None), ("failed", None),
        ("ok", "odd%20name%20%23%3F%25/report.html"), ("ok", None), ("ok", None), ("ok", None),
        ("failed", "beta/report.html")]
    assert [x["note"] for x in lines[1:4]] == ["1 stage(s) failed: b.video (boom)",
                                               "image: tiny/flux2-klein is not installed",
                                               "invalid spec: x.yaml:1:2: YAML syntax error"]
    assert lines[5]["report_elsewhere"] is None
    assert lines[6]["report_elsewhere"] == f"report: {outputs / 'escape' / 'report.html'}"
    assert lines[7]["report_elsewhere"] == f"report: {elsewhere / 'report.html'}"

    page = write_index(BatchResult(rows, {"image": 1}), outputs / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;.yaml" in page
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs == ["alpha/report.html", "beta/report.html", "odd%20name%20%23%3F%25/report.html",
                     "beta/report.html"]
    assert all((outputs / unquote(h)).is_file() for h in hrefs)
    assert "5 ok, 1 partial, 3 failed" in page and "image × 1" in page
    assert page.count('<tr class="spec"') == len(rows)


def test_the_index_goes_beside_the_outputs_of_the_first_specs_project(tmp_path, monkeypatch):
    monkeypatch.delenv("CINESYNTH_PROJECT", raising=False)
    (tmp_path / "proj" / "specs" / "nightly").mkdir(parents=True)
    (tmp_path / "proj" / "cinesynth.toml").write_text("")
    spec = tmp_path / "proj" / "specs" / "nightly" / "a.yaml"
    assert default_index([spec, tmp_path / "other.yaml"]) == tmp_path / "proj" / "outputs" / "index.html"
