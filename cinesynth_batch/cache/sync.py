"""``cinesynth cache push`` / ``pull``: entries between a local store and a remote one, as DVC
pushes and pulls between its cache and a remote. Both go through ``SharedStore``: a pushed
object is hashed locally first (damage is never sent) and checked on the server before its
entry is written; a pulled one is hashed as it is downloaded. Both hold leases on the two
stores, so a ``gc`` of either leaves what they move alone."""

from __future__ import annotations

from typing import Iterable

from .remote import RemoteError
from .shared import SharedStore, send
from .store import CacheStore


def local_keys(store: CacheStore) -> list[str]:
    return sorted(kp.name[:-len(".json")] for kp in (store.root / "keys").glob("*/*.json"))


def remote_keys(store: SharedStore) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1][:-len(".json")] for p in store.remote.listing("keys")
                  if p.endswith(".json"))


def push(store: SharedStore, keys: Iterable[str] | None = None) -> dict[str, int]:
    """Send the local entries of ``keys`` (all when None). Raises when the remote refuses."""
    stats = {"pushed": 0, "objects_sent": 0, "missing": 0, "damaged": 0}
    store.take_lease()
    try:
        if store.offline:
            raise RemoteError(f"remote cache {store.remote.url} cannot be reached")
        for key in sorted(set(local_keys(store) if keys is None else keys)):
            entry = CacheStore.lookup(store, key)        # the local store only
            if entry is None:
                stats["missing"] += 1
                continue
            path = store.verified_path(entry, full=True)
            if path is None:
                stats["damaged"] += 1
                continue
            stats["objects_sent"] += send(store.remote, path, entry, store.remote_lease)
            stats["pushed"] += 1
    finally:
        store.release_lease()
    return stats


def pull(store: SharedStore, keys: Iterable[str] | None = None) -> dict[str, int]:
    """Bring the remote entries of ``keys`` (all when None) into the local store."""
    stats = {"pulled": 0, "present": 0, "missing": 0, "damaged": 0}
    store.take_lease()
    try:
        if store.offline:
            raise RemoteError(f"remote cache {store.remote.url} cannot be reached")
        for key in sorted(set(remote_keys(store) if keys is None else keys)):
            if CacheStore.lookup(store, key) is not None:
                stats["present"] += 1
            elif store.lookup(key) is not None:
                stats["pulled"] += 1
            else:
                stats["damaged" if key in store.found_damaged else "missing"] += 1
    finally:
        store.release_lease()
    return stats
