"""Trust is set by the operator: ``cinesynth.toml`` [trust] and ``--allow-path`` /
``--allow-host`` widen what a spec may reach; a spec's own ``allow_paths`` / ``allow_hosts``
only narrow it. A spec cannot make a render reach a local HTTP service by listing its host."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cinesynth_batch.errors import SpecError
from cinesynth_batch.spec.load import load_spec
from media_server import MediaServer, make_clip
from projects import new_project

REPO = Path(__file__).resolve().parents[2]


def spec_with(root: Path, text: str) -> Path:
    path = root / "s.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path, **kw) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, **kw)
    return [p.render() for p in info.value.problems]


def url_spec(url: str, extra: str = "") -> str:
    return f"""
        project: t
        {extra}
        scenes:
          - id: one
            image: {{prompt: cat}}
            audio: {{extract: {{source: "{url}"}}}}
        """


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return new_project(tmp_path / "p")


def test_hosts_widen_only_from_the_operator(root: Path, monkeypatch):
    monkeypatch.chdir(root)
    spec = spec_with(root, url_spec("https://media.example.org/v.mp4"))
    assert problems(Path("s.yaml")) == [
        "s.yaml:6:31: scenes[0].audio.extract.source: extract source 'https://media.example.org/v.mp4': "
        "host 'media.example.org' is not on allow_hosts (youtube.com, youtu.be) (the operator may allow "
        "'media.example.org' in cinesynth.toml [trust] allow_hosts or with --allow-host)"]
    assert load_spec(spec, allow_hosts=["example.org"]).trust.allow_hosts == \
        ("youtube.com", "youtu.be", "example.org")                   # --allow-host: subdomains too
    (root / "cinesynth.toml").write_text('[trust]\nallow_hosts = ["media.example.org"]\n')
    loaded = load_spec(spec)
    assert loaded.trust.allow_hosts == ("media.example.org",) and loaded.spec.allow_hosts == ["media.example.org"]
    # the spec narrows: listing only youtube.com (not allowed by this operator) is refused at the item,
    # listing the allowed host keeps it
    spec_with(root, url_spec("https://media.example.org/v.mp4", "allow_hosts: [youtube.com]"))
    assert problems(Path("s.yaml"))[0] == (
        "s.yaml:2:15: allow_hosts[0]: host 'youtube.com' is not one the operator allowed (media.example.org); "
        "a spec may only narrow allow_hosts (ask for it in cinesynth.toml [trust] allow_hosts or with "
        "--allow-host)")
    spec_with(root, url_spec("https://media.example.org/v.mp4", "allow_hosts: [media.example.org]"))
    assert load_spec(Path("s.yaml")).trust.allow_hosts == ("media.example.org",)


def test_a_spec_list_narrows_what_the_operator_allowed(root: Path, monkeypatch):
    monkeypatch.chdir(root)
    (root / "cinesynth.toml").write_text('[trust]\nallow_hosts = ["example.org", "youtube.com"]\n')
    spec_with(root, url_spec("https://youtube.com/watch?v=x", "allow_hosts: [example.org]"))
    assert problems(Path("s.yaml")) == [
        "s.yaml:6:31: scenes[0].audio.extract.source: extract source 'https://youtube.com/watch?v=x': "
        "host 'youtube.com' is not on allow_hosts (example.org) (the operator may allow 'youtube.com' "
        "in cinesynth.toml [trust] allow_hosts or with --allow-host)"]


def test_paths_widen_only_from_the_operator(root: Path, tmp_path: Path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "line.wav").write_bytes((root / "assets" / "line1.wav").read_bytes())
    monkeypatch.chdir(root)
    text = """
        project: t
        {extra}
        scenes:
          - id: one
            image: {{prompt: cat}}
            audio: ../shared/line.wav
        """
    spec_with(root, text.format(extra=""))
    assert problems(Path("s.yaml"))[0].startswith(
        f"s.yaml:6:12: scenes[0].audio.file: audio file '../shared/line.wav' is outside the project ({root})")
    spec_with(root, text.format(extra="allow_paths: [../shared]"))
    assert problems(Path("s.yaml"))[0] == (
        "s.yaml:2:15: allow_paths[0]: '../shared' is not a folder the operator allowed; a spec may only "
        "narrow allow_paths (ask for it in cinesynth.toml [trust] allow_paths or with --allow-path)")
    assert load_spec(Path("s.yaml"), allow_paths=[str(shared)]).trust.allow_paths == (shared,)
    (root / "cinesynth.toml").write_text('[trust]\nallow_paths = ["../shared"]\n')
    assert load_spec(Path("s.yaml")).trust.allow_paths == (shared,)
    spec_with(root, text.format(extra=""))
    assert load_spec(Path("s.yaml")).trust.allow_paths == (shared,)
    # narrowing: the spec lists a folder inside the project, so ../shared is no longer allowed
    spec_with(root, text.format(extra="allow_paths: [assets]"))
    assert "audio file '../shared/line.wav' is outside the project" in problems(Path("s.yaml"))[0]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HOME": str(cwd.parent / "home")}
    return subprocess.run([sys.executable, "-m", "cinesynth_batch.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_spec_cannot_reach_a_local_service_but_the_operator_can_allow_it(root: Path, tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    make_clip(served / "clip.mp4", seconds=0.5, size=32)
    server = MediaServer(served)
    try:
        spec_with(root, url_spec(server.url("clip.mp4"), "allow_hosts: [127.0.0.1]"))
        for command in (["validate", "s.yaml"], ["plan", "s.yaml"]):     # render opens the same session
            done = _cli(command, root)
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
            assert done.stderr.startswith("s.yaml:2:15: allow_hosts[0]: host '127.0.0.1' is not one the "
                                          "operator allowed"), done.stderr
        # a userinfo URL naming an allowed host is refused before any request
        spec_with(root, url_spec(server.url("clip.mp4").replace("http://", "http://youtube.com@")))
        done = _cli(["plan", "s.yaml", "--allow-host", "127.0.0.1"], root)
        assert done.returncode == 2 and "a URL may not hold a user name or password" in done.stderr, done.stderr
        assert sum(server.requests.values()) == 0
        assert not (root / "outputs").exists()
        # the operator allows the host on the command line: the download runs
        spec_with(root, url_spec(server.url("clip.mp4"), "allow_hosts: [127.0.0.1]"))
        done = _cli(["render", "s.yaml", "--only", "download", "--no-progress", "--allow-host", "127.0.0.1"], root)
        assert done.returncode == 0, done.stderr
        assert server.requests["/clip.mp4"] >= 1
    finally:
        server.close()


def test_a_broken_cinesynth_toml_is_a_located_error(root: Path, monkeypatch):
    monkeypatch.chdir(root)
    spec_with(root, url_spec("https://youtube.com/watch?v=x"))
    (root / "cinesynth.toml").write_text('[trust]\nallow_hosts = ["a",\n')
    lines = problems(Path("s.yaml"))
    assert len(lines) == 1 and lines[0].startswith("cinesynth.toml:3:1: "), lines
    (root / "cinesynth.toml").write_text('[trust]\nallow_hosts = "example.org"\n')
    assert problems(Path("s.yaml")) == [
        "cinesynth.toml:2:1: allow_hosts must be a list of strings"]
    (root / "cinesynth.toml").write_text('[limits]\nframes = 81\nsteps = -1\n')
    assert problems(Path("s.yaml")) == ["cinesynth.toml:3:1: [limits] steps must be a positive whole number"]


@pytest.mark.parametrize("url", ["http://youtube.com@127.0.0.1/x", "http://127.0.0.1:1\\@youtube.com/",
                                 "file:///etc/passwd", "http://youtube.com/a b", "HTTP://youtube.com/x"])
def test_the_download_stage_refuses_what_the_plan_would_not_have_built(url: str):
    from cinesynth_batch.stages.base import StageError
    from cinesynth_batch.stages.download import _checked

    with pytest.raises(StageError, match="download: refused URL"):
        _checked(url)
    assert _checked("https://www.youtube.com/watch?v=x") == "https://www.youtube.com/watch?v=x"


def test_output_stays_inside_the_project(root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "linked").symlink_to(outside)
    text = "project: t\noutput: {out}\nscenes: [{{id: one, image: {{prompt: cat}}}}]\n"
    for out, expected in [("../escape", "output folder '../escape' is outside the project"),
                          (str(outside), f"output folder '{outside}' is outside the project"),
                          ("linked/x", "output folder 'linked/x' is outside the project"),
                          (".", "output folder '.' is the project root itself")]:
        spec_with(root, text.format(out=out))
        assert problems(Path("s.yaml"))[0].startswith(f"s.yaml:2:9: output: {expected}"), out
    spec_with(root, text.format(out="renders/t"))
    assert load_spec(Path("s.yaml")).spec.output == "renders/t"


def test_output_is_a_folder_of_its_own(root: Path, monkeypatch):
    """Not the cache, not a file, not a folder that holds the spec: outputs written there would
    mix with what the render reads, or fail on the file."""
    monkeypatch.chdir(root)
    (root / "notes.txt").write_text("mine")
    (root / "specs").mkdir()
    text = "project: t\noutput: {out}\nscenes: [{{id: one, image: {{prompt: cat}}}}]\n"
    for spec, out, expected in [
            ("s.yaml", ".cinesynth/cache/objects", "output folder '.cinesynth/cache/objects' is inside the cache"),
            ("s.yaml", ".cinesynth", "output folder '.cinesynth' is inside the cache"),
            ("s.yaml", "notes.txt", "output folder 'notes.txt' is a file"),
            ("specs/s.yaml", ".", "output folder '.' holds the spec itself (and its cache, .cinesynth)")]:
        (root / spec).write_text(text.format(out=out))
        assert problems(Path(spec))[0].startswith(f"{spec}:2:9: output: {expected}"), out
    assert (root / "notes.txt").read_text() == "mine"
