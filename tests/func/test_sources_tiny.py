"""URL inputs end to end on the tiny profile: a clip served by a local HTTP server is the
reference video of an animate scene and the song of a lip-sync scene (demucs vocals), its
last frame the avatar; scenes crossfade and the music ducks under the speech."""

import shutil
from pathlib import Path

import pytest

from cinesynth_batch.errors import RenderError
from cinesynth_batch.execute.render import render
from cinesynth_batch.execute.session import Session
from cinesynth_batch.media.audio import probe_audio
from cinesynth_batch.media.ffmpeg import measure_loudness, run_ffmpeg
from cinesynth_batch.media.video_io import probe
from cinesynth_batch.plan.sources import OfflineError
from media_server import MediaServer, closed_port
from projects import new_project

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "specs" / "examples" / "assets"
SPEC = """\
project: sources
profile: tiny
defaults: {{resolution: 64x64, fps: 16, seed: 7}}
allow_hosts: [127.0.0.1]
scenes:
  - id: dance
    animate:
      reference_video: "{url}"
      character: assets/avatar.png
      frame_window: 17
      steps: 2
  - id: cover
    lipsync:
      avatar: {{frame: {{source: "{url}", at: last}}}}
      audio: {{separate: {{source: "{url}", stem: vocals}}}}
      infer_frames: 16
      steps: 2
assemble:
  music: {{file: assets/bed.wav, gain_db: -18, duck_under_speech: true}}
  loudness: -14
  transition: {{crossfade: 0.25}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    run_ffmpeg(["-y", "-i", str(ASSETS / "dance.mp4"), "-t", "1.25", "-vf", "scale=64:64",
                "-c:v", "libx264", "-c:a", "aac", str(folder / "clip.mp4")], "making the served clip")
    srv = MediaServer(folder)
    yield srv
    srv.close()


def make_project(root: Path, text: str) -> Path:
    spec = new_project(root, "s.yaml", text)
    (root / "cinesynth.toml").write_text('[trust]\nallow_hosts = ["127.0.0.1"]\n')   # the operator allows it
    return spec


@pytest.fixture(scope="module")
def rendered(server, tmp_path_factory):
    base = tmp_path_factory.mktemp("sources")
    spec = make_project(base / "p", SPEC.format(url=server.url("clip.mp4")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(base / "home"))                     # no download may land there
        result = render(spec, progress=False)
    return spec, result, server.requests["/clip.mp4"]


def download_id(result) -> str:
    ids = [n for n in result.plan.order if n.startswith("download.")]
    assert len(ids) == 1
    return ids[0]


def test_url_inputs_render_through_their_stages(rendered):
    spec, result, requests = rendered
    dl = download_id(result)
    assert set(result.outcome.ran) == {dl, "dance.pose", "dance.face", "dance.animate", "cover.avatar_frame",
                                       "cover.separate", "cover.lipsync", "assemble.final"}
    assert requests >= 1
    out = spec.parent / "outputs" / "sources"
    dance, cover = probe(out / "scenes/dance.mp4"), probe(out / "scenes/cover.mp4")
    assert dance.audio_codec == "aac"                              # the download's sound is kept
    vocals = probe_audio(out / "scenes/cover.vocals.wav")
    assert abs(cover.frames / 16 - vocals.duration) <= 1 / 16       # the speech is the separated vocals
    final = probe(out / "final.mp4")
    assert final.frames == dance.frames + cover.frames - 4          # crossfade of 0.25 s at 16 fps
    assert result.outcome.meta["assemble.final"]["scenes"][1]["start"] == (dance.frames - 4) / 16
    assert measure_loudness(out / "final.mp4")["integrated"] == pytest.approx(-14.0, abs=1.0)
    home = list((spec.parent.parent / "home").rglob("*"))      # other libraries keep caches there
    assert not [p for p in home if "yt-dlp" in str(p) or p.suffix in (".mp4", ".mkv", ".webm", ".part")]
    made = {p.relative_to(spec.parent).parts[0] for p in spec.parent.rglob("*") if p.is_file()}
    assert made == {"cinesynth.toml", "s.yaml", "assets", "outputs", ".cinesynth"}


def test_second_render_downloads_nothing(rendered, server):
    spec, _, requests = rendered
    again = render(spec, progress=False)
    assert again.outcome.ran == [] and server.requests["/clip.mp4"] == requests
    offline = render(spec, progress=False, offline=True)
    assert offline.outcome.ran == [] and server.requests["/clip.mp4"] == requests


def test_offline_keeps_a_cached_download_even_when_forced(rendered, server):
    spec, result, requests = rendered
    plan = Session.open(spec).plan(force=True, offline=True)
    dl = download_id(result)
    assert plan.stages[dl].status == "cached" and plan.stages["cover.separate"].status == "run"
    status = Session.open(spec).plan()
    from cinesynth_batch.plan.show import as_status

    assert f"ok {dl}  {server.url('clip.mp4')}" in as_status(status, spec.parent / "outputs")
    assert server.requests["/clip.mp4"] == requests


def test_offline_with_an_empty_cache_names_url_scene_and_field(rendered, server, tmp_path):
    spec, _, requests = rendered
    fresh = make_project(tmp_path / "p", spec.read_text())
    with pytest.raises(OfflineError) as info:
        render(fresh, progress=False, offline=True)
    text = info.value.render()
    url = server.url("clip.mp4")
    assert f"s.yaml:8:24: scene 'dance', scenes[0].animate.reference_video: {url}" in text
    assert f"scene 'cover', scenes[1].lipsync.audio.separate.source: {url}" in text
    assert server.requests["/clip.mp4"] == requests
    assert not (fresh.parent / "outputs").exists()


def test_changing_the_stem_reruns_separation_lipsync_and_assembly(rendered, server, tmp_path):
    spec, first, requests = rendered
    work = tmp_path / "p"
    shutil.copytree(spec.parent, work)
    text = (work / "s.yaml").read_text()
    (work / "s.yaml").write_text(text.replace("stem: vocals", "stem: accompaniment"))
    result = render(work / "s.yaml", progress=False)
    assert set(result.outcome.ran) == {"cover.separate", "cover.lipsync", "assemble.final"}
    assert download_id(first) in result.outcome.cached
    assert server.requests["/clip.mp4"] == requests
    assert (work / "outputs/sources/scenes/cover.accompaniment.wav").is_file()


def test_bad_urls_fail_their_download_and_keep_going_keeps_the_rest(server, tmp_path):
    (server.folder / "page.html").write_text("<html><body><p>no video</p></body></html>")
    (server.folder / "note.txt").write_text("some text\n")
    gone = f"http://127.0.0.1:{closed_port()}/clip.mp4"
    text = f"""\
project: bad
profile: tiny
defaults: {{resolution: 64x64, fps: 16, seed: 7}}
allow_hosts: [127.0.0.1]
scenes:
  - id: still
    image: {{prompt: a cat, steps: 1}}
  - id: gone
    animate: {{reference_video: "{gone}", character: assets/avatar.png, steps: 2}}
  - id: page
    lipsync: {{avatar: assets/avatar.png, audio: {{separate: {{source: "{server.url('page.html')}"}}}}}}
  - id: text
    lipsync: {{avatar: assets/avatar.png, audio: "{server.url('note.txt')}"}}
"""
    spec = make_project(tmp_path / "p", text)
    with pytest.raises(RenderError) as info:
        render(spec, progress=False, keep_going=True)
    outcome = info.value.result.outcome
    failed = {info.value.result.plan.graph[n].runtime["uses"][0]["scene"]: msg
              for n, msg in outcome.failed.items()}
    assert set(failed) == {"gone", "page", "text"} and all(n.startswith("download.") for n in outcome.failed)
    assert gone in failed["gone"] and "Connection refused" in failed["gone"]
    assert "used by scene 'gone' scenes[1].animate.reference_video" in failed["gone"]
    assert "page.html: Unsupported URL" in failed["page"]
    assert "note.txt is not a media file" in failed["text"]
    assert "still.image" in outcome.ran
    assert {"gone.animate", "page.separate", "page.lipsync", "text.lipsync", "assemble.final"} <= \
        set(outcome.blocked)
    retry = render(spec, progress=False, keep_going=True, only=["still"])
    assert retry.outcome.cached == ["still.image"]


def test_example_spec_cuts_frames_and_audio_and_crossfades(tmp_path):
    root = new_project(tmp_path / "p", "sources.yaml").parent
    result = render(root / "sources.yaml", progress=False)
    assert set(result.outcome.ran) == {"cover.avatar_frame", "cover.separate", "cover.lipsync",
                                       "line.extract_audio", "line.lipsync", "assemble.final"}
    out = root / "outputs/sources"
    line = probe(out / "scenes/line.mp4")
    assert line.frames == round(0.8 * 16)                         # extract: 0.2 .. 1.0 s of line1.wav
    cover = probe(out / "scenes/cover.mp4")
    assert abs(cover.frames / 16 - probe_audio(ASSETS / "dance.mp4").duration) <= 1 / 16
    assert probe(out / "final.mp4").frames == cover.frames + line.frames - 4   # the scene's own crossfade
    assert measure_loudness(out / "final.mp4")["integrated"] == pytest.approx(-14.0, abs=1.0)
