"""presets/change_character_v1_1.yaml carries the seed's production values, and specs win over it."""

import textwrap
from pathlib import Path

import yaml

from cinesynth_batch.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "presets" / "change_character_v1_1.yaml"


def spec_with(project: Path, monkeypatch, extra: str = ""):
    monkeypatch.setenv("CINESYNTH_PROJECT", str(REPO))      # the repo's presets/ is the project's
    (project / "dance.mp4").write_bytes(b"")
    (project / "me.png").write_bytes(b"")
    (project / "spec.yaml").write_text(textwrap.dedent("""
        project: p
        scenes:
          - id: dance
            animate:
              preset: change_character_v1_1
              reference_video: dance.mp4
              character: me.png
              mode: replace
        """) + textwrap.indent(textwrap.dedent(extra), " " * 6))
    monkeypatch.setenv("CINESYNTH_PROJECT", str(REPO))
    return load_spec(project / "spec.yaml", check_files=False).spec.scenes[0].animate


def test_preset_holds_every_production_value(project, monkeypatch):
    a = spec_with(project, monkeypatch)
    assert a.model == "Wan22Animate/wan2.2_animate_14B_bf16"
    assert (a.precision, a.quantize, a.attention, a.rms_norm) == ("bf16", "fp8_e4m3fn", "sageattn", "pytorch")
    assert (a.scheduler, a.steps, a.guidance, a.shift) == ("euler", 14, 1.0, 8.0)
    assert (a.cache.kind, a.cache.threshold, a.cache.start_step, a.cache.coefficients) == (
        "teacache", 0.15, 1, True)
    assert [(lo.name, lo.weight) for lo in a.loras] == [
        ("lightx2v_elite_it2v_animate_face", 1.0),
        ("WAN22_MoCap_fullbodyCOPY_ED", 0.4),
        ("Wan2.2-Fun-A14B-InP-Fusion-Elite", 0.65),
        ("FullDynamic_Ultimate_Fusion_Elite", 0.7),
        ("WanAnimate_relight_lora_fp16", 0.7),
    ]
    assert (a.resolution, a.block_swap, a.frame_window) == ("720x1280", 20, 77)
    assert a.mode == "replace"


def test_preset_keeps_the_reasons_as_comments():
    text = PRESET.read_text()
    for reason in ("CFG 5.0", "Q4_K_M", "rel_l1_thresh 0.3", "strength 1.2", "no pre-scaled weights",
                   "480x832 blurs the eyes"):
        assert reason in text
    assert set(yaml.safe_load(text)) >= {"model", "quantize", "steps", "guidance", "shift", "cache",
                                         "loras", "resolution", "block_swap", "frame_window"}


def test_spec_values_override_the_preset(project, monkeypatch):
    a = spec_with(project, monkeypatch, """
        steps: 8
        resolution: 480x832
        cache: {threshold: 0.3}
        loras: [{name: mine, weight: 0.5}]
        """)
    assert (a.steps, a.resolution, a.guidance) == (8, "480x832", 1.0)
    assert (a.cache.threshold, a.cache.start_step, a.cache.kind) == (0.3, 1, "teacache")  # deep merge
    assert [(lo.name, lo.weight) for lo in a.loras] == [("mine", 0.5)]                   # lists replace


def test_scaled_fp8_is_refused_with_the_reason(project, monkeypatch):
    import pytest

    from cinesynth_batch.errors import SpecError

    with pytest.raises(SpecError) as exc:
        spec_with(project, monkeypatch, "quantize: fp8_e4m3fn_scaled\n")
    assert "fp8_e4m3fn_scaled needs pre-scaled weights" in exc.value.render()
