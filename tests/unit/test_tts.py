"""TTS pieces on their own: espeak through ctypes, subtitle timing and SRT text, the spec and plan
of tts/subtitles nodes, and the qwen3-tts worker protocol."""

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cinesynth_batch.errors import SpecError
from cinesynth_batch.execute.session import Session
from cinesynth_batch.media.subtitles import Cue, line_cues, parse_srt, sentences, span_of, timestamp, to_srt
from cinesynth_batch.tts import espeak

EXAMPLES = Path(__file__).resolve().parents[2] / "specs" / "examples"


# --- espeak -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,language", [("안녕하세요, 오늘의 뉴스입니다.", "ko"),
                                           ("Good evening, here is the news.", "en"),
                                           ("明天北京晴天。", "cmn")])
def test_espeak_speaks_korean_english_and_mandarin(text, language):
    speech = espeak.synthesize(text, language)
    assert speech.rate == 22050 and speech.samples.dtype == np.int16
    seconds = len(speech.samples) / speech.rate
    assert 0.8 < seconds < 4.0
    start, end = span_of(speech.samples.astype(np.float32) / 32768, speech.rate)
    assert end - start > 0.6                                  # sound, not a click


def test_speaking_in_a_child_process_gives_the_same_bytes_every_time(tmp_path):
    # in one process libespeak-ng carries state from one utterance to the next
    outs = []
    for i in range(3):
        espeak.speak_to_file("明天北京晴天。", "zh", None, tmp_path / f"{i}.wav")
        outs.append((tmp_path / f"{i}.wav").read_bytes())
    assert outs[0] == outs[1] == outs[2] and len(outs[0]) > 22050
    with pytest.raises(espeak.EspeakError) as exc:
        espeak.speak_to_file("hi", "xx", None, tmp_path / "x.wav")
    assert exc.value.field == "language" and not (tmp_path / "x.wav").exists()


def test_zh_is_mandarin_and_voices_differ(tmp_path):
    espeak.speak_to_file("你好", "zh", None, tmp_path / "zh.wav")
    espeak.speak_to_file("你好", "cmn", None, tmp_path / "cmn.wav")
    assert (tmp_path / "zh.wav").read_bytes() == (tmp_path / "cmn.wav").read_bytes()
    plain = espeak.synthesize("hello there", "en").samples
    f3 = espeak.synthesize("hello there", "en", voice="f3").samples
    assert len(plain) != len(f3) or not np.array_equal(plain, f3)
    assert {"ko", "en", "cmn", "ja", "de"} <= set(espeak.voices()) and len(espeak.voices()) > 100


@pytest.mark.parametrize("kwargs,field,words", [
    ({"text": "hi", "language": "xx"}, "language", ["'xx'", "ko, en, en-us, cmn"]),
    ({"text": "  ", "language": "en"}, "text", ["empty"]),
    ({"text": "hi", "language": "en", "voice": "zz9"}, "voice", ["'zz9'", "f1"]),
])
def test_espeak_refuses_bad_requests_naming_the_field(kwargs, field, words):
    with pytest.raises(espeak.EspeakError) as exc:
        espeak.synthesize(**kwargs)
    assert exc.value.field == field
    text = exc.value.message + " " + (exc.value.hint or "")
    assert all(w in text for w in words), text


# --- subtitles --------------------------------------------------------------------------------

def test_sentences_split_on_latin_and_cjk_punctuation():
    assert sentences("Good evening. Here is the news!") == ["Good evening.", "Here is the news!"]
    assert sentences("明天晴天。后天下雨。") == ["明天晴天。", "后天下雨。"]
    assert sentences("안녕하세요. 뉴스입니다") == ["안녕하세요.", "뉴스입니다"]
    assert sentences("3.5 percent") == ["3.5 percent"]


def test_cues_share_the_span_by_length_and_stop_at_the_scene_end():
    cues = line_cues("Aa. Bbb.", 1.0, 3.0)
    assert [(round(c.start, 6), round(c.end, 6), c.text) for c in cues] == [(1.0, round(1 + 2 * 3 / 7, 6), "Aa."),
                                                                     (round(1 + 2 * 3 / 7, 6), 3.0, "Bbb.")]
    assert line_cues("Aa. Bbb.", 1.0, 3.0, limit=2.0)[-1].end == 2.0
    assert line_cues("", 0.0, 1.0) == []


def test_srt_text_and_timestamps_round_trip():
    cues = [Cue(0.0, 1.2345, "one"), Cue(3661.5, 3662.0, "두 번째")]
    text = to_srt(cues)
    assert text.startswith("1\n00:00:00,000 --> 00:00:01,234\none\n\n2\n01:01:01,500 --> 01:01:02,000\n")
    assert [(c.start, c.end, c.text) for c in parse_srt(text)] == [(0.0, 1.234, "one"), (3661.5, 3662.0, "두 번째")]
    assert timestamp(59.9996) == "00:01:00,000"


def test_speech_span_trims_leading_and_trailing_silence_only():
    rate = 16000
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 220 * t)
    gap = np.zeros(rate // 4)
    wave = np.concatenate([np.zeros(int(0.3 * rate)), tone, gap, tone, np.zeros(int(0.2 * rate))])
    start, end = span_of(wave, rate)
    assert abs(start - 0.3) <= 0.01 and abs(end - 2.55) <= 0.01
    assert span_of(np.zeros(rate), rate) == (0.0, 0.0)


# --- spec and plan ----------------------------------------------------------------------------

SPEC = """
project: p
defaults: {resolution: 64x64, seed: 5}
scenes:
  - id: a
    lipsync:
      avatar: assets/avatar.png
      audio: {tts: {text: "Hello there.", language: en}}
  - id: b
    image: {prompt: cat}
    audio: {tts: {text: "Bonjour.", language: fr, backend: qwen3-tts, voice: serena, instruct: warm}}
  - id: c
    image: {prompt: dog}
    audio: assets/line1.wav
assemble: {subtitles: SUBS}
"""


def plan_of(project: Path, subs: str = "srt", text: str = SPEC):
    shutil.copytree(EXAMPLES / "assets", project / "assets", dirs_exist_ok=True)
    (project / "spec.yaml").write_text(textwrap.dedent(text).replace("SUBS", subs))
    return Session.open(project / "spec.yaml").plan()


def test_tts_nodes_feed_lipsync_assembly_and_subtitles(project):
    plan = plan_of(project)
    g = plan.graph
    assert {"a.tts", "b.tts", "assemble.final.srt"} <= set(g.nodes) and "c.tts" not in g.nodes
    assert g["a.lipsync"].inputs["audio"].node == "a.tts"
    assert g["a.tts"].model_role is None and g["a.tts"].params["engine"].startswith("espeakng-loader")
    assert g["b.tts"].model_role == "tts" and g["b.tts"].params["seed"] == 5
    assert g["b.tts"].runtime == {"scene_id": "b", "field": "audio.tts"}
    assert g["a.tts"].runtime["field"] == "lipsync.audio.tts"
    srt = g["assemble.final.srt"]
    assert [ln["text"] for ln in srt.params["lines"]] == ["Hello there.", "Bonjour."]
    assert srt.publish == "final.srt" and g["a.tts"].publish == "scenes/a.tts.wav"
    assert "subtitles" not in g["assemble.final"].inputs        # srt only: the video does not wait for it
    assert plan.order.index("a.tts") < plan.order.index("a.lipsync") < plan.order.index("assemble.final")


def test_burn_makes_the_assembly_read_the_srt_and_none_writes_none(project):
    burn = plan_of(project, "burn").graph
    assert burn["assemble.final"].inputs["subtitles"].node == "assemble.final.srt"
    none = plan_of(project, "none").graph
    assert "assemble.final.srt" not in none.nodes


def test_tts_key_follows_text_voice_and_backend_only(project):
    keys = {}
    for name, edit in [("base", ("", "")), ("text", ("Hello there.", "Hello you.")),
                       ("voice", ("language: en}", "language: en, voice: f2}")),
                       ("resolution", ("64x64", "128x128"))]:
        sub = project / name
        sub.mkdir()
        (sub / "cinesynth.toml").write_text("")
        keys[name] = plan_of(sub, text=SPEC.replace(*edit) if edit[0] else SPEC).stages["a.tts"].key
    assert keys["text"] != keys["base"] and keys["voice"] != keys["base"]
    assert keys["resolution"] == keys["base"]


def test_two_audio_sources_are_one_problem_with_its_position(project):
    bad = SPEC.replace('audio: {tts: {text: "Hello there.", language: en}}',
                       'audio: {file: assets/line1.wav, tts: {text: "x", language: en}}')
    with pytest.raises(SpecError) as exc:
        plan_of(project, text=bad)
    assert exc.value.render().endswith(
        "spec.yaml:8:14: scenes[0].lipsync.audio: give exactly one audio source, not file and tts "
        "(one of: file, tts, separate, extract)")


# --- the qwen3-tts worker -----------------------------------------------------------------------

@pytest.mark.slow
def test_worker_protocol_answers_errors_and_keeps_serving(tmp_path):
    from cinesynth_batch.errors import ModelError
    from cinesynth_batch.tts.qwen_client import QwenWorker, WorkerRequestError, ensure_tiny_qwen

    try:
        model = ensure_tiny_qwen(tmp_path / "qwen3-tts")
    except ModelError as exc:
        pytest.skip(f"{exc.message}: `make test` creates it (make tts-env)")
    worker = QwenWorker.start(model)
    try:
        assert worker.info["sample_rate"] == 24000 and "sohee" in worker.info["speakers"]
        assert worker.info["versions"]["transformers"] == "4.57.3"
        for req, field in [({"text": "", "language": "ko"}, "text"),
                           ({"text": "hi", "language": "ko", "speaker": "nobody"}, "voice"),
                           ({"text": "hi", "language": "tlh"}, "language")]:
            with pytest.raises(WorkerRequestError) as exc:
                worker.speak({**req, "seed": 1, "out": str(tmp_path / "x.wav")})
            assert exc.value.field == field
        outs = []
        for i in range(2):
            out = tmp_path / f"ok{i}.wav"
            reply = worker.speak({"text": "안녕하세요", "language": "ko", "speaker": "sohee", "seed": 4,
                                  "instruct": "happy", "out": str(out)})
            assert reply["ok"] and reply["seconds"] > 0.5
            outs.append(out.read_bytes())
        assert outs[0] == outs[1]                                 # same seed, same noise
    finally:
        worker.close()
    assert worker.proc.poll() is not None                        # stdin closed: the worker ended
