"""Burn subtitles into the picture with ffmpeg's ``subtitles`` filter (libass).

The font is chosen when the render is planned (``media/fonts.py``: the project's configured font,
else a fontconfig font with every character of the text, else DejaVu Sans from matplotlib's wheel)
and handed to the assembly as an input, so its digest is part of the key: another font re-renders.
Before drawing, the font's character map is checked against the cues once more; a character it
lacks stops the assembly with the scripts missing and what to install, never boxes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import StageError
from .fonts import FontError, font_family, glyphs_missing_error, missing_chars, needed_chars


def _quoted(path: Path) -> str:
    text = str(path).replace("\\", "/")
    return "'" + text.replace("'", "'\\\\\\''").replace(":", "\\\\:") + "'"


def _one(value: Any) -> Path:
    return Path(value[0] if isinstance(value, (list, tuple)) else value)


def cue_text(srt: Path) -> str:
    """The text of an SRT file's cues (numbers and times left out)."""
    from .subtitles import parse_srt

    return "\n".join(cue.text for cue in parse_srt(srt.read_text(encoding="utf-8")))


def check_font(font: Path, text: str) -> None:
    """Raise ``StageError`` unless ``font`` has a glyph for every character of ``text``."""
    try:
        missing = missing_chars(font, needed_chars(text))
        if missing:
            raise glyphs_missing_error(font, missing)
    except FontError as exc:
        raise StageError(f"assemble: {exc.message}", hint=exc.hint) from exc


def burn_filter(graph: Any, label: str, srt: Any, work: Path, font: Any) -> str:
    """Append ``subtitles`` (drawn with ``font``) to the video chain ending at ``label``; returns
    the new label."""
    srt, font = _one(srt), _one(font)
    if not srt.is_file():
        raise StageError(f"assemble: subtitle file {srt} does not exist")
    if not font.is_file():
        raise StageError(f"assemble: subtitle font {font} does not exist")
    check_font(font, cue_text(srt))
    fonts = work / "fonts"
    fonts.mkdir(exist_ok=True)
    shutil.copyfile(font, fonts / font.name)
    local = work / "subtitles.srt"
    shutil.copyfile(srt, local)
    try:
        family = font_family(font)
    except FontError as exc:
        raise StageError(f"assemble: {exc.message}", hint=exc.hint) from exc
    # libass scales styles to a 288-line script: 18 is about 1/16 of the picture's height
    style = f"FontName={family},Fontsize=18,Outline=1,Shadow=0,MarginV=12"
    graph.add(f"{label}subtitles=filename={_quoted(local)}:fontsdir={_quoted(fonts)}"
              f":force_style='{style}'[vsub]")
    return "[vsub]"
