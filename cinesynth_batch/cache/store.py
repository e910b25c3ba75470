"""Content-addressed artifact store.

Layout under the cache root::

    objects/ab/abcdef...<ext>   artifacts, named by the sha256 of their bytes
    keys/12/1234....json         content key -> {digest, ext, size, stamp, node, kind, meta}
    tmp/<host>_<pid>_<n>_<t>/    scratch space of running stages
    leases/  gc.lock             what running renders hold (see ``lease.py``)
    locks/12/1234....lock        one render at a time per key (see ``keylock.py``)
    state.json                   stat-keyed digests of source files

An artifact enters ``objects/`` only by ``os.replace`` of a finished file, and a key entry is
written (also by rename) only after its object is in place, so a killed render never leaves
a partial artifact behind a key. Nothing read from the store is trusted: an object is checked
against its digest before it is read as an input or published. The key entry records the
object's (size, mtime_ns, inode) at commit; while they are unchanged the object is the one
that was hashed, otherwise it is hashed again. A damaged entry is dropped with a warning and
its stage runs again. ``verify`` hashes every object (like ``git fsck``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..procs import pid_alive
from .digest import sha256_file
from .entries import ENTRY_MAX_BYTES, entry_fields
from .files import write_atomic
from .keylock import remove_unheld
from .lease import Lease, gc_exclusive, live_leases

_HOST = socket.gethostname().replace("_", "-")


@dataclass(frozen=True)
class Entry:
    key: str
    digest: str
    ext: str
    size: int
    node: str
    kind: str
    meta: dict[str, Any]
    stamp: tuple[int, int, int] | None = None     # the object's (size, mtime_ns, inode) at commit


# young objects and keys are kept by gc: a render may have made them and not named them yet
YOUNG_MARGIN_NS = 2_000_000_000


class CacheStore:
    def __init__(self, root: Path, warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self._warn = warn or (lambda msg: None)
        self._counter = itertools.count()
        self.lease: Lease | None = None    # held by a render: what it may read or publish
        self.found_damaged: set[str] = set()    # keys whose object was found damaged and dropped

    def warn(self, message: str) -> None:
        self._warn(message)

    def take_lease(self) -> Lease:
        self.lease = Lease.take(self.root)
        return self.lease

    def release_lease(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def guard(self):
        """Keep ``gc`` out while entries are looked up and named in the lease."""
        return self.lease.guard() if self.lease is not None else nullcontext()

    # -- paths -------------------------------------------------------------------------------
    def object_path(self, digest: str, ext: str) -> Path:
        return self.root / "objects" / digest[:2] / f"{digest}{ext}"

    def key_path(self, key: str) -> Path:
        return self.root / "keys" / key[:2] / f"{key}.json"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    # -- lookups -----------------------------------------------------------------------------
    def lookup(self, key: str) -> Entry | None:
        """The entry for ``key`` if its object is present with the right size (no hashing).
        A render's lease names it before ``gc`` may look again."""
        with self.guard():
            entry = self._lookup(key)
            if entry is not None and self.lease is not None:
                self.lease.hold([entry.digest], [key])
        return entry

    def _lookup(self, key: str) -> Entry | None:
        kp = self.key_path(key)
        try:
            fields = _read_entry(kp)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._warn(f"cache entry {key[:12]} is unreadable; dropping it")
            _unlink(kp)
            return None
        entry = Entry(key=key, **fields)
        try:
            if self.object_path(entry.digest, entry.ext).stat().st_size != entry.size:
                raise FileNotFoundError
        except FileNotFoundError:
            _unlink(kp)
            return None
        return entry

    def check(self, entry: Entry, full: bool = False) -> str:
        """``ok``, ``missing`` or ``damaged``. Hashes the object unless its (size, mtime_ns,
        inode) are those recorded at commit (``full`` hashes always)."""
        p = self.object_path(entry.digest, entry.ext)
        try:
            st = p.stat()
            if not full and entry.stamp is not None and \
                    tuple(entry.stamp) == (st.st_size, st.st_mtime_ns, st.st_ino):
                return "ok"
            return "ok" if sha256_file(p) == entry.digest else "damaged"
        except FileNotFoundError:
            return "missing"

    def verified_path(self, entry: Entry, full: bool = False) -> Path | None:
        """The object's path after checking its digest; None (entry dropped) if damaged or gone."""
        state = self.check(entry, full)
        if state == "ok":
            return self.object_path(entry.digest, entry.ext)
        self.drop_damaged(entry) if state == "damaged" else self.drop_missing(entry)
        return None

    def drop_damaged(self, entry: Entry) -> None:
        self.found_damaged.add(entry.key)
        self._warn(f"cache object {entry.digest[:12]} for {entry.node} is damaged; "
                   "dropping it, the stage will run again")
        _unlink(self.object_path(entry.digest, entry.ext))
        _unlink(self.key_path(entry.key))

    def drop_missing(self, entry: Entry) -> None:
        self._warn(f"cache object {entry.digest[:12]} for {entry.node} is gone; the stage will run again")
        _unlink(self.key_path(entry.key))

    # -- writes ------------------------------------------------------------------------------
    def scratch(self) -> Path:
        """A fresh scratch folder for one stage run (same filesystem as objects/)."""
        d = self.root / "tmp" / f"{_HOST}_{os.getpid()}_{next(self._counter)}_{time.monotonic_ns()}"
        d.mkdir(parents=True, exist_ok=False)
        return d

    def commit(self, key: str, produced: Path, ext: str, node: str, kind: str,
               meta: dict[str, Any]) -> Entry:
        """Move a finished file into the store and record it under ``key``."""
        return self.install(key, produced, sha256_file(produced), ext, node, kind, meta)

    def install(self, key: str, produced: Path, digest: str, ext: str, node: str, kind: str,
                meta: dict[str, Any]) -> Entry:
        """``commit`` of a file whose bytes were already hashed to ``digest`` by the caller."""
        size = produced.stat().st_size
        target = self.object_path(digest, ext)
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync_file(produced)
        with self.guard():
            if self.lease is not None:
                self.lease.hold([digest], [key])
            if _same_object(target, size, digest):
                produced.unlink()
            else:
                os.replace(produced, target)
            st = target.stat()
            entry = Entry(key, digest, ext, size, node, kind, meta, (st.st_size, st.st_mtime_ns, st.st_ino))
            write_atomic(self.key_path(key), json.dumps(
                {"digest": digest, "ext": ext, "size": size, "stamp": list(entry.stamp), "node": node,
                 "kind": kind, "meta": meta}, sort_keys=True), fsync=True)
        return entry

    def drop(self, key: str) -> bool:
        """Forget ``key`` (the object stays until gc). Returns whether it existed."""
        kp = self.key_path(key)
        existed = kp.exists()
        _unlink(kp)
        return existed

    # -- housekeeping ------------------------------------------------------------------------
    def clean_stale_tmp(self) -> int:
        """Remove scratch folders of this host's processes that are gone (killed renders)."""
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return 0
        removed = 0
        for d in tmp.iterdir():
            host, _, rest = d.name.partition("_")
            pid_text = rest.split("_", 1)[0]
            if host != _HOST or not pid_text.isdigit() or pid_alive(int(pid_text)):
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
        return removed

    def gc(self, max_size: int | None = None, keep: set[str] | None = None) -> dict[str, int]:
        """Delete unreferenced objects; then, over ``max_size`` bytes, the least recently
        written entries not in ``keep`` (digests) until the store fits. Whatever a running
        render's lease names, and anything written since the oldest lease began, stays."""
        with gc_exclusive(self.root):
            self.clean_stale_tmp()
            remove_unheld(self.root)
            live = live_leases(self.root)
            return self._collect(max_size, set(keep or ()) | live.digests, live)

    def _collect(self, max_size: int | None, keep: set[str], live) -> dict[str, int]:
        young = (live.oldest_ns - YOUNG_MARGIN_NS) if live.oldest_ns is not None else None

        def pinned(path: Path, digest: str | None = None) -> bool:
            if digest is not None and digest in keep:
                return True
            return young is not None and _mtime_ns(path) >= young

        for tmp in (self.root / "keys").glob("*/.*.tmp"):     # key writes cut by a kill
            if not pinned(tmp):
                _unlink(tmp)
        entries = self._key_entries()
        referenced = {data["digest"] for _, _, data in entries}
        stats = {"objects_removed": 0, "keys_removed": 0, "bytes_freed": 0}
        for obj in list((self.root / "objects").glob("*/*")):
            digest = obj.name.split(".")[0]
            if digest not in referenced and not pinned(obj, digest):
                stats["bytes_freed"] += _remove(obj)
                stats["objects_removed"] += 1
        if max_size is None:
            return stats
        sizes = {o.name.split(".")[0]: _size(o) for o in (self.root / "objects").glob("*/*")}
        total = sum(sizes.values())
        users: dict[str, int] = {}
        for _, _, data in entries:
            users[data["digest"]] = users.get(data["digest"], 0) + 1
        for _, kp, data in sorted(entries, key=lambda e: e[0]):
            if total <= max_size:
                break
            key = kp.name[:-len(".json")]
            if key in live.keys or pinned(kp, data["digest"]):
                continue
            _unlink(kp)
            stats["keys_removed"] += 1
            users[data["digest"]] -= 1
            obj = self.object_path(data["digest"], data["ext"])
            if users[data["digest"]] == 0 and data["digest"] in sizes and not pinned(obj):
                _unlink(obj)
                total -= sizes[data["digest"]]
                stats["bytes_freed"] += sizes[data["digest"]]
                stats["objects_removed"] += 1
        return stats

    def _key_entries(self) -> list[tuple[float, Path, dict]]:
        entries: list[tuple[float, Path, dict]] = []
        for kp in (self.root / "keys").glob("*/*.json"):
            try:
                fields = _read_entry(kp)
                entries.append((kp.stat().st_mtime, kp, {"digest": fields["digest"], "ext": fields["ext"]}))
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                _unlink(kp)
        return entries

    def verify(self, repair: bool = False) -> dict[str, int]:
        """Hash every object against its name and check every key's object (``git fsck``).
        ``repair`` drops damaged objects, their keys and keys whose object is gone."""
        damaged: set[str] = set()
        verified = 0
        for obj in sorted((self.root / "objects").glob("*/*")):
            if not obj.is_file() or obj.is_symlink():
                continue
            verified += 1
            if sha256_file(obj) != obj.name.split(".")[0]:
                damaged.add(obj.name.split(".")[0])
                if repair:
                    _unlink(obj)
        dangling = 0
        for _, kp, data in self._key_entries():
            obj = self.object_path(data["digest"], data["ext"])
            if data["digest"] in damaged or not obj.is_file():
                dangling += data["digest"] not in damaged
                if repair:
                    _unlink(kp)
        return {"verified": verified, "damaged": len(damaged), "dangling": dangling}

    def size(self) -> int:
        return sum(_size(o) for o in (self.root / "objects").glob("*/*"))


def _read_entry(kp: Path) -> dict[str, Any]:
    """A key entry's fields (``cache/entries.py``); ValueError when it is too large or not one,
    since its digest and extension would then name a file anywhere."""
    if kp.stat().st_size > ENTRY_MAX_BYTES:
        raise ValueError("too large")
    fields = entry_fields(json.loads(kp.read_text()))
    if fields is None:
        raise ValueError("not an entry")
    return fields


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def _mtime_ns(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _remove(p: Path) -> int:
    size = _size(p)
    _unlink(p)
    return size


def _same_object(target: Path, size: int, digest: str) -> bool:
    """Whether ``target`` already holds these bytes (a damaged copy is replaced)."""
    try:
        return target.stat().st_size == size and sha256_file(target) == digest
    except FileNotFoundError:
        return False


def _fsync_file(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


