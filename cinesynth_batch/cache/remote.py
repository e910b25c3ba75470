"""The shared remote store: the layout of ``store.py`` on an S3-compatible object store,
through fsspec (``s3fs``, imported only when a remote is opened)::

    <bucket>/<prefix>/objects/ab/abcdef...<ext>   artifacts, named by the sha256 of their bytes
    <bucket>/<prefix>/keys/12/1234....json         content key -> {digest, ext, size, node, kind, meta}
    <bucket>/<prefix>/leases/<name>/...            what running renders hold (``remote_lease.py``)
    <bucket>/<prefix>/gc.lock                      held by a running ``gc`` (created exclusively)

An object is uploaded under its digest (uploading it again changes nothing) and checked on the
server before its key entry is written: its size and ETag (the MD5 of its bytes, or of its
parts' MD5s) must be those of the local file, else it is read back and hashed. A reader trusts
nothing it reads: an entry is checked for shape, an object is hashed while it is downloaded and
read no further than its entry's size. A damaged object is deleted with its entry; an entry
whose object is gone is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from ..config import CacheSettings
from ..errors import CinesynthError
from .entries import ENTRY_MAX_BYTES, entry_fields
from .files import open_fresh

PART = 64 << 20                     # upload part size: files under two parts go in one PUT
CHUNK = 1 << 20


class RemoteError(CinesynthError):
    """The remote cache cannot be reached, or refused or mangled what was sent."""


@dataclass(frozen=True)
class RemoteEntry:
    key: str
    digest: str
    ext: str
    size: int
    node: str
    kind: str
    meta: dict[str, Any]

    def to_json(self) -> bytes:
        return json.dumps({"digest": self.digest, "ext": self.ext, "size": self.size, "node": self.node,
                           "kind": self.kind, "meta": self.meta}, sort_keys=True).encode("utf-8")


def parse_entry(key: str, raw: bytes) -> RemoteEntry | None:
    """A key entry read from the remote, or None when it is not one (never trusted as is: the
    digest and extension name local files)."""
    if len(raw) > ENTRY_MAX_BYTES:
        return None
    try:
        fields = entry_fields(json.loads(raw))
    except ValueError:
        return None
    if fields is None:
        return None
    return RemoteEntry(key, fields["digest"], fields["ext"], fields["size"], fields["node"], fields["kind"],
                       fields["meta"])


def open_remote(url: str, settings: CacheSettings,
                warn: Callable[[str], None] | None = None) -> "RemoteStore":
    """The store at ``s3://bucket/prefix``, reached as ``settings`` say (endpoint, region, AWS
    profile); credentials come from the standard AWS variables or that profile."""
    if not url.startswith("s3://") or not url[len("s3://"):].strip("/"):
        raise RemoteError(f"remote cache '{url}' is not an s3://bucket/prefix URL")
    try:
        import s3fs
    except ImportError as exc:
        raise RemoteError(f"remote cache '{url}' needs s3fs",
                          hint="pip install 'cinesynth-batch[s3]'") from exc
    # s3fs retries a failed call itself (5 tries, backing off): botocore retries less under it
    options: dict[str, Any] = {"endpoint_url": settings.endpoint_url, "use_listings_cache": False,
                               "skip_instance_cache": True,
                               "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"},
                                                 "connect_timeout": 10}}
    if settings.region:
        options["client_kwargs"] = {"region_name": settings.region}
    if settings.profile:
        from aiobotocore.session import AioSession

        options["session"] = AioSession(profile=settings.profile)
    fs = s3fs.S3FileSystem(**options)
    return RemoteStore(fs, url[len("s3://"):].strip("/"), url, warn)


class RemoteStore:
    def __init__(self, fs: Any, root: str, url: str, warn: Callable[[str], None] | None = None):
        self.fs = fs
        self.root = root
        self.url = url
        self._warn = warn or (lambda msg: None)

    # -- paths -------------------------------------------------------------------------------
    def object_path(self, digest: str, ext: str) -> str:
        return f"{self.root}/objects/{digest[:2]}/{digest}{ext}"

    def key_path(self, key: str) -> str:
        return f"{self.root}/keys/{key[:2]}/{key}.json"

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # -- reads -------------------------------------------------------------------------------
    def entry(self, key: str) -> RemoteEntry | None:
        try:
            raw = self.fs.cat_file(self.key_path(key))
        except FileNotFoundError:
            return None
        entry = parse_entry(key, raw)
        if entry is None:
            self._warn(f"remote cache entry {key[:12]} is unreadable; dropping it")
            self.remove(self.key_path(key))
        return entry

    def fetch(self, entry: RemoteEntry, dest: Path) -> str:
        """Download the entry's object to the new file ``dest``, hashing as it goes: ``ok``,
        ``missing`` or ``damaged`` (``dest`` is removed unless ``ok``)."""
        h = hashlib.sha256()
        n = 0
        state = "damaged"
        try:
            with self.fs.open(self.object_path(entry.digest, entry.ext), "rb") as src, \
                    os.fdopen(open_fresh(dest), "wb") as out:
                while chunk := src.read(min(CHUNK, entry.size + 1 - n)):
                    n += len(chunk)
                    if n > entry.size:
                        break
                    h.update(chunk)
                    out.write(chunk)
                else:
                    if n == entry.size and h.hexdigest() == entry.digest:
                        state = "ok"
        except FileNotFoundError:
            state = "missing"
        if state != "ok":
            dest.unlink(missing_ok=True)
        return state

    def hash_object(self, path: str) -> str | None:
        """The sha256 of a remote object's bytes; None when it is gone."""
        h = hashlib.sha256()
        try:
            with self.fs.open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            return None
        return h.hexdigest()

    # -- writes ------------------------------------------------------------------------------
    def upload(self, local: Path, digest: str, ext: str) -> bool:
        """Put ``local`` (whose sha256 is ``digest``) under its digest, unless a whole copy is
        there already; checked on the server either way. Returns whether it was sent."""
        size = local.stat().st_size
        etag = s3_etag(local, PART)
        target = self.object_path(digest, ext)
        if self._holds(target, size, digest, etag):
            return False
        self.fs.put_file(str(local), target, chunksize=PART)
        if not self._holds(target, size, digest, etag):
            self.remove(target)
            raise RemoteError(f"upload of {digest[:12]} to {self.url} did not arrive whole")
        return True

    def put_entry(self, entry: RemoteEntry) -> None:
        """Record ``entry`` under its key: only once its object was uploaded and checked."""
        self.fs.pipe_file(self.key_path(entry.key), entry.to_json())

    def remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def drop_damaged(self, entry: RemoteEntry) -> None:
        self._warn(f"remote cache object {entry.digest[:12]} for {entry.node} is damaged; "
                   "dropping it, the stage will run again")
        self.remove(self.object_path(entry.digest, entry.ext))
        self.remove(self.key_path(entry.key))

    def drop_missing(self, entry: RemoteEntry) -> None:
        self._warn(f"remote cache object {entry.digest[:12]} for {entry.node} is gone; "
                   "the stage will run again")
        self.remove(self.key_path(entry.key))

    def _holds(self, target: str, size: int, digest: str, etag: str) -> bool:
        try:
            info = self.fs.info(target)
        except FileNotFoundError:
            return False
        if info.get("size") != size:
            return False
        if str(info.get("ETag", "")).strip('"') == etag:
            return True
        return self.hash_object(target) == digest     # a server whose ETags are not MD5s

    # -- listings ----------------------------------------------------------------------------
    def listing(self, folder: str) -> dict[str, dict[str, Any]]:
        """Path -> info (size, LastModified) of every object under ``folder``."""
        try:
            found = self.fs.find(self.path(folder), detail=True)
        except FileNotFoundError:
            return {}
        return {p: i for p, i in found.items() if i.get("type") != "directory"}

    def entries(self) -> Iterator[tuple[RemoteEntry, datetime]]:
        """Every readable key entry with its time; an unreadable one is dropped."""
        listed = {p: i for p, i in self.listing("keys").items() if p.endswith(".json")}
        if not listed:
            return
        raw = self.fs.cat(list(listed), on_error="return")
        for path, data in raw.items():
            if isinstance(data, FileNotFoundError):
                continue
            key = path.rsplit("/", 1)[-1][:-len(".json")]
            entry = parse_entry(key, data) if isinstance(data, bytes) else None
            if entry is None:
                self.remove(path)
                continue
            yield entry, listed[path]["LastModified"]

    def now(self) -> datetime:
        """The server's clock: the time of an object written now."""
        probe = self.path("clock")
        self.fs.pipe_file(probe, b"")
        return self.fs.info(probe)["LastModified"]


def s3_etag(path: Path, part: int) -> str:
    """The ETag an S3 server gives ``path`` uploaded with parts of ``part`` bytes (one PUT below
    two parts): the MD5 of its bytes, or the MD5 of its parts' MD5s and the count of parts."""
    size = path.stat().st_size
    whole = hashlib.md5(usedforsecurity=False)
    parts = []
    with open(path, "rb") as f:
        while True:
            block = f.read(part)
            if not block:
                break
            whole.update(block)
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    if size < 2 * part:
        return whole.hexdigest()
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"
