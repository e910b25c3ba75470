"""A font for burnt-in subtitles that has a glyph for every character the text needs.

Candidates, first that covers the text wins:

1. the font named in the project's configuration (``cinesynth.toml``, ``[subtitles] font``);
2. fontconfig's preferred sans-serif faces for the needed characters (``fc-match -s
   'sans-serif:charset=...'``), where fontconfig is installed (Debian's ``fonts-noto-cjk`` gives
   Noto Sans CJK for Korean, Chinese and Japanese);
3. DejaVu Sans from matplotlib's wheel (Latin, Greek, Cyrillic; no Hangul, Han or kana).

Coverage is read from the font's character map (fontTools, which matplotlib installs). When no
candidate covers the text, ``FontError`` names the scripts of the missing characters and what to
install: text is never drawn as empty boxes.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import unicodedata
from pathlib import Path

CJK_PACKAGE = "fonts-noto-cjk"
_CJK_SCRIPTS = frozenset({"Hangul", "Han", "Hiragana", "Katakana", "CJK symbols", "Bopomofo"})
_SCRIPT_WORDS = {"HANGUL": "Hangul", "CJK": "Han", "HIRAGANA": "Hiragana", "KATAKANA": "Katakana",
                 "IDEOGRAPHIC": "CJK symbols", "FULLWIDTH": "CJK symbols", "HALFWIDTH": "CJK symbols",
                 "BOPOMOFO": "Bopomofo"}
_SHOWN = 8          # missing characters quoted in a message
_CANDIDATES = 12    # fontconfig's best matches whose character maps are read


class FontError(Exception):
    """No font covers the text (or a named font cannot be read)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def needed_chars(text: str) -> list[str]:
    """The distinct characters of ``text`` that are drawn (no spaces, controls or format marks)."""
    return sorted({ch for ch in text if unicodedata.category(ch)[0] not in "ZC"})


def codepoints(path: Path) -> set[int]:
    """The code points ``path`` has glyphs for (first face of a collection)."""
    from fontTools.ttLib import TTFont, TTLibError

    try:
        with TTFont(str(path), fontNumber=0, lazy=True) as font:
            cmap = font.getBestCmap() or {}
    except (OSError, TTLibError, AssertionError, KeyError, ValueError) as exc:
        raise FontError(f"cannot read the font {path}: {exc}",
                        hint="name a .ttf, .otf or .ttc file in [subtitles] font") from exc
    return set(cmap)


def missing_chars(path: Path, chars: list[str]) -> list[str]:
    have = codepoints(path)
    return [ch for ch in chars if ord(ch) not in have]


def script_of(ch: str) -> str:
    """A readable script name for one character (``Hangul``, ``Han``, ``Arabic``, ...)."""
    try:
        word = unicodedata.name(ch).split()[0]
    except ValueError:
        return f"U+{ord(ch):04X}"
    return _SCRIPT_WORDS.get(word, word.title())


def bundled_font() -> Path | None:
    """DejaVu Sans from matplotlib's wheel, if it is installed."""
    spec = importlib.util.find_spec("matplotlib")
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(base) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if p.is_file():
            return p
    return None


def fontconfig_fonts(chars: list[str]) -> list[Path]:
    """Font files in fontconfig's order of preference for a sans-serif face with ``chars``
    (``fc-match -s``: faces with every character first); empty when fontconfig's tools are not
    installed. Callers check coverage themselves."""
    fc_match = shutil.which("fc-match")
    if fc_match is None or not chars:
        return []
    charset = " ".join(f"{ord(ch):x}" for ch in chars)
    try:
        listed = subprocess.run([fc_match, "-s", f"sans-serif:charset={charset}", "--format", "%{file}\n"],
                                capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    files = [line for line in listed.splitlines() if line.lower().endswith((".ttf", ".otf", ".ttc"))]
    return list(dict.fromkeys(Path(f) for f in files))[:_CANDIDATES]


def choose_font(text: str, configured: Path | None = None) -> Path:
    """The font to burn ``text`` with: see the module's docstring for the order."""
    chars = needed_chars(text)
    if configured is not None and not Path(configured).is_file():
        raise FontError(f"the subtitle font {configured} ([subtitles] font in cinesynth.toml) is not a file",
                        hint="point [subtitles] font at a .ttf, .otf or .ttc file inside the project")
    lacking: list[str] = []
    if configured is not None:
        lacking = missing_chars(Path(configured), chars)
        if not lacking:
            return Path(configured)
    for path in fontconfig_fonts(chars):
        if not missing_chars(path, chars):
            return path
    bundled = bundled_font()
    if bundled is not None:
        missing = missing_chars(bundled, chars)
        if not missing:
            return bundled
        lacking = lacking or missing
    raise no_font_error(lacking or chars, configured, searched=shutil.which("fc-match") is not None)


def no_font_error(missing: list[str], configured: Path | None, searched: bool = True) -> FontError:
    """No candidate has ``missing``: which scripts, why each candidate failed, what to install."""
    reasons = [f"the configured font {configured.name} lacks them"] if configured is not None else []
    reasons.append("fontconfig's fonts lack them" if searched else "fontconfig is not installed (no fc-match)")
    return FontError(f"no font has the {_described(missing)}: {', '.join(reasons)}, and DejaVu Sans would "
                     "draw boxes", _install_hint(missing))


def glyphs_missing_error(font: Path, missing: list[str]) -> FontError:
    """``font`` lacks ``missing``: which scripts, and what to install."""
    return FontError(f"the subtitle font {font.name} has no glyph for the {_described(missing)}",
                     _install_hint(missing))


def _described(missing: list[str]) -> str:
    scripts = sorted({script_of(ch) for ch in missing})
    shown = " ".join(missing[:_SHOWN]) + (" ..." if len(missing) > _SHOWN else "")
    return f"{', '.join(scripts)} characters of the subtitles ({shown})"


def _install_hint(missing: list[str]) -> str:
    package = CJK_PACKAGE if {script_of(ch) for ch in missing} & _CJK_SCRIPTS else "fonts-noto"
    return (f"install one: apt-get install {package} (and fontconfig), or set [subtitles] font in "
            "cinesynth.toml to a font file that has them")


def font_family(path: Path) -> str:
    """The family name libass matches a font by (from the file's name table)."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype(str(path), 12).getname()[0]
    except OSError as exc:
        raise FontError(f"cannot read the subtitle font {path}: {exc}") from exc
