"""Burn subtitles into the picture with ffmpeg's ``subtitles`` filter (libass).

The font is DejaVu Sans from matplotlib's wheel (installed with mediapipe), so burning works
offline on a fresh machine with no system fonts. DejaVu Sans covers Latin, Greek and Cyrillic;
Hangul and Han characters need a CJK font: set ``CINESYNTH_SUBTITLE_FONT`` to a .ttf/.otf/.ttc
file that has them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from ..stages.base import StageError

FONT_ENV = "CINESYNTH_SUBTITLE_FONT"


def subtitle_font() -> Path:
    """The font file used for burnt-in subtitles."""
    chosen = os.environ.get(FONT_ENV)
    if chosen:
        p = Path(chosen).expanduser()
        if not p.is_file():
            raise StageError(f"assemble: {FONT_ENV}={chosen} is not a file",
                             hint="point it at a .ttf, .otf or .ttc font")
        return p
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            p = Path(base) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
            if p.is_file():
                return p
    raise StageError("assemble: no font to burn subtitles with",
                     hint=f"install matplotlib (it ships DejaVu Sans) or set {FONT_ENV} to a font file")


def font_family(path: Path) -> str:
    """The family name libass matches a font by (from the file's name table)."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype(str(path), 12).getname()[0]
    except OSError as exc:
        raise StageError(f"assemble: cannot read the subtitle font {path}: {exc}") from exc


def _quoted(path: Path) -> str:
    text = str(path).replace("\\", "/")
    return "'" + text.replace("'", "'\\\\\\''").replace(":", "\\\\:") + "'"


def burn_filter(graph: Any, label: str, srt: Any, work: Path) -> str:
    """Append ``subtitles`` to the video chain ending at ``label``; returns the new label."""
    srt = Path(srt[0] if isinstance(srt, (list, tuple)) else srt)
    if not srt.is_file():
        raise StageError(f"assemble: subtitle file {srt} does not exist")
    fonts = work / "fonts"
    fonts.mkdir(exist_ok=True)
    font = subtitle_font()
    shutil.copyfile(font, fonts / font.name)
    local = work / "subtitles.srt"
    shutil.copyfile(srt, local)
    # libass scales styles to a 288-line script: 18 is about 1/16 of the picture's height
    style = f"FontName={font_family(font)},Fontsize=18,Outline=1,Shadow=0,MarginV=12"
    graph.add(f"{label}subtitles=filename={_quoted(local)}:fontsdir={_quoted(fonts)}"
              f":force_style='{style}'[vsub]")
    return "[vsub]"
