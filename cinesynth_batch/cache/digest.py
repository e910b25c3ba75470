"""File digests, remembered by (size, mtime, inode) so unchanged files are hashed once."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .files import write_atomic

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class DigestState:
    """A small stat-keyed table of file digests (like DVC's state database).

    The table lives in one JSON file in the cache; a file whose size, mtime or inode changed
    is hashed again. Saving is atomic (temp file + rename); a lost update only costs a re-hash.
    """

    path: Path | None = None
    _table: dict[str, list] = field(default_factory=dict)
    _dirty: bool = False

    @classmethod
    def open(cls, path: Path | None) -> "DigestState":
        state = cls(path=path)
        if path is not None and path.is_file():
            try:
                state._table = json.loads(path.read_text())
            except (OSError, ValueError):
                state._table = {}
        return state

    def digest(self, file: str | Path) -> str:
        p = os.path.abspath(file)
        st = os.stat(p)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self._table.get(p)
        if hit is not None and hit[:3] == stamp:
            return hit[3]
        value = sha256_file(p)
        self._table[p] = [*stamp, value]
        self._dirty = True
        return value

    def save(self) -> None:
        if not self._dirty or self.path is None:
            return
        write_atomic(self.path, json.dumps(self._table, separators=(",", ":")))
        self._dirty = False
