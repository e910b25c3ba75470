"""Synthetic specs for the benchmarks."""

from pathlib import Path

HEADER = """project: {name}
profile: tiny
defaults: {{resolution: {resolution}, fps: 16, seed: 7}}
vars: {{style: "film grain, soft light"}}
scenes:
"""

SCENE = """  - id: shot-{i:03d}
    image:
      prompt: "shot {i}: a lighthouse at dusk, {{{{ style }}}}"
      steps: 2
      upscale: {upscale}
    video:
      prompt: "waves roll in, shot {i}"
      frames: {frames}
      steps: {steps}
      guidance: 1.0
      loras: [{{name: tiny/motion, high: 1.0, low: 0.5}}]
"""


def write_project(root: Path, name: str, scenes: int, upscale: bool = True, frames: int = 9,
                  steps: int = 2, resolution: str = "64x64") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cinesynth.toml").write_text("")
    text = HEADER.format(name=name, resolution=resolution) + "".join(
        SCENE.format(i=i, upscale="x2" if upscale else "false", frames=frames, steps=steps)
        for i in range(scenes))
    spec = root / f"{name}.yaml"
    spec.write_text(text)
    return spec
