"""One rule, two reporters: each stage kind's parameters are declared once (``spec/params.py``,
built from ``spec/rules.py``). A value the spec refuses at ``file:line:col`` is refused by the
stage's ``check_params`` for the same rule, in the same words; a valid value passes both."""

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cinesynth_batch.cli import app
from cinesynth_batch.errors import SpecError, StageError
from cinesynth_batch.spec.load import load_spec
from cinesynth_batch.stages import (
    animate, animate_prep, assemble, detect, extract_audio, extract_frame, image, lipsync, segment, separate, subtitles,
    tts, upscale, video,
)

IMAGE = {"prompt": "a cat", "negative_prompt": None, "steps": 4, "guidance": 1.0, "width": 64, "height": 64,
         "seed": 7, "loras": [{"name": "tiny/style", "weight": 0.8, "file": None}]}
VIDEO = {"prompt": "walk", "negative_prompt": None, "frames": 9, "steps": 4, "guidance": 5.0, "guidance_2": 5.0,
         "shift": 5.0, "boundary": 0.9, "scheduler": "unipc", "width": 64, "height": 64, "fps": 16, "seed": 7,
         "loras": [{"name": "tiny/motion", "high": 1.0, "low": 0.5, "file": None}]}
LIPSYNC = {"prompt": "", "negative_prompt": None, "steps": 2, "infer_frames": 16, "guidance": 5.5, "shift": 3.0,
           "boundary": 0.9, "scheduler": "unipc", "width": 64, "height": 64, "fps": 16, "seed": 3, "loras": [],
           "cache": None}
ANIMATE = {"mode": "animate", "prompt": "", "negative_prompt": None, "width": 64, "height": 64, "fps": 16,
           "steps": 2, "guidance": 1.0, "shift": 5.0, "scheduler": "unipc", "seed": 3, "frame_window": 17,
           "prev_frames": 1, "loras": [], "precision": "bf16", "quantize": None, "attention": "sdpa",
           "rms_norm": "pytorch", "cache": None, "block_swap": 0}
PREP = {"output": "pose", "fps": 16, "max_frames": 601, "width": 64, "height": 64, "backend": "mediapipe",
        "detector": None, "pose_model": None}
TTS = {"text": "hello", "language": "en", "backend": "espeak", "voice": None, "instruct": None, "engine": "x",
       "scene_id": "one", "field": "audio.tts"}
SUBTITLES = {"fps": 16, "audio_rate": 48000, "scenes": [], "lines": [{"scene": "one", "audio": "a0", "text": "hi"}]}

HEAD = "project: demo\ndefaults: {resolution: 64x64, seed: 1}\nscenes:\n  - id: one\n"


def spec_problem(project: Path, body: str) -> tuple[str, str, str | None]:
    """(``file:line:col: path``, message, hint) of the one problem of a spec."""
    (project / "spec.yaml").write_text(HEAD + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n")
    with pytest.raises(SpecError) as err:
        load_spec(Path("spec.yaml"), check_files=False)
    (p,) = err.value.problems
    return f"{p.where}: {p.path}", p.message, p.hint


def stage_problem(stage, params: dict) -> tuple[str, str | None]:
    with pytest.raises(StageError) as err:
        stage.check_params(params)
    return err.value.message, err.value.hint


# (stage, valid params, bad values, spec body with the same bad value, where the spec reports it,
#  what the stage prefixes, the rule's words, its fix)
CASES = {
    "video_frames": (
        video, VIDEO, {"frames": 6}, "image: {prompt: cat}\nvideo: {prompt: walk, frames: 6}",
        "spec.yaml:6:35: scenes[0].video.frames", "video: frames", "6 is not 4k+1", "try 5"),
    "video_size": (
        video, VIDEO, {"width": 40}, "image: {prompt: cat, width: 40}\nvideo: {prompt: walk}",
        "spec.yaml:5:33: scenes[0].image.width", "video: width", "40 is not a multiple of 16", "try 32"),
    "video_scheduler": (
        video, VIDEO, {"scheduler": "ddim"}, "image: {prompt: cat}\nvideo: {prompt: walk, scheduler: ddim}",
        "spec.yaml:6:38: scenes[0].video.scheduler", "video: scheduler",
        "'ddim': input should be 'unipc' or 'euler'", None),
    "video_boundary": (
        video, VIDEO, {"boundary": 1.5}, "image: {prompt: cat}\nvideo: {prompt: walk, boundary: 1.5}",
        "spec.yaml:6:37: scenes[0].video.boundary", "video: boundary",
        "1.5: input should be less than or equal to 1", None),
    "video_attention": (
        video, VIDEO, {"attention": "xformers"}, "image: {prompt: cat}\nvideo: {prompt: walk, attention: xformers}",
        "spec.yaml:6:38: scenes[0].video.attention", "video: attention",
        "'xformers': input should be 'auto', 'sdpa', 'cudnn', 'fa3', 'fa4', 'flash' or 'sageattn'", None),
    "video_quantize": (
        video, VIDEO, {"quantize": "int8"}, "image: {prompt: cat}\nvideo: {prompt: walk, quantize: int8}",
        "spec.yaml:6:37: scenes[0].video.quantize", "video: quantize",
        "'int8': input should be 'fp8' or 'fp8_e4m3fn'", None),
    "video_block_swap": (
        video, VIDEO, {"block_swap": 41}, "image: {prompt: cat}\nvideo: {prompt: walk, block_swap: 41}",
        "spec.yaml:6:39: scenes[0].video.block_swap", "video: block_swap",
        "41: input should be less than or equal to 40", None),
    "lipsync_block_swap": (
        lipsync, LIPSYNC, {"block_swap": -1}, "lipsync: {avatar: a.png, audio: a.wav, block_swap: -1}",
        "spec.yaml:5:56: scenes[0].lipsync.block_swap", "lipsync: block_swap",
        "-1: input should be greater than or equal to 0", None),
    "image_width": (
        image, IMAGE, {"width": 72}, "image: {prompt: cat, width: 72}",
        "spec.yaml:5:33: scenes[0].image.width", "image: width", "72 is not a multiple of 16", "try 64"),
    "image_guidance": (
        image, IMAGE, {"guidance": 31.0}, "image: {prompt: cat, guidance: 31.0}",
        "spec.yaml:5:36: scenes[0].image.guidance", "image: guidance",
        "31.0: input should be less than or equal to 30", None),
    "image_lora_weight": (
        image, IMAGE, {"loras": [{"name": "tiny/style", "weight": 5.0, "file": None}]},
        "image: {prompt: cat, loras: [{name: tiny/style, weight: 5.0}]}",
        "spec.yaml:5:61: scenes[0].image.loras[0].weight", "image: loras[0].weight",
        "5.0: input should be less than or equal to 4", None),
    "lipsync_infer_frames": (
        lipsync, LIPSYNC, {"infer_frames": 81},
        "lipsync: {avatar: a.png, audio: a.wav, infer_frames: 81}",
        "spec.yaml:5:58: scenes[0].lipsync.infer_frames", "lipsync: infer_frames",
        "81 is not a multiple of 4", "try 80"),
    "lipsync_shift": (
        lipsync, LIPSYNC, {"shift": 0.0}, "lipsync: {avatar: a.png, audio: a.wav, shift: 0.0}",
        "spec.yaml:5:51: scenes[0].lipsync.shift", "lipsync: shift", "0.0: input should be greater than 0", None),
    "animate_frame_window": (
        animate, ANIMATE, {"frame_window": 16},
        "animate: {reference_video: d.mp4, character: c.png, frame_window: 16}",
        "spec.yaml:5:71: scenes[0].animate.frame_window", "animate: frame_window", "16 is not 4k+1", "try 17"),
    "animate_prev_frames": (
        animate, ANIMATE, {"frame_window": 5, "prev_frames": 5},
        "animate: {reference_video: d.mp4, character: c.png, frame_window: 5, prev_frames: 5}",
        "spec.yaml:5:14: scenes[0].animate", "animate",
        "prev_frames 5 is not smaller than frame_window 5", "use a longer frame_window"),
    "animate_attention": (
        animate, ANIMATE, {"attention": "xformers"},
        "animate: {reference_video: d.mp4, character: c.png, attention: xformers}",
        "spec.yaml:5:68: scenes[0].animate.attention", "animate: attention",
        "'xformers': input should be 'sdpa', 'cudnn', 'fa3', 'fa4', 'sageattn' or 'flash'", None),
    "animate_cache": (
        animate, ANIMATE, {"cache": {"kind": "teacache", "threshold": 3.0}},
        "animate: {reference_video: d.mp4, character: c.png, cache: {threshold: 3.0}}",
        "spec.yaml:5:76: scenes[0].animate.cache.threshold", "animate: cache.threshold",
        "3.0: input should be less than or equal to 2", None),
    "animate_prep_max_frames": (
        animate_prep, PREP, {"max_frames": 8},
        "animate: {reference_video: d.mp4, character: c.png, max_frames: 8}",
        "spec.yaml:5:69: scenes[0].animate.max_frames", "animate_prep: max_frames", "8 is not 4k+1", "try 9"),
    "animate_prep_backend": (
        animate_prep, PREP, {"backend": "openpose"},
        "animate: {reference_video: d.mp4, character: c.png, preprocess: {backend: openpose}}",
        "spec.yaml:5:79: scenes[0].animate.preprocess.backend", "animate_prep: backend",
        "'openpose': input should be 'mediapipe' or 'onnx'", None),
    "extract_audio_range": (
        extract_audio, {"start": 0.0, "end": 1.5}, {"start": 2.0, "end": 1.0},
        "image: {prompt: cat}\naudio: {extract: {source: clip.mp4, start: 2.0, end: 1.0}}",
        "spec.yaml:6:22: scenes[0].audio.extract", "extract_audio",
        "end 1.0 is not after start 2.0", "make end > start"),
    "extract_audio_start": (
        extract_audio, {"start": 0.0, "end": None}, {"start": -1},
        "image: {prompt: cat}\naudio: {extract: {source: clip.mp4, start: -1}}",
        "spec.yaml:6:48: scenes[0].audio.extract.start", "extract_audio: start",
        "-1: input should be greater than or equal to 0", None),
    "extract_frame_at": (
        extract_frame, {"at": 1.5}, {"at": -1},
        "image: {prompt: cat}\nvideo: {prompt: walk, image: {frame: {source: clip.mp4, at: -1}}}",
        "spec.yaml:6:65: scenes[0].video.image.frame.at", "extract_frame: at",
        "-1 is not a frame position", "use first, last or seconds >= 0"),
    "separate_stem": (
        separate, {"stem": "vocals", "overlap": 0.25}, {"stem": "drums"},
        "image: {prompt: cat}\naudio: {separate: {source: song.wav, stem: drums}}",
        "spec.yaml:6:48: scenes[0].audio.separate.stem", "separate: stem",
        "'drums': input should be 'vocals' or 'accompaniment'", None),
    "tts_backend": (
        tts, TTS, {"backend": "festival"},
        "image: {prompt: cat}\naudio: {tts: {text: hi, language: en, backend: festival}}",
        "spec.yaml:6:52: scenes[0].audio.tts.backend", "scene 'one': audio.tts.backend",
        "'festival': input should be 'espeak' or 'qwen3-tts'", None),
    "tts_seed": (
        tts, {**TTS, "backend": "qwen3-tts", "seed": 5}, {"backend": "qwen3-tts", "seed": 2**32},
        "image: {prompt: cat}\naudio: {tts: {text: hi, language: en, backend: qwen3-tts, seed: 4294967296}}",
        "spec.yaml:6:69: scenes[0].audio.tts.seed", "scene 'one': audio.tts.seed",
        "4294967296 is not a seed", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_spec_and_stage_report_the_same_rule(project, monkeypatch, case):
    stage, valid, bad, body, spec_at, stage_at, rule, fix = CASES[case]
    monkeypatch.chdir(project)
    at, message, hint = spec_problem(project, body)
    assert at == spec_at
    stage_message, stage_hint = stage_problem(stage, {**valid, **bad})
    assert stage_message == f"{stage_at}: {rule}"
    if case == "tts_seed":
        # a spec may write -1 (draw a seed); a stage runs with a drawn one
        assert (message, hint) == (rule, "use 0..4294967295, or -1 to draw one")
        assert stage_hint == "use 0..4294967295"
    else:
        assert (message, hint) == (rule, fix)
        assert stage_hint == fix


# a valid value of the same field: (spec body, stage params)
GOOD = {
    "video_frames": ("image: {prompt: cat}\nvideo: {prompt: walk, frames: 13}", {"frames": 13}),
    "video_size": ("image: {prompt: cat, width: 48}\nvideo: {prompt: walk}", {"width": 48}),
    "video_scheduler": ("image: {prompt: cat}\nvideo: {prompt: walk, scheduler: euler}", {"scheduler": "euler"}),
    "video_boundary": ("image: {prompt: cat}\nvideo: {prompt: walk, boundary: 1.0}", {"boundary": 1.0}),
    "video_attention": ("image: {prompt: cat}\nvideo: {prompt: walk, attention: sageattn}",
                        {"attention": "sageattn"}),
    "video_quantize": ("image: {prompt: cat}\nvideo: {prompt: walk, quantize: fp8_e4m3fn}",
                       {"quantize": "fp8_e4m3fn"}),
    "video_block_swap": ("image: {prompt: cat}\nvideo: {prompt: walk, block_swap: 40}", {"block_swap": 40}),
    "lipsync_block_swap": ("lipsync: {avatar: a.png, audio: a.wav, block_swap: 20}", {"block_swap": 20}),
    "image_width": ("image: {prompt: cat, width: 80}", {"width": 80}),
    "image_guidance": ("image: {prompt: cat, guidance: 30.0}", {"guidance": 30.0}),
    "image_lora_weight": ("image: {prompt: cat, loras: [{name: tiny/style, weight: -4.0}]}",
                          {"loras": [{"name": "tiny/style", "weight": -4.0, "file": None}]}),
    "lipsync_infer_frames": ("lipsync: {avatar: a.png, audio: a.wav, infer_frames: 4}", {"infer_frames": 4}),
    "lipsync_shift": ("lipsync: {avatar: a.png, audio: a.wav, shift: 0.5}", {"shift": 0.5}),
    "animate_frame_window": ("animate: {reference_video: d.mp4, character: c.png, frame_window: 21}",
                             {"frame_window": 21}),
    "animate_prev_frames": ("animate: {reference_video: d.mp4, character: c.png, frame_window: 9, prev_frames: 5}",
                            {"frame_window": 9, "prev_frames": 5}),
    "animate_attention": ("animate: {reference_video: d.mp4, character: c.png, attention: sageattn}",
                          {"attention": "sageattn"}),
    "animate_cache": ("animate: {reference_video: d.mp4, character: c.png, cache: {threshold: 2.0}}",
                      {"cache": {"kind": "teacache", "threshold": 2.0}}),
    "animate_prep_max_frames": ("animate: {reference_video: d.mp4, character: c.png, max_frames: 9}",
                                {"max_frames": 9}),
    "animate_prep_backend": ("animate: {reference_video: d.mp4, character: c.png, preprocess: {backend: mediapipe}}",
                             {"backend": "mediapipe"}),
    "extract_audio_range": ("image: {prompt: cat}\naudio: {extract: {source: clip.mp4, start: 1.0, end: 2.0}}",
                            {"start": 1.0, "end": 2.0}),
    "extract_audio_start": ("image: {prompt: cat}\naudio: {extract: {source: clip.mp4, start: 0}}", {"start": 0}),
    "extract_frame_at": ("image: {prompt: cat}\nvideo: {prompt: walk, image: {frame: {source: clip.mp4, at: last}}}",
                         {"at": "last"}),
    "separate_stem": ("image: {prompt: cat}\naudio: {separate: {source: song.wav, stem: accompaniment}}",
                      {"stem": "accompaniment"}),
    "tts_backend": ("image: {prompt: cat}\naudio: {tts: {text: hi, language: en, backend: qwen3-tts}}",
                    {"backend": "qwen3-tts"}),
    "tts_seed": ("image: {prompt: cat}\naudio: {tts: {text: hi, language: en, backend: qwen3-tts, seed: 4294967295}}",
                 {"backend": "qwen3-tts", "seed": 2**32 - 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_valid_values_pass_both(project, monkeypatch, case):
    stage, valid = CASES[case][:2]
    body, over = GOOD[case]
    monkeypatch.chdir(project)
    (project / "spec.yaml").write_text(HEAD + textwrap.indent(body, "    ") + "\n")
    assert load_spec(Path("spec.yaml"), check_files=False).spec.scenes[0].id == "one"
    checked = stage.check_params({**valid, **over})
    for key, value in over.items():
        if key != "cache":
            assert checked[key] == value
    if "cache" in over:
        assert checked["cache"] == {"kind": "teacache", "threshold": 2.0, "start_step": 1, "coefficients": True}


def test_validate_command_exits_2_with_the_rule(project, monkeypatch):
    monkeypatch.chdir(project)
    (project / "spec.yaml").write_text(HEAD + "    image: {prompt: cat}\n    video: {prompt: walk, frames: 6}\n")
    result = CliRunner().invoke(app, ["validate", "spec.yaml"])
    assert result.exit_code == 2
    assert "spec.yaml:6:35: scenes[0].video.frames: 6 is not 4k+1 (try 5)" in result.output
    with pytest.raises(StageError) as err:
        video.check_params({**VIDEO, "frames": 6})
    assert (err.value.message, err.value.hint) == ("video: frames: 6 is not 4k+1", "try 5")


ASSEMBLE = {"fps": 16, "width": 64, "height": 64, "audio_rate": 48000, "scenes": [], "music": None,
            "loudness": None, "crf": 18}


@pytest.mark.parametrize("key, bad, good, spec_at, rule", [
    ("crf", 52, 51, "spec.yaml:6:30", "52: input should be less than or equal to 51"),
    ("loudness", -4.0, -5.0, "spec.yaml:6:35", "-4.0: input should be less than or equal to -5"),
])
def test_assemble_reports_the_spec_rule(project, monkeypatch, key, bad, good, spec_at, rule):
    monkeypatch.chdir(project)
    spec = HEAD + "    image: {prompt: cat}\nassemble: {name: final, %s: %s}\n"
    (project / "spec.yaml").write_text(spec % (key, bad))
    with pytest.raises(SpecError) as err:
        load_spec(Path("spec.yaml"), check_files=False)
    (p,) = err.value.problems
    assert (f"{p.where}: {p.path}", p.message, p.hint) == (f"{spec_at}: assemble[0].{key}", rule, None)
    assert stage_problem(assemble, {**ASSEMBLE, key: bad}) == (f"assemble: {key}: {rule}", None)
    (project / "spec.yaml").write_text(spec % (key, good))
    assert getattr(load_spec(Path("spec.yaml"), check_files=False).spec.assemble[0], key) == good
    assert assemble.check_params({**ASSEMBLE, key: good})[key] == good


def test_assemble_music_and_size_rules():
    assert stage_problem(assemble, {**ASSEMBLE, "music": {"input": "music", "gain_db": 13.0}}) == (
        "assemble: music.gain_db: 13.0: input should be less than or equal to 12", None)
    assert stage_problem(assemble, {**ASSEMBLE, "width": 33}) == (
        "assemble: width: 33 is not even", "H.264 needs even sides: try 34")
    assert assemble.check_params({**ASSEMBLE, "crf": None, "audio_rate": None}) == {
        "width": 64, "height": 64, "audio_rate": 48000, "crf": 18, "loudness": None, "music": None}


def test_resolution_and_sizes_share_the_multiple_of_16_rule(project, monkeypatch):
    """A spec writes a size as ``resolution: WxH``, a stage gets ``width``/``height``: the same
    rule, with the same fix."""
    monkeypatch.chdir(project)
    at, message, hint = spec_problem(project, "resolution: 40x64\nimage: {prompt: cat}")
    assert (at, message, hint) == ("spec.yaml:5:17: scenes[0].resolution", "'40x64' is not a multiple of 16 on each "
                                   "side", "try 32x64")
    assert stage_problem(video, {**VIDEO, "width": 40}) == ("video: width: 40 is not a multiple of 16", "try 32")
    assert stage_problem(lipsync, {**LIPSYNC, "height": 20}) == ("lipsync: height: 20 is not a multiple of 16",
                                                                 "try 16")


def test_stage_values_are_checked_strictly():
    """Stage params are JSON values: no string or boolean stands in for a number."""
    assert stage_problem(video, {**VIDEO, "steps": "4"}) == ("video: steps: '4': input should be a valid integer",
                                                             None)
    assert stage_problem(image, {**IMAGE, "seed": True}) == ("image: seed: True: input should be a valid integer",
                                                             None)
    assert stage_problem(video, {k: v for k, v in VIDEO.items() if k != "boundary"}) == (
        "video: missing required key 'boundary'", "add 'boundary:'")


def test_check_params_returns_what_the_run_uses():
    p = video.check_params({**VIDEO, "guidance_2": None, "negative_prompt": "", "segment": 1, "segments": 2,
                            "attention": "sdpa", "cache": {"kind": "teacache", "threshold": 0.2, "start_step": 1,
                                                           "coefficients": True}})
    assert p == {"prompt": "walk", "negative_prompt": None, "frames": 9, "steps": 4, "guidance": 5.0,
                 "guidance_2": 5.0, "shift": 5.0, "boundary": 0.9, "scheduler": "unipc",
                 "cache": {"kind": "teacache", "threshold": 0.2, "start_step": 1, "coefficients": True},
                 "width": 64, "height": 64, "fps": 16, "seed": 7, "loras": VIDEO["loras"], "two_pass": None, "lora_fuse": "auto",
                 "attention": "sdpa", "compile": "auto", "quantize": None, "block_swap": 0}
    assert image.check_params(IMAGE) == {**IMAGE, "model": "distilled", "inpaint": None}   # the role when unset
    crop = {"size": 1024, "padding": 32, "context": 1.2, "expand": 10, "blend": 64, "fill_holes": True,
            "hipass": 0.1, "strength": 1.0, "reference_megapixels": 1.0}
    assert image.check_params({**IMAGE, "inpaint": crop})["inpaint"] == crop
    assert stage_problem(image, {**IMAGE, "inpaint": {**crop, "blend": 65}}) == (
        "image: inpaint.blend: 65: input should be less than or equal to 64", None)
    assert stage_problem(image, {**IMAGE, "width": None, "height": None, "inpaint": crop})[0] == (
        "image: a masked edit runs at its crop's size: give width and height")
    assert detect.check_params({"text": "shirt", "threshold": 0.3, "other": 1}) == {"text": "shirt", "threshold": 0.3}
    assert stage_problem(detect, {"text": "", "threshold": 0.3})[0].startswith("detect: text: ")
    assert segment.check_params({}) == {}
    assert lipsync.check_params({**LIPSYNC, "compile": "off"}) == {**LIPSYNC, "compile": "off"}
    a = animate.check_params({**ANIMATE, "steps": None, "cache": {"kind": "none"}})
    assert (a["steps"], a["cache"]) == (20, None)
    assert upscale.check_params({}) == {"scale": 2, "tile": 512, "tile_pad": 10}
    assert extract_frame.check_params({"at": 2}) == {"at": 2.0}
    assert separate.check_params({"stem": "accompaniment"}) == {"stem": "accompaniment", "overlap": 0.25}
    assert subtitles.check_params(SUBTITLES) == {"fps": 16, "lines": SUBTITLES["lines"]}
    assert tts.check_params(TTS) == TTS


def test_prescaled_fp8_is_refused_by_the_spec_and_falls_back_in_a_run(project, monkeypatch):
    """A run replaces pre-scaled fp8 by fp8_e4m3fn with a warning (the bf16 model has no scales); a
    spec may not ask for it, and says why."""
    monkeypatch.chdir(project)
    assert spec_problem(project, "animate: {reference_video: d.mp4, character: c.png, quantize: fp8_e4m3fn_scaled}") \
        == ("spec.yaml:5:67: scenes[0].animate.quantize",
            "fp8_e4m3fn_scaled needs pre-scaled weights, which the bf16 model does not have", "use fp8_e4m3fn")
    assert animate.check_params({**ANIMATE, "quantize": "fp8_e4m3fn_scaled"})["quantize"] == "fp8_e4m3fn_scaled"
    assert stage_problem(animate, {**ANIMATE, "quantize": "int4"}) == (
        "animate: quantize: 'int4': input should be 'fp8_e4m3fn' or 'fp8_e4m3fn_scaled'", None)


def test_stage_only_rules_name_the_stage():
    """Rules of values the planner sets (not written in a spec) read the same way."""
    assert stage_problem(upscale, {"scale": 2, "tile": -1, "tile_pad": 0}) == (
        "upscale: tile: -1: input should be greater than or equal to 0", None)
    assert stage_problem(animate_prep, {**PREP, "width": 255}) == (
        "animate_prep: width: 255 is not even", "H.264 needs even sides: try 256")
    assert stage_problem(animate_prep, {**PREP, "mask_grid": [0, 1]}) == (
        "animate_prep: mask_grid[0]: 0: input should be greater than or equal to 1", None)
    assert stage_problem(separate, {"stem": "vocals", "overlap": 0.95}) == (
        "separate: overlap: 0.95: input should be less than or equal to 0.9", None)
    assert stage_problem(subtitles, {**SUBTITLES, "fps": 0}) == (
        "subtitles: fps: 0: input should be greater than or equal to 1", None)
    assert stage_problem(tts, {**TTS, "text": "  "}) == ("scene 'one': audio.tts.text: the text is empty",
                                                         "write the line to speak")


def test_runtime_settings_use_the_same_rules():
    """The runtime's settings objects check through the stage kinds' models: the same words."""
    from cinesynth_batch.runtime.accel import SpeedSettings
    from cinesynth_batch.runtime.animate import RuntimeSettings
    from cinesynth_batch.runtime.attention import BACKENDS, NAMES

    with pytest.raises(StageError) as err:
        RuntimeSettings(block_swap=41)
    assert err.value.message == "animate: block_swap: 41: input should be less than or equal to 40"
    assert stage_problem(animate, {**ANIMATE, "block_swap": 41})[0] == err.value.message
    with pytest.raises(StageError) as err:
        SpeedSettings(attention="xformers")
    assert err.value.message.replace("speed: ", "video: ") == stage_problem(video, {**VIDEO, "attention": "xformers"})[0]
    assert set(NAMES) == {"auto", *BACKENDS}
