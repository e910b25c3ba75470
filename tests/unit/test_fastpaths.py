"""The fast-path line a GPU render prints first (``runtime/fastpaths.py``)."""

from __future__ import annotations

from cinesynth_batch.runtime.fastpaths import line, survey


def test_the_cpu_has_no_fast_paths_to_report():
    assert survey("cpu") == {} and line({}) == ""


def test_the_line_names_what_was_found_with_its_version_and_why_the_rest_is_missing():
    found = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "paths": {
        "fa3": {"found": True, "why": "", "version": "0.0.3"},
        "fa4": {"found": False, "why": "FlashAttention-4 (the flash-attn-4 wheel) does not import", "version": None},
        "cudnn": {"found": True, "why": "", "version": None},
        "compile": {"found": False, "why": "Triton is not installed", "version": None}}}
    assert line(found) == ("fast paths on cuda (NVIDIA H100 80GB HBM3): fa3 0.0.3, cudnn; not found: "
                           "fa4 (FlashAttention-4 (the flash-attn-4 wheel) does not import); "
                           "compile (Triton is not installed)")


def test_a_render_announces_the_fast_paths_once_and_records_them_with_a_stand_in_survey(project, monkeypatch):
    """``cinesynth render`` of two specs that run models: the line is printed once, before the
    first stage, and each manifest records the survey. (The survey is replaced by a stand-in: there
    is no CUDA device here; the GPU test of the nightly batch runs the real one.)"""
    import json
    import textwrap

    from typer.testing import CliRunner

    from cinesynth_batch.cli import app
    from cinesynth_batch.runtime import fastpaths

    found = {"device": "cuda", "gpu": "Stand-in GPU", "paths": {
        "fa3": {"found": True, "why": "", "version": "0.0.3"},
        "fa4": {"found": False, "why": "not installed", "version": None}}}
    asked = []
    monkeypatch.setattr(fastpaths, "survey", lambda device: asked.append(device) or found)
    for name in ("one", "two"):
        (project / f"{name}.yaml").write_text(textwrap.dedent(f"""
            project: {name}
            defaults: {{resolution: 64x64, seed: 3}}
            scenes:
              - id: a
                image: {{prompt: "a {name}", steps: 2}}
            """))
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["render", "one.yaml", "two.yaml", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    text = "fast paths on cuda (Stand-in GPU): fa3 0.0.3; not found: fa4 (not installed)"
    assert result.output.count(text) == 1 and len(asked) == 1
    assert result.output.index(text) < result.output.index("run a.image")
    for name in ("one", "two"):
        manifest = json.loads((project / "outputs" / name / "manifest.json").read_text())
        assert manifest["fast_paths"] == found
