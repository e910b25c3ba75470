"""``gc`` and ``verify`` of a remote store, with the rules of the local ones (``store.py``):
unreferenced objects go, then (over ``max_size``) the least recently written entries; whatever
a live lease names, and anything written since the oldest live lease began, stays."""

from __future__ import annotations

from datetime import timedelta

from .remote import RemoteStore
from .remote_lease import gc_exclusive, live_remote_leases

YOUNG_MARGIN_S = 2.0    # server times of HEAD answers have whole seconds


def remote_gc(remote: RemoteStore, lease_seconds: float, max_size: int | None = None,
              keep: set[str] | None = None, young_margin_s: float = YOUNG_MARGIN_S) -> dict[str, int]:
    with gc_exclusive(remote, lease_seconds) as now:
        live = live_remote_leases(remote, now, lease_seconds)
        keep = set(keep or ()) | live.digests
        young = live.oldest - timedelta(seconds=young_margin_s) if live.oldest is not None else None

        def pinned(modified, digest: str | None = None) -> bool:
            return (digest is not None and digest in keep) or (young is not None and modified >= young)

        entries = list(remote.entries())
        referenced = {e.digest for e, _ in entries}
        stats = {"objects_removed": 0, "keys_removed": 0, "bytes_freed": 0}
        objects = {}
        for path, info in remote.listing("objects").items():
            digest = path.rsplit("/", 1)[-1].split(".")[0]
            if digest not in referenced and not pinned(info["LastModified"], digest):
                remote.remove(path)
                stats["objects_removed"] += 1
                stats["bytes_freed"] += info["size"]
            else:
                objects[digest] = (path, info["size"], info["LastModified"])
        if max_size is None:
            return stats
        total = sum(size for _, size, _ in objects.values())
        users: dict[str, int] = {}
        for e, _ in entries:
            users[e.digest] = users.get(e.digest, 0) + 1
        for e, modified in sorted(entries, key=lambda em: em[1]):
            if total <= max_size:
                break
            if e.key in live.keys or pinned(modified, e.digest):
                continue
            remote.remove(remote.key_path(e.key))
            stats["keys_removed"] += 1
            users[e.digest] -= 1
            if users[e.digest] == 0 and e.digest in objects and not pinned(objects[e.digest][2]):
                path, size, _ = objects.pop(e.digest)
                remote.remove(path)
                total -= size
                stats["bytes_freed"] += size
                stats["objects_removed"] += 1
        return stats


def remote_verify(remote: RemoteStore, repair: bool = False) -> dict[str, int]:
    """Hash every remote object against its name and check every key's object (``git fsck``);
    ``repair`` drops damaged objects, their keys and keys whose object is gone."""
    damaged: set[str] = set()
    present: set[str] = set()
    verified = 0
    for path in sorted(remote.listing("objects")):
        digest = path.rsplit("/", 1)[-1].split(".")[0]
        verified += 1
        if remote.hash_object(path) != digest:
            damaged.add(digest)
            if repair:
                remote.remove(path)
        else:
            present.add(digest)
    dangling = 0
    for e, _ in remote.entries():
        if e.digest in damaged or e.digest not in present:
            dangling += e.digest not in damaged
            if repair:
                remote.remove(remote.key_path(e.key))
    return {"verified": verified, "damaged": len(damaged), "dangling": dangling}
