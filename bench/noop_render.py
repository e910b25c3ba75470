"""Re-render of an unchanged 20-scene spec (everything cached) against its first render.

Runs in one process: the first render is the baseline; the no-op re-render is timed both
in-process (``render()``) and as the whole ``cinesynth render`` command (interpreter start-up
included).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _specs import write_project  # noqa: E402

from cinesynth_batch.execute.render import render  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_project(Path(tmp), "noop20", 20)
        t0 = time.perf_counter()
        first = render(spec, progress=False)
        full = time.perf_counter() - t0
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            again = render(spec, progress=False)
            times.append(time.perf_counter() - t0)
            assert again.outcome.ran == [], again.summary
        cli = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cinesynth_batch.cli", "render", str(spec),
                            "--no-progress"], check=True, capture_output=True,
                           env=dict(os.environ))
            cli.append(time.perf_counter() - t0)
    noop = statistics.median(times)
    print(f"first render, 20 scenes ({first.summary}): {full:6.2f} s")
    print(f"no-op re-render in process ({again.summary}): {noop * 1000:6.1f} ms   goal < 1000 ms")
    print(f"no-op `cinesynth render` command, start-up included: {statistics.median(cli) * 1000:6.1f} ms")
    print(f"ratio no-op / first render: {noop / full:.4f}")


if __name__ == "__main__":
    main()
