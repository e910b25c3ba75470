"""The qwen3-tts worker: runs in the tts environment (``make tts-env``), never in the main one.

Started as ``python qwen_worker.py MODEL_DIR --device cpu --dtype float32``; it imports nothing
from this project (only the standard library, torch, soundfile and qwen_tts). The protocol is
JSON lines (one object per line, UTF-8), documented in docs/tts-worker.md:

* worker -> stage, once loaded: ``{"ready": true, "speakers": [...], "languages": [...],
  "sample_rate": 24000, "versions": {...}}`` (or ``{"ready": false, "error": "..."}`` and exit 3);
* stage -> worker, per line: ``{"text", "language", "speaker", "instruct", "seed", "out"}``;
* worker -> stage: ``{"ok": true, "out", "sample_rate", "seconds"}`` after writing ``out`` (mono
  16-bit PCM WAV), or ``{"ok": false, "field": "language", "error": "...", "hint": "..."}``.

The worker exits when its stdin closes. Nothing but protocol lines goes to stdout.

**torchaudio.** qwen-tts imports ``torchaudio.compliance.kaldi`` at package import, for one
function: ``kaldi.fbank``, the filterbank features of the 25 Hz (V1) speech tokenizer's x-vector
encoder (``core/tokenizer_25hz/vq/speech_vq.py``). The 12 Hz models (``Qwen3-TTS-12Hz-*``) never
call it. PyPI's torchaudio builds are CUDA builds that fail to import next to the CPU torch, so
the worker registers a stand-in module whose ``fbank`` raises: a 25 Hz model fails with a clear
message instead of the whole package failing to import.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import types

LANGUAGE_NAMES = {"zh": "chinese", "cmn": "chinese", "zh-cn": "chinese", "en": "english", "ja": "japanese",
                  "ko": "korean", "de": "german", "fr": "french", "ru": "russian", "pt": "portuguese",
                  "es": "spanish", "it": "italian", "auto": "auto"}


def install_torchaudio_stand_in() -> None:
    def fbank(*args, **kwargs):
        raise RuntimeError("torchaudio.compliance.kaldi.fbank is only used by the Qwen3-TTS 25 Hz "
                           "speech tokenizer, which this worker does not support: use a "
                           "Qwen3-TTS-12Hz-* model")

    root = types.ModuleType("torchaudio")
    compliance = types.ModuleType("torchaudio.compliance")
    kaldi = types.ModuleType("torchaudio.compliance.kaldi")
    for mod in (root, compliance, kaldi):
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    kaldi.fbank = fbank
    root.compliance, compliance.kaldi = compliance, kaldi
    root.__version__ = "0+stand-in"
    sys.modules.update({"torchaudio": root, "torchaudio.compliance": compliance,
                        "torchaudio.compliance.kaldi": kaldi})


def _protocol_stream():
    """The real stdout, kept for protocol lines; fd 1 then points at stderr, so whatever the
    libraries print (qwen-tts prints notices) cannot corrupt the protocol."""
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stream


def _sender(stream):
    def send(obj: dict) -> None:
        stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
        stream.flush()

    return send


def _language(name: str, supported: list[str]) -> str:
    key = LANGUAGE_NAMES.get(name.strip().lower(), name.strip().lower())
    if key == "auto" or key in supported:
        return key
    raise LookupError(key)


def serve(model_dir: str, device: str, dtype: str) -> int:
    send = _sender(_protocol_stream())
    install_torchaudio_stand_in()
    try:
        import numpy as np
        import soundfile as sf
        import torch
        import transformers
        from qwen_tts import Qwen3TTSModel

        transformers.logging.set_verbosity_error()
        tts = Qwen3TTSModel.from_pretrained(model_dir, device_map=device, dtype=getattr(torch, dtype))
        speakers = sorted(tts.get_supported_speakers() or [])
        languages = sorted(tts.get_supported_languages() or [])
        sample_rate = int(tts.model.speech_tokenizer.get_output_sample_rate())
    except Exception as exc:  # the stage shows this to the user
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 3
    import qwen_tts

    send({"ready": True, "speakers": speakers, "languages": languages, "sample_rate": sample_rate,
           "versions": {"qwen_tts": getattr(qwen_tts, "__version__", None) or _dist("qwen-tts"),
                        "transformers": transformers.__version__, "torch": torch.__version__}})
    for raw in sys.stdin:
        if not raw.strip():
            continue
        try:
            req = json.loads(raw)
            text, out = req["text"], req["out"]
        except (ValueError, KeyError, TypeError) as exc:
            send({"ok": False, "field": "request", "error": f"bad request: {exc}"})
            continue
        if not isinstance(text, str) or not text.strip():
            send({"ok": False, "field": "text", "error": "the text is empty", "hint": "write the line to speak"})
            continue
        try:
            language = _language(str(req.get("language") or "auto"), languages)
        except LookupError:
            send({"ok": False, "field": "language",
                   "error": f"language {req.get('language')!r} is not one this Qwen3-TTS model speaks",
                   "hint": "use one of " + ", ".join(sorted(set(LANGUAGE_NAMES) - {"cmn", "zh-cn"}))})
            continue
        speaker = req.get("speaker") or (speakers[0] if speakers else None)
        if speakers and str(speaker).lower() not in speakers:
            send({"ok": False, "field": "voice", "error": f"speaker {speaker!r} is not one of this model's",
                   "hint": "use one of " + ", ".join(speakers)})
            continue
        try:
            torch.manual_seed(int(req.get("seed") or 0))
            wavs, rate = tts.generate_custom_voice(text=text, language=language, speaker=speaker,
                                                   instruct=req.get("instruct") or None)
            wav = np.clip(np.asarray(wavs[0], dtype=np.float32), -1.0, 1.0)
            sf.write(out, wav, int(rate), subtype="PCM_16", format="WAV")
        except Exception as exc:
            send({"ok": False, "field": "text", "error": f"qwen-tts failed: {type(exc).__name__}: {exc}"})
            continue
        send({"ok": True, "out": out, "sample_rate": int(rate), "seconds": round(len(wav) / rate, 6)})
    return 0


def _dist(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Qwen3-TTS worker (JSON lines on stdin/stdout)")
    ap.add_argument("model_dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--build-tiny", action="store_true", help="write the tiny random model to model_dir")
    args = ap.parse_args(argv)
    if args.build_tiny:
        install_torchaudio_stand_in()
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from qwen_tiny import build

        from pathlib import Path

        build(Path(args.model_dir))
        return 0
    return serve(args.model_dir, args.device, args.dtype)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
