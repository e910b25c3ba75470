"""The tiny models' revision (part of every key on the tiny profile) changes when what the tiny
builders make changes, and only then: moving their code keeps it, so keys and locks stay put."""

from __future__ import annotations

from cinesynth_batch.catalog import registry
from cinesynth_batch.catalog.registry import (TINY_REVISION, TINY_SOURCES, TINY_SOURCES_DIGEST, Registry,
                                              tiny_sources_digest)


def test_tiny_sources_are_the_recorded_ones():
    assert tiny_sources_digest() == TINY_SOURCES_DIGEST, (
        "the tiny builders' sources changed. If the models they build changed (rebuild and compare "
        "tiny.json), give TINY_REVISION a new value; in either case record the new digest in "
        f"TINY_SOURCES_DIGEST: {tiny_sources_digest()}")


def test_the_digest_reads_every_source(tmp_path, monkeypatch):
    """Each listed file counts: the digest changes when one of them changes."""
    package = tmp_path / "cinesynth_batch"
    for name in TINY_SOURCES:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(name)
    monkeypatch.setattr(registry, "__file__", str(package / "catalog" / "registry.py"))
    first = tiny_sources_digest()
    seen = {first}
    for name in TINY_SOURCES:
        (package / name).write_text(name + " changed")
        seen.add(tiny_sources_digest())
    assert len(seen) == len(TINY_SOURCES) + 1


def test_tiny_identity_names_the_revision(tmp_path):
    reg = Registry.load("tiny", spec_dir=tmp_path, root=tmp_path, home=tmp_path)
    ident = reg.identity("video")
    assert ident["revision"] == TINY_REVISION
    assert reg.tiny_root() == tmp_path / "models" / TINY_REVISION
