"""Leases: what a running render may still read or publish, so that ``gc`` leaves it alone.

A render holds one lease while it runs::

    leases/<host>_<pid>_<n>.lock   flock'ed (exclusive) for the render's life
    leases/<host>_<pid>_<n>.json   {host, pid, started_ns, digests, keys}, replaced as it grows

The kernel releases the flock when the process ends, however it ends, so a lease whose
lock can be taken belongs to a dead render and is ignored (and removed by ``gc``).

``gc.lock`` at the cache root orders the two sides: ``gc`` holds it exclusively for its
whole pass; a render holds it shared while it looks entries up and names them in its lease
(``guard``), so ``gc`` never sees an entry that a render found but has not named yet.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .files import write_atomic

_HOST = socket.gethostname().replace("_", "-")
STALE_TMP_NS = 60_000_000_000     # a lease still being taken is younger than this


@dataclass
class LiveLeases:
    """What every live render holds: ``gc`` keeps these and anything younger."""

    digests: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    oldest_ns: int | None = None


@dataclass
class Lease:
    root: Path
    started_ns: int
    name: str
    _fd: int = -1
    _digests: set[str] = field(default_factory=set)
    _keys: set[str] = field(default_factory=set)
    _depth: int = 0
    _guard_fd: int = -1
    _dirty: bool = False

    @classmethod
    def take(cls, cache_root: Path) -> "Lease":
        folder = Path(cache_root) / "leases"
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time_ns()
        lease = cls(root=Path(cache_root), started_ns=started,
                    name=f"{_HOST}_{os.getpid()}_{started}")
        # locked under a hidden name, then renamed: gc never sees an unlocked lease of a live render
        hidden = folder / f".{lease.name}.lock.tmp"
        lease._fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        fcntl.flock(lease._fd, fcntl.LOCK_EX)
        lease._write()
        os.rename(hidden, folder / f"{lease.name}.lock")
        return lease

    @property
    def path(self) -> Path:
        return self.root / "leases" / f"{self.name}.json"

    def hold(self, digests: set[str] | list[str] = (), keys: set[str] | list[str] = ()) -> None:
        """Name more objects and keys this render may read or publish."""
        new_d, new_k = set(digests) - self._digests, set(keys) - self._keys
        if not new_d and not new_k:
            return
        self._digests |= new_d
        self._keys |= new_k
        self._dirty = True
        if self._depth == 0:
            self._write()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Keep ``gc`` out while entries are looked up and named (re-entrant)."""
        if self._depth == 0:
            self._guard_fd = _open_gc_lock(self.root)
            fcntl.flock(self._guard_fd, fcntl.LOCK_SH)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                if self._dirty:
                    self._write()
                os.close(self._guard_fd)
                self._guard_fd = -1

    def release(self) -> None:
        if self._fd < 0:
            return
        for suffix in (".json", ".lock"):
            try:
                (self.root / "leases" / f"{self.name}{suffix}").unlink()
            except FileNotFoundError:
                pass
        os.close(self._fd)
        self._fd = -1

    def _write(self) -> None:
        data = {"host": _HOST, "pid": os.getpid(), "started_ns": self.started_ns,
                "digests": sorted(self._digests), "keys": sorted(self._keys)}
        write_atomic(self.path, json.dumps(data, separators=(",", ":")))
        self._dirty = False


@contextmanager
def gc_exclusive(cache_root: Path) -> Iterator[None]:
    """Held by ``gc`` for its whole pass: renders wait to look entries up meanwhile."""
    fd = _open_gc_lock(Path(cache_root))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def live_leases(cache_root: Path) -> LiveLeases:
    """Read the leases of running renders; remove those whose render is gone."""
    folder = Path(cache_root) / "leases"
    live = LiveLeases()
    if not folder.is_dir():
        return live
    for hidden in folder.glob(".*.lock.tmp"):          # a render killed while taking its lease
        if time.time_ns() - _mtime_ns(hidden) > STALE_TMP_NS and not _held(hidden):
            _unlink(hidden.with_name(hidden.name[1:-len(".lock.tmp")] + ".json"))
            _unlink(hidden)
    for lock in folder.glob("*.lock"):
        data_path = lock.with_suffix(".json")
        if not _held(lock):
            _unlink(data_path)
            _unlink(lock)
            continue
        try:
            data = json.loads(data_path.read_text())
        except (OSError, ValueError):
            data = {"started_ns": _mtime_ns(lock)}
        live.digests.update(data.get("digests", []))
        live.keys.update(data.get("keys", []))
        started = int(data.get("started_ns") or _mtime_ns(lock))
        live.oldest_ns = started if live.oldest_ns is None else min(live.oldest_ns, started)
    return live


def _held(lock: Path) -> bool:
    """Whether a live process holds this lease's flock."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _open_gc_lock(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    return os.open(root / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)


def _mtime_ns(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except FileNotFoundError:
        return time.time_ns()


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass
