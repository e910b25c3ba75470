"""Content-addressed artifact store.

Layout under the cache root::

    objects/ab/abcdef...<ext>   artifacts, named by the sha256 of their bytes
    keys/12/1234....json         content key -> {digest, ext, size, node, kind, meta}
    tmp/<pid>-<n>/               scratch space of running stages
    state.json                   stat-keyed digests of source files

An artifact enters ``objects/`` only by ``os.replace`` of a finished file, and a key entry is
written (also by rename) only after its object is in place, so a killed render never leaves
a partial artifact behind a key. Reads check the digest; a damaged entry is dropped with a
warning and the stage runs again.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..procs import pid_alive
from .digest import sha256_file

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


class CacheStore:
    def __init__(self, root: Path, warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self._warn = warn or (lambda msg: None)
        self._counter = itertools.count()

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
        """The entry for ``key`` if its object is present with the right size (no hashing)."""
        kp = self.key_path(key)
        try:
            data = json.loads(kp.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._warn(f"cache entry {key[:12]} is unreadable; dropping it")
            _unlink(kp)
            return None
        entry = Entry(key=key, digest=data["digest"], ext=data["ext"], size=data["size"],
                      node=data.get("node", ""), kind=data.get("kind", ""), meta=data.get("meta", {}))
        try:
            if self.object_path(entry.digest, entry.ext).stat().st_size != entry.size:
                raise FileNotFoundError
        except FileNotFoundError:
            _unlink(kp)
            return None
        return entry

    def verified_path(self, entry: Entry) -> Path | None:
        """The object's path after checking its digest; None (entry dropped) if damaged."""
        p = self.object_path(entry.digest, entry.ext)
        try:
            ok = sha256_file(p) == entry.digest
        except FileNotFoundError:
            ok = False
        if not ok:
            self._warn(f"cache object {entry.digest[:12]} for {entry.node} is damaged; "
                       "dropping it, the stage will run again")
            _unlink(p)
            _unlink(self.key_path(entry.key))
            return None
        return p

    # -- writes ------------------------------------------------------------------------------
    def scratch(self) -> Path:
        """A fresh scratch folder for one stage run (same filesystem as objects/)."""
        d = self.root / "tmp" / f"{_HOST}_{os.getpid()}_{next(self._counter)}_{time.monotonic_ns()}"
        d.mkdir(parents=True, exist_ok=False)
        return d

    def commit(self, key: str, produced: Path, ext: str, node: str, kind: str,
               meta: dict[str, Any]) -> Entry:
        """Move a finished file into the store and record it under ``key``."""
        digest = sha256_file(produced)
        size = produced.stat().st_size
        target = self.object_path(digest, ext)
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync_file(produced)
        if target.exists() and target.stat().st_size == size:
            produced.unlink()
        else:
            os.replace(produced, target)
        entry = Entry(key, digest, ext, size, node, kind, meta)
        kp = self.key_path(key)
        kp.parent.mkdir(parents=True, exist_ok=True)
        tmp = kp.with_name(f".{kp.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"digest": digest, "ext": ext, "size": size, "node": node,
                                   "kind": kind, "meta": meta}, sort_keys=True))
        _fsync_file(tmp)
        os.replace(tmp, kp)
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
        written entries not in ``keep`` (digests) until the store fits."""
        self.clean_stale_tmp()
        entries: list[tuple[float, Path, dict]] = []
        for kp in (self.root / "keys").glob("*/*.json"):
            try:
                entries.append((kp.stat().st_mtime, kp, json.loads(kp.read_text())))
            except (OSError, ValueError):
                _unlink(kp)
        referenced = {e[2]["digest"] for e in entries}
        removed_objects = 0
        freed = 0
        objects = list((self.root / "objects").glob("*/*"))
        for obj in objects:
            if obj.name.split(".")[0] not in referenced:
                freed += obj.stat().st_size
                _unlink(obj)
                removed_objects += 1
        removed_keys = 0
        if max_size is not None:
            sizes = {o.name.split(".")[0]: o.stat().st_size for o in (self.root / "objects").glob("*/*")}
            total = sum(sizes.values())
            users: dict[str, int] = {}
            for _, _, data in entries:
                users[data["digest"]] = users.get(data["digest"], 0) + 1
            for _, kp, data in sorted(entries, key=lambda e: e[0]):
                if total <= max_size:
                    break
                if keep and data["digest"] in keep:
                    continue
                _unlink(kp)
                removed_keys += 1
                users[data["digest"]] -= 1
                if users[data["digest"]] == 0 and data["digest"] in sizes:
                    _unlink(self.object_path(data["digest"], data["ext"]))
                    total -= sizes[data["digest"]]
                    freed += sizes[data["digest"]]
                    removed_objects += 1
        return {"objects_removed": removed_objects, "keys_removed": removed_keys, "bytes_freed": freed}

    def size(self) -> int:
        return sum(o.stat().st_size for o in (self.root / "objects").glob("*/*"))


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def _fsync_file(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


