"""Writing files safely: a fresh temp file (never through a planted link), then a rename."""

from __future__ import annotations

import os
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def open_fresh(path: Path) -> int:
    """A new file at ``path`` opened for writing; refuses to follow or reuse what is there."""
    return os.open(path, _FLAGS, 0o644)


def temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def write_atomic(path: Path, text: str | bytes, fsync: bool = False) -> None:
    """Replace ``path`` with ``text``: readers see the old file or the new one, never a part.
    A symlink at ``path`` is replaced, not followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    tmp = temp_beside(path)
    try:
        fd = open_fresh(tmp)
    except OSError as exc:          # name the file asked for, not its temporary neighbour
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
