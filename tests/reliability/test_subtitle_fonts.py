"""Subtitles in every script: burn-in draws with a font that has the text's glyphs, or refuses.

The Korean line is burnt through the real assembly (ffmpeg + libass) with the font the plan
chooses, and compared with the tofu outcome: the same line drawn by libass with DejaVu Sans and no
system fonts to fall back on (an empty fontconfig configuration), which is what burning with the
bundled font did. The refusal is checked with a configured font that lacks Hangul and a PATH that
hides ``fc-list`` and ``fc-match``."""

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cinesynth_batch.errors import SpecError
from cinesynth_batch.execute.session import Session
from cinesynth_batch.media.ffmpeg import ffmpeg_exe
from cinesynth_batch.media.fonts import bundled_font, codepoints, no_font_error
from cinesynth_batch.media.video_io import read_frames
from cinesynth_batch.stages import assemble
from cinesynth_batch.stages.base import StageError
from projects import new_project

KOREAN = "안녕하세요, 여러분"
SYLLABLES = 8
W, H, FPS = 384, 288, 8          # libass draws 18 px text on a 288-line picture
STYLE = "FontName=DejaVu Sans,Fontsize=18,Outline=1,Shadow=0,MarginV=12"
SPEC = """\
project: subs
defaults: {{resolution: 64x64, fps: 8, seed: 3}}
scenes:
  - id: talk
    image: {{prompt: a wall, steps: 1}}
    audio: {{tts: {{text: "{text}", language: {lang}}}}}
assemble: {{subtitles: burn}}
"""


def plan_for(root: Path, text: str, lang: str = "ko", config: str = ""):
    (root / "cinesynth.toml").write_text(config)
    spec = root / "spec.yaml"
    spec.write_text(SPEC.format(text=text, lang=lang))
    return Session.open(spec).plan()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assemble_still(folder: Path, name: str, font: Path | None) -> np.ndarray:
    """One second of a flat still through the real assemble stage; the cue burnt when ``font``."""
    from PIL import Image

    still, srt = folder / "still.png", folder / "ko.srt"
    Image.new("RGB", (W, H), (40, 60, 90)).save(still)
    srt.write_text(f"1\n00:00:00,000 --> 00:00:01,000\n{KOREAN}\n", encoding="utf-8")
    params = {"fps": FPS, "width": W, "height": H, "audio_rate": 48000, "loudness": None, "crf": 18,
              "scenes": [{"id": "a", "visual": "v0", "kind": "still", "duration": 1.0, "audio": None,
                          "audio_gain_db": 0.0}], "music": None}
    inputs = {"v0": still}
    if font is not None:
        params.update(subtitles="subtitles", subtitle_font="font")
        inputs.update(subtitles=srt, font=font)
    assemble.run(params, inputs, folder / f"{name}.mp4")
    return read_frames(folder / f"{name}.mp4")[FPS // 2].astype(np.int16)


def tofu_frame(folder: Path, plain: Path) -> np.ndarray:
    """The cue drawn by libass with DejaVu Sans and no system font to fall back on: boxes."""
    fonts = folder / "dejavu"
    fonts.mkdir()
    shutil.copy(bundled_font(), fonts)
    conf = folder / "empty-fonts.conf"
    conf.write_text(f'<?xml version="1.0"?>\n<fontconfig><cachedir>{folder / "fc"}</cachedir></fontconfig>\n')
    out = folder / "tofu.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "quiet", "-y", "-i", str(plain), "-vf",
                    f"subtitles=ko.srt:fontsdir=dejavu:force_style='{STYLE}'", str(out)],
                   cwd=folder, env={**os.environ, "FONTCONFIG_FILE": str(conf)}, check=True)
    return read_frames(out)[FPS // 2].astype(np.int16)


def ink_blobs(frame: np.ndarray) -> int:
    """Separate white strokes in the subtitle band (the bottom sixth of the picture)."""
    band = frame[H * 5 // 6:].min(axis=2) > 128
    return ndimage.label(band)[1]


@pytest.mark.slow
def test_korean_line_burns_as_hangul_not_boxes(tmp_path):
    font = plan_for(tmp_path, KOREAN).graph["assemble.final"].inputs["subtitle_font"].path
    assert {ord(c) for c in KOREAN if c.strip() and c != ","} <= codepoints(font)
    burnt = assemble_still(tmp_path, "burnt", font)
    plain = assemble_still(tmp_path, "plain", None)
    tofu = tofu_frame(tmp_path, tmp_path / "plain.mp4")
    band = slice(H * 5 // 6, H)
    assert np.abs(burnt[band] - plain[band]).mean() > 1.0           # something is drawn ...
    assert np.abs(burnt[: H // 2] - plain[: H // 2]).mean() < 0.5   # ... at the bottom only
    assert np.abs(burnt[band] - tofu[band]).mean() > 1.0            # and it is not the boxes
    boxes, strokes = ink_blobs(tofu), ink_blobs(burnt)
    assert SYLLABLES <= boxes <= SYLLABLES + 3                       # one box per syllable, a comma
    assert 2 * SYLLABLES <= strokes <= 8 * SYLLABLES                 # Hangul: several jamo per syllable


def test_the_font_is_an_input_whose_digest_is_keyed(tmp_path):
    chosen = plan_for(tmp_path, KOREAN).stages["assemble.final"]
    assert chosen.inputs["subtitle_font"] == sha256(chosen.node.inputs["subtitle_font"].path)
    assert chosen.params["subtitle_font"] == "subtitle_font"
    (tmp_path / "fonts").mkdir()
    shutil.copy(chosen.node.inputs["subtitle_font"].path, tmp_path / "fonts" / "Mine.ttc")
    with open(tmp_path / "fonts" / "Mine.ttc", "ab") as f:
        f.write(b"\0" * 4)                                           # another file, same glyphs
    mine = plan_for(tmp_path, KOREAN, config='[subtitles]\nfont = "fonts/Mine.ttc"\n').stages["assemble.final"]
    assert mine.node.inputs["subtitle_font"].path == tmp_path / "fonts" / "Mine.ttc"
    assert mine.inputs["subtitle_font"] != chosen.inputs["subtitle_font"]
    latin = plan_for(tmp_path, "Good evening.", "en").graph["assemble.final"].inputs["subtitle_font"]
    assert latin.path == bundled_font() or {ord(c) for c in "Goodevning."} <= codepoints(latin.path)


def write_config_without_hangul(root: Path) -> None:
    (root / "fonts").mkdir(exist_ok=True)
    shutil.copy(bundled_font(), root / "fonts" / "Latin.ttf")
    (root / "cinesynth.toml").write_text('[subtitles]\nfont = "fonts/Latin.ttf"\n')


def test_font_without_hangul_and_fc_list_hidden_fails_naming_what_to_install(tmp_path, monkeypatch):
    root = tmp_path / "p"
    spec = new_project(root, "spec.yaml", SPEC.format(text=KOREAN, lang="ko"))
    write_config_without_hangul(root)
    hidden = tmp_path / "bin-without-fc-list"
    hidden.mkdir()
    monkeypatch.setenv("PATH", str(hidden))
    with pytest.raises(SpecError) as err:
        Session.open(spec).plan()
    text = err.value.render()
    assert text.startswith(f"{spec}:7:23: assemble[0].subtitles: ") and "\n" not in text
    assert "no font has the Hangul characters of the subtitles (녕 러 분 세 안 여 요 하)" in text
    assert ("the configured font Latin.ttf lacks them, fontconfig is not installed (no fc-match), "
            "and DejaVu Sans would draw boxes") in text
    assert "apt-get install fonts-noto-cjk" in text and "[subtitles] font in cinesynth.toml" in text
    cli = subprocess.run([sys.executable, "-m", "cinesynth_batch.cli", "plan", str(spec)], cwd=root,
                         capture_output=True, text=True, env={**os.environ, "PATH": str(hidden)})
    assert cli.returncode == 2, cli.stderr
    assert "Traceback" not in cli.stderr and "fonts-noto-cjk" in cli.stderr
    assert cli.stderr.strip().count("\n") == 0 and cli.stderr.startswith(f"{spec}:7:23: ")
    assert not (root / "outputs").exists() and not (root / ".cinesynth" / "cache" / "objects").exists()


def test_assembly_refuses_a_font_without_the_glyphs(tmp_path):
    with pytest.raises(StageError) as err:
        assemble_still(tmp_path, "refused", bundled_font())
    assert err.value.message == ("assemble: the subtitle font DejaVuSans.ttf has no glyph for the Hangul "
                                 "characters of the subtitles (녕 러 분 세 안 여 요 하)")
    assert "fonts-noto-cjk" in err.value.hint
    assert not (tmp_path / "refused.mp4").exists()


def test_messages_name_chinese_and_japanese_scripts():
    err = no_font_error(["中", "あ", "カ", "。"], None)
    assert "the CJK symbols, Han, Hiragana, Katakana characters" in err.message and "fonts-noto-cjk" in err.hint
    arabic = no_font_error(["ب"], None)
    assert "the Arabic characters" in arabic.message and "apt-get install fonts-noto (and fontconfig)" in arabic.hint
