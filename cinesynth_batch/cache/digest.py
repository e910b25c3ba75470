"""File digests, remembered by (size, mtime, inode) so unchanged files are hashed once."""

from __future__ import annotations

import hashlib
import json
import os
import re
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


#: a larger digest table is not read (hundreds of thousands of source files fit)
STATE_MAX_BYTES = 64 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _row_ok(row: object) -> bool:
    return isinstance(row, list) and len(row) == 4 and \
        all(isinstance(x, int) and not isinstance(x, bool) for x in row[:3]) and \
        isinstance(row[3], str) and _SHA256.fullmatch(row[3]) is not None


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
        """The table at ``path``; a damaged one (not JSON, over ``STATE_MAX_BYTES``, rows that are
        not ``[size, mtime_ns, inode, sha256]``) loses those rows, which only costs re-hashing."""
        state = cls(path=path)
        if path is not None and path.is_file():
            try:
                if path.stat().st_size > STATE_MAX_BYTES:
                    raise ValueError("too large")
                table = json.loads(path.read_text())
            except (OSError, ValueError):
                table = {}
            if isinstance(table, dict):
                state._table = {p: row for p, row in table.items() if _row_ok(row)}
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
