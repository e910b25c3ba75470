"""Subtitles: an SRT file for one assembly, from the TTS text of its scenes.

params: ``fps``, ``audio_rate``, ``scenes`` (as for ``assemble``: the scene list decides where
each scene starts in the final video), ``lines: [{"scene", "audio", "text"}]`` (``audio`` names
the input holding that scene's TTS speech). inputs: the scenes' sounds, and the visuals of the
scenes whose length is known only from their clip.

A scene's length comes from what decides it, so the subtitles read only that: a scene entry
with ``frames`` (a chained video, whose length its parameters fix) lasts that many frames; one
with ``speech_frames`` (a lip-sync) as long as its ``audio``, counted as the lip-sync cuts it; a
still without ``visual`` lasts its ``duration``, else its sound, else 2 s (as ``assemble``
counts it); any other scene is measured on its ``visual`` input as ``assemble`` does.

Each line's cues run over the speech span of its audio (leading and trailing silence trimmed,
see ``media/subtitles.py``) from the scene's start, cut at the scene's end.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

from .base import StageContext, StageError

KIND = "subtitles"
OUTPUT_EXT = ".srt"
MODEL_ROLE = None


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` (``spec/params.py``); returns ``fps`` and the ``lines`` to cue."""
    from ..spec.params import SubtitlesParams, check

    return check(SubtitlesParams, params, KIND).model_dump()


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext | None = None) -> dict:
    from ..media.subtitles import line_cues, speech_span, to_srt
    from .params import one_path

    lines = check_params(params)["lines"]
    layout = scene_times(params, inputs)
    cues = []
    for line in lines:
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
    return {"cues": len(cues), "lines": len(lines)}


def scene_times(params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Scene id -> (start, end) in seconds in the assembled video."""
    from ..media import transitions
    from .assemble import _fps_fraction

    fps = _fps_fraction(params.get("fps") or 16)
    out: dict[str, tuple[float, float]] = {}
    start = 0
    for i, entry in enumerate(params.get("scenes") or []):
        sid = str(entry["id"])
        frames = scene_frames(params, entry, inputs, fps)
        try:
            overlap = transitions.overlap_frames(entry.get("transition"), fps) if i else 0
        except ValueError as exc:
            raise StageError(f"subtitles: scene {sid!r}: {exc}") from exc
        first = start - overlap
        start = first + frames
        out[sid] = (float(first / fps), float(start / fps))
    return out


def scene_frames(params: dict[str, Any], entry: dict[str, Any], inputs: dict[str, Any], fps: Fraction) -> int:
    """How many frames one scene lasts in the assembly."""
    from ..media.audio import probe_audio
    from .assemble import _still_frames, scene_layout

    sid = str(entry["id"])
    if entry.get("frames") is not None:
        return int(entry["frames"])
    if entry.get("speech_frames"):
        return _lipsync_frames(inputs, entry, fps)
    if entry.get("visual") is None:
        info = None
        if entry.get("audio") is not None:
            try:
                info = probe_audio(Path(inputs[entry["audio"]]))
            except Exception as exc:  # PyAV raises several error types for bad files
                if not entry.get("audio_optional"):
                    raise StageError(f"subtitles: scene {sid!r}: cannot read its audio: {exc}") from exc
        return _still_frames(entry.get("duration"), info, fps, sid)
    alone = {k: v for k, v in entry.items() if k != "transition"}
    ((_, first, end),) = scene_layout({**params, "scenes": [alone]}, inputs)
    return round(Fraction(end - first) * fps)


def _lipsync_frames(inputs: dict[str, Any], entry: dict[str, Any], fps: Fraction) -> int:
    """Frames of a lip-sync clip, from its speech (``stages/lipsync.py`` cuts it so)."""
    from ..models.s2v.audio_features import read_speech, speech_frames

    try:
        _, seconds = read_speech(Path(inputs[entry["audio"]]))
    except Exception as exc:  # an unreadable speech failed the lip-sync already
        raise StageError(f"subtitles: scene {entry['id']!r}: cannot read its speech: {exc}") from exc
    return speech_frames(seconds, fps)
