"""Leases on a remote store: what a running render may still read or publish, so that ``gc``
on the remote leaves it alone.

An object store has no ``flock`` that dies with its holder, so a remote lease lives by being
renewed::

    leases/<host>_<pid>_<n>/names-000000.json   written when the lease is taken (its time is
                                                 the lease's start), then one file per batch
                                                 of digests and keys named (never rewritten)
    leases/<host>_<pid>_<n>/alive               rewritten every lease_seconds / 4

A lease whose ``alive`` is older than ``lease_seconds`` belongs to a render that is gone: ``gc``
ignores it and removes it. Every age is read on the server's clock (objects' modification
times), so the clocks of the machines do not matter.

``gc.lock`` orders ``gc`` and uploads as ``gc.lock`` orders them in a local store. ``gc`` creates
it exclusively (``If-None-Match: *``) and only then reads the leases; a render names an object
and its key in its lease and only then looks for ``gc.lock`` (waiting while a ``gc`` runs)
before it uploads the object and writes the entry. Whichever comes second sees the other: ``gc``
sees the names and keeps them, or the render waits until ``gc`` is done. A ``gc.lock`` older
than ``lease_seconds`` is a killed ``gc``'s and is broken.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterator

from .remote import RemoteError, RemoteStore

_HOST = socket.gethostname().replace("_", "-")
WAIT_S = 0.1


@dataclass
class LiveRemoteLeases:
    digests: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    oldest: datetime | None = None


@dataclass
class RemoteLease:
    remote: RemoteStore
    lease_seconds: float
    name: str
    _pending_digests: set[str] = field(default_factory=set)
    _pending_keys: set[str] = field(default_factory=set)
    _named: set[str] = field(default_factory=set)
    _seq: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def take(cls, remote: RemoteStore, lease_seconds: float) -> "RemoteLease":
        lease = cls(remote, lease_seconds, f"{_HOST}_{os.getpid()}_{time.time_ns()}")
        lease._renew()
        lease._write_names([], [])
        lease._thread = threading.Thread(target=lease._beat, name="cinesynth-remote-lease", daemon=True)
        lease._thread.start()
        return lease

    def folder(self) -> str:
        return self.remote.path("leases", self.name)

    def hold(self, digests=(), keys=()) -> None:
        """Name more objects and keys (written by ``flush``)."""
        with self._mutex:
            self._pending_digests |= set(digests) - self._named
            self._pending_keys |= {f"k:{k}" for k in keys} - self._named

    def flush(self) -> None:
        with self._mutex:
            digests, keys = sorted(self._pending_digests), sorted(k[2:] for k in self._pending_keys)
            if not digests and not keys:
                return
            self._write_names(digests, keys)
            self._named |= self._pending_digests | self._pending_keys
            self._pending_digests, self._pending_keys = set(), set()

    def wait_for_gc(self) -> None:
        """Return once no live ``gc`` holds the remote (call after ``flush``)."""
        warned = False
        while (held := gc_lock_time(self.remote)) is not None:
            if (self.remote.now() - held).total_seconds() > self.lease_seconds:
                break       # a killed gc's lock: gc breaks it on its next pass
            if not warned:
                self.remote._warn(f"waiting for a gc of {self.remote.url} to finish")
                warned = True
            time.sleep(WAIT_S)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.remote.fs.rm(self.folder(), recursive=True)
        except FileNotFoundError:
            pass

    def _write_names(self, digests: list[str], keys: list[str]) -> None:
        data = {"host": _HOST, "pid": os.getpid(), "digests": digests, "keys": keys}
        self.remote.fs.pipe_file(f"{self.folder()}/names-{self._seq:06d}.json",
                                 json.dumps(data, separators=(",", ":")).encode())
        self._seq += 1

    def _renew(self) -> None:
        self.remote.fs.pipe_file(f"{self.folder()}/alive", b"")

    def _beat(self) -> None:
        while not self._stop.wait(max(self.lease_seconds / 4, 0.2)):
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - a missed beat must not stop the render
                self.remote._warn(f"could not renew the lease on {self.remote.url}: {exc}")


def gc_lock_time(remote: RemoteStore) -> datetime | None:
    try:
        return remote.fs.info(remote.path("gc.lock"))["LastModified"]
    except FileNotFoundError:
        return None


@contextmanager
def gc_exclusive(remote: RemoteStore, lease_seconds: float) -> Iterator[datetime]:
    """Hold ``gc.lock`` for a ``gc`` pass; yields the server's time when it was taken."""
    path = remote.path("gc.lock")
    for _ in range(2):
        try:
            remote.fs.pipe_file(path, f"{_HOST} {os.getpid()}".encode(), mode="create")
            break
        except FileExistsError:
            held = gc_lock_time(remote)
            if held is not None and (remote.now() - held).total_seconds() <= lease_seconds:
                raise RemoteError(f"another gc is running on {remote.url}",
                                  hint="wait for it, or remove gc.lock if its process is gone")
            remote.remove(path)     # a killed gc's lock
    else:
        raise RemoteError(f"could not take gc.lock on {remote.url}")
    try:
        yield remote.fs.info(path)["LastModified"]
    finally:
        remote.remove(path)


def live_remote_leases(remote: RemoteStore, now: datetime, lease_seconds: float,
                       remove_dead: bool = True) -> LiveRemoteLeases:
    """What live renders name; leases not renewed for ``lease_seconds`` are removed."""
    by_lease: dict[str, dict[str, dict]] = {}
    for path, info in remote.listing("leases").items():
        lease, _, name = path[len(remote.path("leases")) + 1:].partition("/")
        by_lease.setdefault(lease, {})[name] = {**info, "path": path}
    live = LiveRemoteLeases()
    limit = timedelta(seconds=lease_seconds)
    for lease, files in by_lease.items():
        alive = files.get("alive")
        beat = alive["LastModified"] if alive else max(f["LastModified"] for f in files.values())
        if now - beat > limit:
            if remove_dead:
                for f in files.values():
                    remote.remove(f["path"])
            continue
        names = sorted(n for n in files if n.startswith("names-"))
        start = files[names[0]]["LastModified"] if names else beat
        live.oldest = start if live.oldest is None else min(live.oldest, start)
        if not names:
            continue
        raw = remote.fs.cat([files[n]["path"] for n in names], on_error="return")
        for data in raw.values():
            try:
                doc = json.loads(data)
                live.digests.update(d for d in doc.get("digests", []) if isinstance(d, str))
                live.keys.update(k for k in doc.get("keys", []) if isinstance(k, str))
            except (TypeError, ValueError, AttributeError):
                continue
    return live
