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
