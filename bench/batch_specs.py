"""Five specs in one session against five commands: ``cinesynth render a.yaml … e.yaml`` and
``cinesynth render a.yaml; …; cinesynth render e.yaml``.

The five specs use the same models (tiny profile: image, upscale, video) and share no stage
(each prompt names its project), so the session saves what a command pays once per spec:
interpreter and torch start-up and the model loads. Fresh project and cache for each run, the
two ways alternated and the best of each kept (the machine is shared), ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _specs import write_project  # noqa: E402

SPECS = ["a", "b", "c", "d", "e"]
SCENES = 2
ROUNDS = 2


def project(root: Path) -> list[Path]:
    specs = []
    for name in SPECS:
        spec = write_project(root, name, SCENES)
        spec.write_text(spec.read_text().replace('"shot ', f'"{name}: shot '))
        specs.append(spec)
    return specs


def run(args: list[str]) -> tuple[float, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cinesynth_batch.cli", "render", *args, "--no-progress"],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"render failed ({args}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def loads(stdout: str) -> int:
    return sum(int(n) for line in stdout.splitlines() if line.startswith("model loads:")
               for n in re.findall(r" (\d+)", line))


def main() -> None:
    times: dict[str, list[float]] = {"separate": [], "session": []}
    counted: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(ROUNDS):
            specs = project(Path(tmp) / f"sep-{round_}")
            total, n = 0.0, 0
            for spec in specs:
                seconds, out = run([str(spec)])
                total, n = total + seconds, n + loads(out)
            times["separate"].append(total)
            counted["separate"] = n
            specs = project(Path(tmp) / f"one-{round_}")
            seconds, out = run([str(s) for s in specs])
            times["session"].append(seconds)
            counted["session"] = loads(out)
    best = {k: min(v) for k, v in times.items()}
    print(f"{len(SPECS)} specs of {SCENES} scenes (image, x2 upscale, 9-frame 64x64 video), tiny profile, "
          f"fresh cache each, OMP_NUM_THREADS=1, best of {ROUNDS}")
    for name, label in (("separate", f"{len(SPECS)} commands"), ("session", "one command, 5 specs")):
        print(f"{label:22} {best[name]:6.2f} s   model loads {counted[name]:2}   "
              f"(runs: {', '.join(f'{x:.2f}' for x in times[name])})")
    print(f"ratio session / commands: {best['session'] / best['separate']:.3f}")


if __name__ == "__main__":
    main()
