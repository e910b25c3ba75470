"""Planning time against spec size: load + validate + expand + key a 200-scene spec.

Prints the time for 20 and 200 scenes (median of repeats, same process) and the ratio of
per-scene cost, which is 1.0 when planning scales linearly.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _specs import write_project  # noqa: E402

from cinesynth_batch.execute.session import Session  # noqa: E402


def time_plan(spec: Path, repeats: int) -> tuple[float, int]:
    times, stages = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan = Session.open(spec).plan()
        times.append(time.perf_counter() - t0)
        stages = len(plan.order)
    return statistics.median(times), stages


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        small = write_project(Path(tmp) / "s", "plan20", 20)
        large = write_project(Path(tmp) / "l", "plan200", 200)
        time_plan(small, 1)  # warm imports
        t20, n20 = time_plan(small, 7)
        t200, n200 = time_plan(large, 5)
    print(f"plan  20 scenes ({n20:4d} stages): {t20 * 1000:7.1f} ms")
    print(f"plan 200 scenes ({n200:4d} stages): {t200 * 1000:7.1f} ms   goal < 500 ms")
    print(f"per-scene cost ratio 200/20: {(t200 / 200) / (t20 / 20):.2f} (1.00 = linear)")


if __name__ == "__main__":
    main()
