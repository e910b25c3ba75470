import json
import os
from pathlib import Path

from cinesynth_batch.cache.digest import DigestState, sha256_file
from cinesynth_batch.cache.lock import Lock, LockEntry
from cinesynth_batch.cache.store import CacheStore


def produce(store: CacheStore, data: bytes) -> Path:
    d = store.scratch()
    p = d / "out.bin"
    p.write_bytes(data)
    return p


def test_commit_then_lookup_roundtrip(tmp_path):
    store = CacheStore(tmp_path)
    entry = store.commit("k" * 64, produce(store, b"hello"), ".bin", "s.image", "image", {"w": 1})
    again = store.lookup("k" * 64)
    assert again == entry
    assert store.object_path(entry.digest, ".bin").read_bytes() == b"hello"
    assert entry.digest == sha256_file(store.object_path(entry.digest, ".bin"))
    assert store.lookup("x" * 64) is None


def test_damaged_object_is_dropped_with_warning(tmp_path):
    warnings = []
    store = CacheStore(tmp_path, warn=warnings.append)
    entry = store.commit("a" * 64, produce(store, b"good bytes"), ".bin", "n", "image", {})
    obj = store.object_path(entry.digest, ".bin")
    obj.write_bytes(b"bad bytes!")  # same size, different content
    assert store.lookup("a" * 64) is not None  # size matches: lookup does not hash
    assert store.verified_path(entry) is None
    assert "damaged" in warnings[0]
    assert store.lookup("a" * 64) is None and not obj.exists()


def test_truncated_object_is_a_miss(tmp_path):
    store = CacheStore(tmp_path)
    entry = store.commit("b" * 64, produce(store, b"0123456789"), ".bin", "n", "image", {})
    store.object_path(entry.digest, ".bin").write_bytes(b"0123")
    assert store.lookup("b" * 64) is None


def test_scratch_of_dead_process_is_cleaned(tmp_path):
    store = CacheStore(tmp_path)
    mine = store.scratch()
    import socket

    host = socket.gethostname().replace("_", "-")
    dead = tmp_path / "tmp" / f"{host}_999999999_0_1"
    dead.mkdir(parents=True)
    (dead / "out.mp4").write_bytes(b"partial")
    assert store.clean_stale_tmp() == 1
    assert mine.exists() and not dead.exists()


def test_gc_removes_unreferenced_and_shrinks(tmp_path):
    store = CacheStore(tmp_path)
    e1 = store.commit("1" * 64, produce(store, b"a" * 1000), ".bin", "n1", "image", {})
    e2 = store.commit("2" * 64, produce(store, b"b" * 1000), ".bin", "n2", "image", {})
    os.utime(store.key_path("1" * 64), (1, 1))  # oldest
    store.drop("2" * 64)
    stats = store.gc()
    assert stats["objects_removed"] == 1 and not store.object_path(e2.digest, ".bin").exists()
    e3 = store.commit("3" * 64, produce(store, b"c" * 1000), ".bin", "n3", "image", {})
    stats = store.gc(max_size=1500)
    assert stats["keys_removed"] == 1
    assert store.lookup("1" * 64) is None and store.lookup("3" * 64) == e3
    assert e1.digest != e3.digest


def test_digest_state_rehashes_only_changed_files(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one")
    state = DigestState.open(tmp_path / "state.json")
    d1 = state.digest(f)
    state.save()
    again = DigestState.open(tmp_path / "state.json")
    assert again.digest(f) == d1 and not again._dirty
    f.write_text("two!")
    assert again.digest(f) != d1


def test_lock_roundtrip_is_stable(tmp_path):
    lock = Lock(project="p", profile="tiny")
    lock.stages["b.image"] = LockEntry("image", "k2", {"id": "m", "revision": "r"},
                                       {"seed": 7, "prompt": "x"}, {}, {"digest": "d"})
    lock.stages["a.image"] = LockEntry("image", "k1", None, {"seed": 3}, {"image": "d0"}, {"digest": "e"})
    path = tmp_path / "render.lock"
    lock.write(path)
    first = path.read_bytes()
    back = Lock.read(path)
    assert back.seed_for("b.image") == 7 and back.seed_for("zzz") is None
    back.write(path)
    assert path.read_bytes() == first
    assert list(json.loads(json.dumps(back.to_dict()))["stages"]) == ["a.image", "b.image"]
