"""``bench/gpu/overhead.py --tiny``: the benchmark's own code on the CPU. Each kind renders its two
scenes through the CLI, its pipeline is then timed alone, and the renderer's own calls in the warm
scene (writing the output, muxing, committing it) are read off the probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_overhead_benchmark_times_what_the_renderer_adds_on_the_tiny_models(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "bench/gpu/overhead.py"), "--tiny", "--kinds", "image,lipsync"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=ROOT / "bench" / "gpu")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "overhead.json").read_text())
    rows = {row["kind"]: row for row in result["rows"]}
    assert list(rows) == ["image", "lipsync"] and result["steps"] == 4
    for kind, row in rows.items():
        assert row["timing"]["steps"] == (4 if kind == "image" else 8), kind   # lip-sync: two segments of 4
        assert row["write_s"] > 0 and row["commit_s"] > 0, row
        own = row["write_s"] + row["mux_s"] + row["commit_s"] + row["verify_s"]
        assert own < row["stage_s"], row
        assert row["x_pure"] == pytest.approx(row["stage_s"] / row["pure_s"], abs=1e-3)
    assert rows["image"]["mux_s"] == 0              # a still: one PNG, no ffmpeg
    assert rows["lipsync"]["mux_s"] > 0             # the speech muxed into the clip
    assert "| write_s | mux_s | commit_s | verify_s |" in run.stdout
