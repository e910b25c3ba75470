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
