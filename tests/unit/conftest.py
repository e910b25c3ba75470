"""Fixtures for the stage tests: the tiny models, loaded through the real load path."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinesynth_batch.catalog.loaders import load_model
from cinesynth_batch.catalog.tiny.build import build_tiny
from cinesynth_batch.stages.base import StageContext

KINDS = {"image": ("flux2-klein", "flux2-klein"), "image_base": ("flux2-klein", "flux2-klein-base"),
         "video": ("wan-i2v", "wan2.2-i2v"),
         "animate": ("wan-animate", "wan2.2-animate"), "detect": ("grounding-dino", "grounding-dino"),
         "segment": ("sam", "sam")}


class Provider:
    """Loads each role once with ``load_model`` and keeps it, as the executor's residency does."""

    def __init__(self, root: Path):
        self.root = root
        self.loaded: dict[str, object] = {}

    def get(self, role: str):
        if role not in self.loaded:
            kind, folder = KINDS[role]
            self.loaded[role] = load_model(kind, self.root / folder)
        return self.loaded[role]

    def reload(self, role: str):
        """A fresh copy from disk, as ``Residency.reload`` gives."""
        self.loaded.pop(role, None)
        return self.get(role)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "tiny-models"
    build_tiny(root)
    return root


@pytest.fixture(scope="module")
def provider(tiny_root) -> Provider:
    return Provider(tiny_root)


@pytest.fixture
def ctx(provider, tiny_root):
    def resolve(name: str, family: str) -> Path:
        return tiny_root / "lora_adpts" / family / f"{name}.safetensors"

    calls: list[tuple[int, int]] = []
    c = StageContext(models=provider, resolve_lora=resolve, progress=lambda s, t: calls.append((s, t)))
    c.extra["progress_calls"] = calls
    return c


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype for one test: the official interpolators build their warp
    grids and lookup windows in the default dtype, so float64 comparisons need it."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)
