"""presets/fflf_auto_loop_v2.yaml carries the seed's FFLF Auto Loop V2 values (its graph
wan_fflf_auto_v2_api.json and registry `fflf_auto_v2`), and the tiny profile has its LoRAs."""

import textwrap
from pathlib import Path

import yaml

from cinesynth_batch.catalog.tiny.build import FFLF_PRESET_LORAS
from cinesynth_batch.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "presets" / "fflf_auto_loop_v2.yaml"

SEED_PROMPT = ("This scene is based on the 24fps, accelerated, fast-motion, Best quality, futuristic 8k, 4k UHD, "
               "Realistic delicacy, vibrant.\nA beautiful videoclip of a dynamic lovely photomodel. She poses with "
               "exaggerated provocative movements.")
SEED_NEGATIVE = "slow motion, gaudy, overexposed, blurred details, still image, low quality, cartoon, static"


def video_of(project: Path, monkeypatch, extra: str = ""):
    monkeypatch.setenv("CINESYNTH_PROJECT", str(REPO))
    for name in "abcd":
        (project / f"{name}.png").write_bytes(b"")
    (project / "spec.yaml").write_text(textwrap.dedent("""
        project: p
        scenes:
          - id: loop
            video:
              preset: fflf_auto_loop_v2
              keyframes: [a.png, b.png, c.png, d.png]
        """) + textwrap.indent(textwrap.dedent(extra), " " * 6))
    return load_spec(project / "spec.yaml", check_files=False).spec.scenes[0].video


def test_preset_holds_the_seeds_values(project, monkeypatch):
    v = video_of(project, monkeypatch)
    assert (v.steps, v.guidance, v.guidance_2, v.scheduler, v.shift, v.seed) == (8, 1.0, 1.0, "euler", 8.0, 138)
    assert v.loop is True and v.lengths == [33, 37, 33, 33] and v.clip_lengths() == [33, 37, 33, 33]
    assert v.resolution == "720x1280"
    assert v.two_pass.base_size(720, 1280) == (288, 512)          # base width 288, x2.5
    assert (v.two_pass.scale, v.two_pass.high_steps) == (2.5, 4)   # steps 0-4 high, 4-8 low
    assert [(lo.name, lo.high, lo.low) for lo in v.loras] == [
        ("Wan_2_2_I2V_A14B_HIGH_lightx2v_4step_lora_v1030_rank_64_bf16", 1.0, 0.0),
        ("wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022", 0.0, 1.0),
        ("Wan2.2-Fun-A14B-InP-low-noise-HPS2.1", 0.0, 0.75),
    ]
    assert (v.prompt, v.negative_prompt) == (SEED_PROMPT, SEED_NEGATIVE)
    assert v.interpolate.target(16) == 32


def test_tiny_profile_has_a_stand_in_for_every_preset_lora():
    names = [lo["name"] for lo in yaml.safe_load(PRESET.read_text())["loras"]]
    assert tuple(names) == FFLF_PRESET_LORAS


def test_preset_cites_its_sources():
    text = PRESET.read_text()
    for cite in ("SEED_REPO.md §2", "FF#408", "FF#451", "FF#443", "FF#446", "FF#490", "FF#482", "NAG"):
        assert cite in text


def test_a_spec_opens_the_chain_and_sizes_it(project, monkeypatch):
    v = video_of(project, monkeypatch, """
        loop: false
        lengths: 17
        resolution: 80x48
        """)
    assert v.loop is False and v.clip_count() == 3 and v.clip_lengths() == [17, 17, 17]
    assert v.two_pass.base_size(80, 48) == (32, 16) and v.steps == 8
