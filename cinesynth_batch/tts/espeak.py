"""eSpeak NG through ctypes: the library and its data come from the ``espeakng-loader`` wheel.

``synthesize(text, language, voice)`` returns mono int16 samples and the sample rate (22050 Hz).
libespeak-ng keeps state between utterances inside a process (the same text spoken twice gives
slightly different samples), so the stage calls ``speak_to_file``, which speaks in a fresh child
process (``python -m cinesynth_batch.tts.espeak``, JSON on stdin and stdout): the same request
always gives the same bytes.
Languages are eSpeak's own codes (``en``, ``ko``, ``cmn``, ``ja``, ...) plus a few common aliases
(``zh`` -> ``cmn``); ``voices()`` lists them. ``voice`` is an eSpeak variant (``f1``..``f5``,
``m1``..``m7``, ``croak``, ``whisper``, ...) laid over the language's voice.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# espeak_AUDIO_OUTPUT, espeak_POSITION_TYPE, flags and parameters (speak_lib.h).
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE = 1
EE_OK = 0
ALIASES = {"zh": "cmn", "zh-cn": "cmn", "zh-hans": "cmn", "mandarin": "cmn", "zh-tw": "cmn",
           "zh-yue": "yue", "cantonese": "yue", "kr": "ko", "jp": "ja"}
COMMON = ("ko", "en", "en-us", "cmn", "ja", "de", "fr", "es", "it", "pt", "ru")


class EspeakError(Exception):
    """A request eSpeak cannot honour; ``field`` names the request key at fault."""

    def __init__(self, message: str, field: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.hint = hint


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p),
                ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte),
                ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int),
                ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray     # int16, mono
    rate: int


def _library():
    try:
        import espeakng_loader
    except ImportError as exc:
        raise EspeakError("the espeak backend needs the espeakng-loader package", "backend",
                          hint="pip install espeakng-loader (it is in the render extras)") from exc
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                 espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise EspeakError(f"libespeak-ng did not initialise (code {rate})", "backend")
    return lib, rate


def _languages(voice: _Voice) -> list[str]:
    """A voice's language list: (priority byte, NUL-terminated name) pairs, ended by a 0 byte."""
    out, ptr = [], voice.languages
    while ptr and ctypes.string_at(ptr, 1) != b"\0":
        name = ctypes.string_at(ptr + 1)
        out.append(name.decode())
        ptr += 2 + len(name)
    return out


def _voice_table(lib) -> dict[str, str]:
    """language code -> voice identifier, for every voice the data ships (variants excluded)."""
    table: dict[str, str] = {}
    voices = lib.espeak_ListVoices(None)
    i = 0
    while voices[i]:
        v = voices[i].contents
        ident = v.identifier.decode()
        if not ident.startswith("!v"):
            for lang in _languages(v):
                table.setdefault(lang.lower(), ident)
        i += 1
    return table


def voices() -> list[str]:
    """Every language code eSpeak speaks here, sorted."""
    lib, _ = _library()
    try:
        return sorted(_voice_table(lib))
    finally:
        lib.espeak_Terminate()


def resolve_language(table: dict[str, str], language: str) -> str:
    code = language.strip().lower().replace("_", "-")
    code = ALIASES.get(code, code)
    if code in table:
        return code
    known = [c for c in COMMON if c in table] + sorted(c for c in table if c not in COMMON)
    raise EspeakError(f"language {language!r} is not one eSpeak NG speaks", "language",
                      hint=f"use one of {', '.join(known[:24])}, ... ({len(table)} in all)")


def synthesize(text: str, language: str, voice: str | None = None, rate_wpm: int | None = None) -> Speech:
    if not text or not text.strip():
        raise EspeakError("text is empty", "text", hint="write the line to speak")
    lib, rate = _library()
    chunks: list[np.ndarray] = []

    def collect(wav, n, events):   # called by espeak_Synth on this thread
        if n > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    callback = _CALLBACK(collect)
    try:
        code = resolve_language(_voice_table(lib), language)
        if voice and voice not in variants():
            raise EspeakError(f"voice {voice!r} is not an eSpeak NG variant", "voice",
                              hint=f"use one of {', '.join(variants()[:12])}, ... or leave it out")
        name = code if not voice else f"{code}+{voice}"
        if lib.espeak_SetVoiceByName(name.encode()) != EE_OK:
            raise EspeakError(f"eSpeak NG cannot load the voice for {language!r}", "language")
        if rate_wpm:
            lib.espeak_SetParameter(PARAM_RATE, int(rate_wpm), 0)
        lib.espeak_SetSynthCallback(callback)
        data = text.encode("utf-8")
        err = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if err != EE_OK:
            raise EspeakError(f"eSpeak NG failed to speak (code {err})", "text")
    finally:
        lib.espeak_Terminate()
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if not np.any(samples):
        raise EspeakError("eSpeak NG produced no sound for this text", "text",
                          hint="check that the text is written in the language given")
    return Speech(samples.astype(np.int16), rate)


def variants() -> list[str]:
    """The voice variants the data ships (``voices/!v``): f1..f5, m1..m7, croak, ..."""
    import espeakng_loader

    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted((p.name for p in folder.iterdir() if p.is_file()),
                  key=lambda n: (not n[:1] in "fm" or not n[1:].isdigit(), n))


def speak_to_file(text: str, language: str, voice: str | None, out: Path) -> dict:
    """Speak in a fresh process and write a mono 16-bit WAV to ``out``; raises EspeakError."""
    import json
    import subprocess
    import sys

    request = json.dumps({"text": text, "language": language, "voice": voice, "out": str(out)})
    proc = subprocess.run([sys.executable, "-m", "cinesynth_batch.tts.espeak"], input=request,
                          capture_output=True, text=True, encoding="utf-8")
    try:
        reply = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EspeakError(f"the espeak process failed: {proc.stderr.strip()[-800:]}", "backend") from None
    if not reply.get("ok"):
        raise EspeakError(reply["error"], reply["field"], reply.get("hint"))
    return reply


def _child() -> None:
    import json
    import sys
    import wave

    req = json.loads(sys.stdin.read())
    try:
        speech = synthesize(req["text"], req["language"], req.get("voice"))
    except EspeakError as exc:
        print(json.dumps({"ok": False, "error": exc.message, "field": exc.field, "hint": exc.hint}))
        return
    with wave.open(req["out"], "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(speech.rate)
        w.writeframes(speech.samples.tobytes())
    print(json.dumps({"ok": True, "rate": speech.rate, "samples": int(len(speech.samples))}))


if __name__ == "__main__":
    _child()
