"""Subtitles: an SRT file for one assembly, from the TTS text of its scenes.

params: ``fps``, ``audio_rate``, ``scenes`` (as for ``assemble``: the scene list decides where
each scene starts in the final video), ``lines: [{"scene", "audio", "text"}]`` (``audio`` names
the input holding that scene's TTS speech). inputs: the same as the assembly's.

Each line's cues run over the speech span of its audio (leading and trailing silence trimmed,
see ``media/subtitles.py``) from the scene's start, cut at the scene's end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import StageContext, StageError

KIND = "subtitles"
OUTPUT_EXT = ".srt"
MODEL_ROLE = None


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext | None = None) -> dict:
    from ..media.subtitles import line_cues, speech_span, to_srt
    from .assemble import scene_layout
    from .params import one_path

    layout = {sid: (start, end) for sid, start, end in scene_layout(params, inputs)}
    cues = []
    for line in params.get("lines") or []:
        sid = line["scene"]
        if sid not in layout:
            raise StageError(f"subtitles: scene {sid!r} is not in the assembly")
        audio = one_path(f"subtitles: scene {sid!r}", inputs, line["audio"], required=True)
        try:
            span = speech_span(audio)
        except Exception as exc:  # PyAV raises several error types for bad files
            raise StageError(f"subtitles: scene {sid!r}: cannot read its speech {audio.name}: {exc}") from exc
        start, end = layout[sid]
        cues += line_cues(line["text"], start + span[0], start + span[1], limit=end)
    out.write_text(to_srt(cues), encoding="utf-8")
    return {"cues": len(cues), "lines": len(params.get("lines") or [])}
