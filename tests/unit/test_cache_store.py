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


def test_a_damaged_digest_table_costs_a_rehash_not_the_render(tmp_path, monkeypatch):
    """state.json rows that are not [size, mtime_ns, inode, sha256] are dropped (a row of 5 or a
    table that is a list crashed the render); an oversized table is not read at all."""
    from cinesynth_batch.cache import digest as digest_module

    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("one")
    bad.write_text("two")
    state = DigestState.open(tmp_path / "state.json")
    want = {f: state.digest(f) for f in (good, bad)}
    state.save()
    table = json.loads((tmp_path / "state.json").read_text())
    table[str(bad)] = 5
    table["/elsewhere"] = [1, 2, 3, "../../not-a-digest"]
    (tmp_path / "state.json").write_text(json.dumps(table))
    again = DigestState.open(tmp_path / "state.json")
    assert set(again._table) == {str(good)}
    assert {f: again.digest(f) for f in (good, bad)} == want and again._dirty
    for text in ("[1, 2, 3]", "not json"):
        (tmp_path / "state.json").write_text(text)
        assert DigestState.open(tmp_path / "state.json")._table == {}
    again.save()
    assert set(DigestState.open(tmp_path / "state.json")._table) == {str(good), str(bad)}
    monkeypatch.setattr(digest_module, "STATE_MAX_BYTES", 16)
    assert DigestState.open(tmp_path / "state.json")._table == {}


def test_a_lock_of_another_shape_is_read_as_far_as_it_is_one(tmp_path):
    """render.lock is read back from disk, where anyone may have edited it: lists where mappings
    belong crashed the render; rows and seeds of another shape are now left out."""
    path = tmp_path / "render.lock"
    good = {"kind": "image", "key": "k1", "model": None, "params": {"seed": 3}, "inputs": {}, "output": {}}
    for text in ("schema: 1\nstages: [1, 2]\n", "schema: 1\nseeds: [1]\nstages: {}\n",
                 "schema: 1\nproject: [1]\nprofile: {a: 1}\noutputs: 5\n"):
        path.write_text(text)
        lock = Lock.read(path)
        assert (lock.stages, lock.seeds, lock.project, lock.profile, lock.outputs) == ({}, {}, "", "", {})
    path.write_text(json.dumps({"schema": 1, "seeds": {"a.image": 7, "b.image": "x", "c.image": True},
                                "stages": {"a.image": good, "b.image": {"kind": "image", "key": [1]},
                                           "c.image": {**good, "params": [1], "model": "m"}, "d.image": 5}}))
    lock = Lock.read(path)
    assert lock.seeds == {"a.image": 7}
    assert set(lock.stages) == {"a.image", "c.image"}
    assert (lock.stages["c.image"].params, lock.stages["c.image"].model) == ({}, None)
    assert lock.stages["a.image"] == LockEntry("image", "k1", None, {"seed": 3}, {}, {})


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


def _flip(path: Path, at: int = 0, keep_stamp: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    with open(path, "r+b") as f:
        f.write(data)
    if keep_stamp:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_commit_records_the_object_stamp_and_check_trusts_it(tmp_path):
    store = CacheStore(tmp_path)
    entry = store.commit("c" * 64, produce(store, b"0123456789"), ".bin", "n", "image", {})
    obj = store.object_path(entry.digest, ".bin")
    st = obj.stat()
    assert entry.stamp == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert store.lookup("c" * 64).stamp == entry.stamp
    _flip(obj, keep_stamp=True)              # same size, mtime and inode: the cheap check trusts it
    assert store.check(entry) == "ok"
    assert store.check(entry, full=True) == "damaged"
    _flip(obj, at=3)                         # a write moves mtime: hashed, found damaged
    assert store.check(entry) == "damaged"
    obj.unlink()
    assert store.check(entry) == "missing"


def test_commit_replaces_a_damaged_copy_of_the_same_object(tmp_path):
    store = CacheStore(tmp_path)
    entry = store.commit("d" * 64, produce(store, b"same bytes"), ".bin", "n", "image", {})
    obj = store.object_path(entry.digest, ".bin")
    _flip(obj)
    again = store.commit("e" * 64, produce(store, b"same bytes"), ".bin", "n", "image", {})
    assert again.digest == entry.digest and obj.read_bytes() == b"same bytes"


def test_verify_counts_and_repair(tmp_path):
    store = CacheStore(tmp_path)
    good = store.commit("1" * 64, produce(store, b"good"), ".bin", "a", "image", {})
    bad = store.commit("2" * 64, produce(store, b"will be damaged"), ".bin", "b", "image", {})
    gone = store.commit("3" * 64, produce(store, b"will vanish"), ".bin", "c", "image", {})
    _flip(store.object_path(bad.digest, ".bin"))
    store.object_path(gone.digest, ".bin").unlink()
    assert store.verify() == {"verified": 2, "damaged": 1, "dangling": 1}
    assert store.key_path("2" * 64).exists()           # without repair nothing changes
    assert store.verify(repair=True) == {"verified": 2, "damaged": 1, "dangling": 1}
    assert not store.key_path("2" * 64).exists() and not store.key_path("3" * 64).exists()
    assert not store.object_path(bad.digest, ".bin").exists()
    assert store.verify() == {"verified": 1, "damaged": 0, "dangling": 0}
    assert store.lookup("1" * 64) == good


def test_gc_keeps_what_a_live_lease_names_and_what_is_younger(tmp_path):
    render_side = CacheStore(tmp_path)
    old = render_side.commit("1" * 64, produce(render_side, b"a" * 1000), ".bin", "n1", "image", {})
    for p in (render_side.key_path("1" * 64), render_side.object_path(old.digest, ".bin")):
        os.utime(p, (1, 1))
    render_side.take_lease()
    assert render_side.lookup("1" * 64) == old           # the lookup names it in the lease
    young = render_side.scratch() / "out.bin"
    young.write_bytes(b"y" * 1000)
    loose = render_side.object_path("f" * 64, ".bin")   # an object not yet behind a key
    loose.parent.mkdir(parents=True, exist_ok=True)
    os.replace(young, loose)
    gc_side = CacheStore(tmp_path)
    stats = gc_side.gc(max_size=1)
    assert stats == {"objects_removed": 0, "keys_removed": 0, "bytes_freed": 0}
    assert gc_side.lookup("1" * 64) == old and loose.exists()
    render_side.release_lease()
    assert not list((tmp_path / "leases").iterdir())
    stats = gc_side.gc(max_size=1)
    assert stats["keys_removed"] == 1 and stats["objects_removed"] == 2
    assert gc_side.lookup("1" * 64) is None and not loose.exists()


HOLD = """
import sys, time
from pathlib import Path
from cinesynth_batch.cache.store import CacheStore
from cinesynth_batch.cache.keylock import key_lock
store = CacheStore(Path(sys.argv[1]))
store.take_lease()
assert store.lookup(sys.argv[2]) is not None
with key_lock(store.root, sys.argv[2]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(tmp_path, key):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), key], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_renders_lease_and_key_lock_are_ignored(tmp_path):
    import signal
    import threading

    from cinesynth_batch.cache.keylock import key_lock, remove_unheld

    store = CacheStore(tmp_path)
    store.commit("4" * 64, produce(store, b"x" * 100), ".bin", "n", "image", {})
    proc = _holder(tmp_path, "4" * 64)
    assert store.gc(max_size=1)["keys_removed"] == 0          # live lease: kept
    assert remove_unheld(tmp_path) == 0                        # held lock file stays
    got = threading.Event()

    def take():
        with key_lock(tmp_path, "4" * 64):
            got.set()

    t = threading.Thread(target=take)
    t.start()
    assert not got.wait(0.5)                                   # waits for the holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert got.wait(10)                                        # the kernel released its lock
    t.join()
    assert store.gc(max_size=1)["keys_removed"] == 1           # its lease no longer counts
    assert not list((tmp_path / "leases").glob("*"))
    assert not list((tmp_path / "locks").glob("*/*.lock"))     # gc removed the unheld lock file
