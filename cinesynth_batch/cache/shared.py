"""A local store in front of a shared remote one (``remote.py``): the local store is the
read-through copy every stage reads from and writes to, as without a remote.

* ``lookup``: a key not held locally is looked up on the remote; its object is downloaded,
  hashed on the way (a damaged one is deleted from the remote with its entry, and the stage runs
  again with that reason) and installed in the local store under the key.
* ``commit``: the result is committed locally, then its object is uploaded under its digest and
  checked on the server, and only then is its key entry written on the remote. An upload that
  fails leaves the result local (with a warning); ``cinesynth cache push`` sends it later.
* A render holds a lease on both stores (``lease.py``, ``remote_lease.py``).
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .remote import RemoteEntry, RemoteStore
from .remote_lease import RemoteLease
from .store import CacheStore, Entry


class SharedStore(CacheStore):
    def __init__(self, root: Path, remote: RemoteStore, lease_seconds: float,
                 warn: Callable[[str], None] | None = None):
        super().__init__(root, warn=warn)
        self.remote = remote
        self.lease_seconds = lease_seconds
        self.remote_lease: RemoteLease | None = None
        self.offline = False        # the remote could not be reached: local store only from now on
        self._depth = 0

    def take_lease(self):
        lease = super().take_lease()
        try:
            self.remote_lease = RemoteLease.take(self.remote, self.lease_seconds)
        except Exception as exc:  # noqa: BLE001 - an unreachable remote must not fail the render
            self._unreachable(exc)
        return lease

    def _unreachable(self, exc: BaseException) -> None:
        if not self.offline:
            self.warn(f"remote cache {self.remote.url} cannot be reached ({type(exc).__name__}: {exc}); "
                      "using the local cache only")
        self.offline = True

    def release_lease(self) -> None:
        super().release_lease()
        if self.remote_lease is not None:
            self.remote_lease.release()
            self.remote_lease = None

    @contextmanager
    def guard(self) -> Iterator[None]:
        """The local guard; on leaving the outermost one, what was named goes to the remote lease."""
        self._depth += 1
        try:
            with super().guard():
                yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self.remote_lease is not None and not self.offline:
                try:
                    self.remote_lease.flush()
                except Exception as exc:  # noqa: BLE001
                    self._unreachable(exc)

    def lookup(self, key: str) -> Entry | None:
        entry = super().lookup(key)
        if entry is not None or self.offline:
            return entry
        with self.guard():
            try:
                found = self.remote.entry(key)
            except Exception as exc:  # noqa: BLE001 - an unreachable remote must not fail the render
                self._unreachable(exc)
                return None
            if found is None:
                return None
            if self.remote_lease is not None:
                self.remote_lease.hold([found.digest], [key])
            tmp = self.scratch()
            try:
                dest = tmp / f"out{found.ext}"
                try:
                    state = self.remote.fetch(found, dest)
                except Exception as exc:  # noqa: BLE001
                    self._unreachable(exc)
                    return None
                if state == "damaged":
                    self.found_damaged.add(key)
                    self.remote.drop_damaged(found)
                    return None
                if state == "missing":
                    self.remote.drop_missing(found)
                    return None
                return self.install(key, dest, found.digest, found.ext, found.node, found.kind, found.meta)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, key: str, produced: Path, ext: str, node: str, kind: str,
               meta: dict[str, Any]) -> Entry:
        entry = super().commit(key, produced, ext, node, kind, meta)
        self.share(entry)
        return entry

    def share(self, entry: Entry) -> bool:
        """Upload a committed entry's object, then its key entry. False (with a warning) when
        the remote cannot take it: the result stays in the local store."""
        if self.offline:
            return False
        try:
            lease = self.remote_lease or RemoteLease.take(self.remote, self.lease_seconds)
            try:
                send(self.remote, self.object_path(entry.digest, entry.ext), entry, lease)
            finally:
                if lease is not self.remote_lease:      # a process that holds no lease (a rank)
                    lease.release()
            return True
        except Exception as exc:  # noqa: BLE001 - an unreachable remote must not fail the render
            self.warn(f"could not upload {entry.node} ({entry.digest[:12]}) to {self.remote.url}: "
                      f"{exc}; it stays in the local cache ('cinesynth cache push' sends it later)")
            return False


def send(remote: RemoteStore, local_object: Path, entry: Entry, lease: RemoteLease | None) -> bool:
    """Upload ``local_object`` (already checked against ``entry.digest``) and then the key entry.
    The lease names both before anything is sent, and a running remote ``gc`` is waited for
    (see ``remote_lease.py``). Returns whether the object was sent (False: it was there)."""
    if lease is not None:
        lease.hold([entry.digest], [entry.key])
        lease.flush()
        lease.wait_for_gc()
    sent = remote.upload(local_object, entry.digest, entry.ext)
    remote.put_entry(RemoteEntry(entry.key, entry.digest, entry.ext, entry.size, entry.node, entry.kind,
                                 entry.meta))
    return sent

