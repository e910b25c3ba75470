"""URL, frame, extract and separate inputs in the spec and the plan (no render, no torch)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cinesynth_batch.errors import SpecError
from cinesynth_batch.execute.session import Session
from cinesynth_batch.plan.sources import OfflineError, download_format, ytdlp_major

URL = "https://www.youtube.com/watch?v=abc"
SPEC = f"""
project: p
defaults: {{resolution: 64x64, seed: 5}}
scenes:
  - id: dance
    animate:
      reference_video: "{URL}"
      character: {{frame: {{source: clip.mp4, at: 1.5}}}}
  - id: cover
    lipsync:
      avatar: {{frame: {{source: "{URL}", at: last}}}}
      audio: {{separate: {{source: "{URL}", stem: vocals}}}}
  - id: line
    transition: {{crossfade: 0.25}}
    lipsync:
      avatar: img.png
      audio: {{extract: {{source: clip.mp4, start: 0.5, end: 1.0}}}}
assemble:
  music: {{file: bed.wav, duck_under_speech: true, duck_db: 9}}
  transition: {{crossfade: 0.5}}
"""


def session(project: Path, text: str = SPEC) -> Session:
    for name in ("clip.mp4", "img.png", "bed.wav"):
        (project / name).write_bytes(name.encode())
    (project / "spec.yaml").write_text(textwrap.dedent(text))
    return Session.open(project / "spec.yaml")


def problems(project: Path, text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        session(project, text)
    return [p.render().replace(f"{project}/", "") for p in info.value.problems]


def test_sources_become_stages_and_one_url_is_one_download(project):
    plan = session(project).plan()
    downloads = [n for n in plan.graph if n.kind == "download"]
    assert len(downloads) == 1                                   # three uses, one node
    dl = downloads[0]
    assert dl.params == {"url": URL, "format": download_format(1080), "ytdlp": ytdlp_major()}
    assert "height<=?1080" in dl.params["format"] and dl.params["format"].startswith("bestvideo*")
    assert [u["field"] for u in dl.runtime["uses"]] == [
        "scenes[0].animate.reference_video", "scenes[1].lipsync.avatar.frame.source",
        "scenes[1].lipsync.audio.separate.source"]
    g = plan.graph
    assert g["cover.separate"].params["stem"] == "vocals"
    assert set(g["cover.separate"].upstream()) == {dl.id}
    assert set(g["cover.avatar_frame"].upstream()) == {dl.id}
    assert g["cover.avatar_frame"].params == {"at": "last"}
    assert g["dance.character_frame"].params == {"at": 1.5}
    assert g["line.extract_audio"].params == {"start": 0.5, "end": 1.0}
    assert set(g["cover.lipsync"].upstream()) == {"cover.separate", "cover.avatar_frame"}
    assert set(g["dance.pose"].upstream()) == {dl.id}
    assert plan.order.index(dl.id) < plan.order.index("cover.separate")
    asm = g["assemble.final"].params
    assert [s.get("transition") for s in asm["scenes"]] == [None, {"crossfade": 0.5}, {"crossfade": 0.25}]
    assert asm["music"]["duck_db"] == 9
    assert asm["scenes"][0]["audio_optional"] is True            # a download's sound is optional
    assert g["assemble.final"].inputs["a1"] == g["cover.lipsync"].inputs["audio"]


def test_download_key_is_url_and_format(project):
    k = session(project).plan().stages
    dl = next(n for n in k if n.startswith("download."))
    other = session(project, SPEC.replace("seed: 5}", "seed: 5, download_height: 720}")).plan().stages
    dl720 = next(n for n in other if n.startswith("download."))
    assert dl720 != dl and other[dl720].key != k[dl].key
    assert other[dl720].node.params["format"] == download_format(720)
    same = session(project, SPEC.replace("stem: vocals", "stem: accompaniment")).plan().stages
    assert same[dl].key == k[dl].key
    assert same["line.extract_audio"].key == k["line.extract_audio"].key


def test_host_not_allowed_is_an_error_with_position(project):
    text = SPEC.replace(URL, "https://example.org/v.mp4", 1)
    lines = problems(project, text)
    assert lines == ["spec.yaml:7:24: scenes[0].animate.reference_video: reference video "
                     "'https://example.org/v.mp4': host 'example.org' is not on allow_hosts "
                     "(youtube.com, youtu.be) (the operator may allow 'example.org' in cinesynth.toml "
                     "[trust] allow_hosts or with --allow-host)"]
    widened = "allow_hosts: [example.org, youtube.com]\n" + textwrap.dedent(text)
    assert problems(project, widened)[0].startswith(
        "spec.yaml:1:15: allow_hosts[0]: host 'example.org' is not one the operator allowed")
    (project / "cinesynth.toml").write_text('[trust]\nallow_hosts = ["example.org", "youtube.com"]\n')
    assert session(project, widened).plan()


@pytest.mark.parametrize("old,new,expected", [
    ("stem: vocals", "stem: drums", "scenes[1].lipsync.audio.separate.stem: 'drums': input should be "
                                    "'vocals' or 'accompaniment'"),
    ("at: last", "at: middle", "scenes[1].lipsync.avatar.frame.at: 'middle' is not a frame position"),
    ("start: 0.5, end: 1.0", "start: 1.0, end: 0.5", "scenes[2].lipsync.audio.extract: end 0.5 is not "
                                                     "after start 1.0"),
    ("{separate: {", "{extract: {source: clip.mp4}, separate: {", "scenes[1].lipsync.audio: give exactly "
                                                                   "one audio source, not separate and extract"),
    ("source: clip.mp4, start", "source: missing.mp4, start", "extract source 'missing.mp4' not found"),
    ("transition: {crossfade: 0.25}", "transition: fade", "scenes[2].transition: 'fade': input should "
                                                          "be 'cut'"),
    (f'"{URL}", stem', '"ftp://youtube.com/x", stem', "only http:// and https:// URLs are downloaded"),
])
def test_bad_sources_name_field_and_position(project, old, new, expected):
    lines = problems(project, SPEC.replace(old, new))
    assert len(lines) == 1 and expected in lines[0], lines
    assert lines[0].startswith("spec.yaml:") and lines[0].split(":")[1].isdigit()


def test_offline_refuses_downloads_not_in_the_cache(project):
    s = session(project)
    with pytest.raises(OfflineError) as info:
        s.plan(offline=True)
    text = info.value.render().replace(f"{project}/", "")
    assert "1 download(s)" not in text and "3 download(s) not in the cache" in text
    assert f"spec.yaml:7:24: scene 'dance', scenes[0].animate.reference_video: {URL}" in text
    assert f"scene 'cover', scenes[1].lipsync.audio.separate.source: {URL}" in text
    assert s.plan(offline=False)                                  # planning alone downloads nothing


def test_plan_and_status_offline_from_the_cli_without_torch(project):
    session(project)
    code = ("import sys; from cinesynth_batch.cli import main\n"
            "codes = []\n"
            "for args in (['plan', sys.argv[1], '--offline'], ['status', sys.argv[1], '--offline']):\n"
            "    try: main(args)\n"
            "    except SystemExit as e: codes.append(e.code)\n"
            "assert codes == [1, 1], codes\n"
            "assert 'torch' not in sys.modules and 'yt_dlp' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code, str(project / "spec.yaml")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "offline: 3 download(s) not in the cache" in out.stderr and URL in out.stderr
