import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# One tiny-model build per test session (unless the caller points at a prepared home).
if "CINESYNTH_HOME" not in os.environ:
    os.environ["CINESYNTH_HOME"] = tempfile.mkdtemp(prefix="cinesynth-home-")
os.environ.pop("CINESYNTH_CACHE", None)
os.environ.pop("CINESYNTH_PROJECT", None)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project folder (its own root: it holds a cinesynth.toml marker)."""
    (tmp_path / "cinesynth.toml").write_text("")
    return tmp_path


@pytest.fixture
def media_server(tmp_path: Path):
    """A folder under tmp_path served over HTTP on 127.0.0.1 (see media_server.py)."""
    from media_server import MediaServer

    folder = tmp_path / "served"
    folder.mkdir()
    server = MediaServer(folder)
    yield server
    server.close()
