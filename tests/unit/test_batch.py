"""Batch helpers: which files the arguments name, the exit code, refusals of the CLI."""

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from cinesynth_batch.cli import app
from cinesynth_batch.execute.batch import BatchResult, ModelPool, SpecResult, expand_specs


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
    row = SpecResult("s.yaml", "p", "failed", ran=1, cached=2, seconds=0.5, error="boom",
                     output_dir="/x", summary="1 run", would_run=["x"])
    assert row.to_json() == {"spec": "s.yaml", "project": "p", "status": "failed", "ran": 1,
                             "cached": 2, "seconds": 0.5, "error": "boom"}


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
