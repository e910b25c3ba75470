"""The revisions of the built-in random-weight profiles (part of every key on them) change when
what their builders make changes, and only then: moving the builders' code keeps them, so keys
and locks stay put."""

from __future__ import annotations

import pytest

from cinesynth_batch.catalog import registry
from cinesynth_batch.catalog.registry import (SHAPES_REVISION, SHAPES_SOURCES, SHAPES_SOURCES_DIGEST, TINY_REVISION,
                                              TINY_SOURCES, TINY_SOURCES_DIGEST, Registry, sources_digest)

PROFILES = {"tiny": (TINY_SOURCES, TINY_SOURCES_DIGEST, "TINY"), "shapes": (SHAPES_SOURCES, SHAPES_SOURCES_DIGEST,
                                                                           "SHAPES")}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_builder_sources_are_the_recorded_ones(profile):
    sources, recorded, prefix = PROFILES[profile]
    now = sources_digest(sources)
    assert now == recorded, (
        f"the {profile} builders' sources changed. If the models they build changed (architectures, dtypes, "
        f"weight draws: rebuild and compare), give {prefix}_REVISION a new value; in either case record the "
        f"new digest in {prefix}_SOURCES_DIGEST: {now}")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_digest_reads_every_source(tmp_path, monkeypatch, profile):
    """Each listed file counts: the digest changes when one of them changes."""
    sources = PROFILES[profile][0]
    package = tmp_path / "cinesynth_batch"
    for name in sources:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(name)
    monkeypatch.setattr(registry, "__file__", str(package / "catalog" / "registry.py"))
    seen = {sources_digest(sources)}
    for name in sources:
        (package / name).write_text(name + " changed")
        seen.add(sources_digest(sources))
    assert len(seen) == len(sources) + 1


def test_tiny_identity_names_the_revision(tmp_path):
    reg = Registry.load("tiny", spec_dir=tmp_path, root=tmp_path, home=tmp_path)
    ident = reg.identity("video")
    assert ident["revision"] == TINY_REVISION
    assert reg.tiny_root() == tmp_path / "models" / TINY_REVISION
    assert SHAPES_REVISION != TINY_REVISION
