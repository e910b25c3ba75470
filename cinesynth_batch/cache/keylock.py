"""One render at a time per content key: ``locks/<key>.lock``, held with ``fcntl.flock``.

A render takes a key's lock before running its stage; if the key is in the cache once the
lock is taken, another render made it meanwhile and the stage counts as cached. The kernel
releases the lock of a killed holder. A lock file may be removed by ``gc`` while nobody
holds it, so a taker checks that the file it locked is still the one at the path.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def lock_path(cache_root: Path, key: str) -> Path:
    return Path(cache_root) / "locks" / key[:2] / f"{key}.lock"


@contextmanager
def key_lock(cache_root: Path, key: str) -> Iterator[None]:
    """Hold the lock of ``key`` (waiting for another holder) for the ``with`` block."""
    path = lock_path(cache_root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path)
    try:
        yield
    finally:
        os.close(fd)


def remove_unheld(cache_root: Path) -> int:
    """Delete lock files nobody holds (``gc``); returns how many."""
    removed = 0
    for path in (Path(cache_root) / "locks").glob("*/*.lock"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
            removed += 1
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)
    return removed


def _acquire(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)        # removed while we waited: lock the file now at the path
