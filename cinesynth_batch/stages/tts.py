"""Text to speech: one line of text becomes a mono 16-bit WAV.

params: ``text``, ``language``, ``backend`` (``espeak`` | ``qwen3-tts``), ``voice``, ``instruct``,
``engine`` (espeak: the wheel that fixes its sound) or ``seed`` (qwen3-tts samples). runtime (not
keyed): ``scene_id`` and ``field`` (where the line is in the spec, for error messages).

``espeak`` runs libespeak-ng in a fresh child process (22050 Hz; see ``tts/espeak.py``). ``qwen3-tts`` sends the request to the
worker the profile's ``tts`` model runs in (see ``tts/qwen_client.py`` and docs/tts-worker.md),
which writes the WAV itself (24000 Hz).
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

from ..spec.params import TtsParams, check
from .base import StageContext, StageError

KIND = "tts"
OUTPUT_EXT = ".wav"
MODEL_ROLE = None   # espeak needs no model; a qwen3-tts node names the "tts" role itself


def _where(p: dict[str, Any]) -> str:
    return f"scene {p.get('scene_id', '?')!r}: {p.get('field', 'tts')}"


def _fail(p: dict[str, Any], key: str, message: str, hint: str | None = None) -> StageError:
    return StageError(f"{_where(p)}.{key}: {message}", hint=hint)


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``; an empty text is refused here, not by the spec);
    the run reads them as given."""
    text = params.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _fail(params, "text", "the text is empty", hint="write the line to speak")
    check(TtsParams, params, _where(params), sep=".")
    return dict(params)


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    from ..media.subtitles import speech_span

    p = check_params(params)
    text = p["text"]
    if p["backend"] == "espeak":
        from ..tts.espeak import EspeakError, speak_to_file

        try:
            speak_to_file(text, p["language"], p.get("voice"), out)
        except EspeakError as exc:
            raise _fail(p, exc.field, exc.message, exc.hint) from exc
    else:
        from ..tts.qwen_client import WorkerRequestError

        worker = ctx.models.get("tts")
        try:
            worker.speak({"text": text, "language": p["language"], "speaker": p.get("voice"),
                          "instruct": p.get("instruct"), "seed": p["seed"], "out": str(out)})
        except WorkerRequestError as exc:
            raise _fail(p, exc.field, exc.message, exc.hint) from exc
    with wave.open(str(out), "rb") as w:
        rate, frames = w.getframerate(), w.getnframes()
    start, end = speech_span(out)
    return {"backend": p["backend"], "language": p["language"], "sample_rate": rate,
            "seconds": round(frames / rate, 6), "speech_start": round(start, 6), "speech_end": round(end, 6)}
