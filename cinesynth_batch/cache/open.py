"""Which store a command uses: ``$CINESYNTH_CACHE``, else ``[cache]`` of ``cinesynth.toml``,
else ``.cinesynth/cache`` beside the spec.

``$CINESYNTH_CACHE=s3://bucket/prefix`` names a shared remote store (the local read-through
copy stays where ``[cache] local`` or the default puts it); a path names a local store and
no remote.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

from ..config import CacheSettings
from .store import CacheStore

ENV = "CINESYNTH_CACHE"


def cache_settings(settings: CacheSettings, env: Mapping[str, str] | None = None) -> CacheSettings:
    """``settings`` as ``$CINESYNTH_CACHE`` overrides them."""
    value = (os.environ if env is None else env).get(ENV)
    if not value:
        return settings
    if value.startswith("s3://"):
        return replace(settings, url=value)
    return replace(settings, url=None, local=Path(value))


def open_store(settings: CacheSettings, default_local: Path | None,
               warn: Callable[[str], None] | None = None) -> CacheStore:
    """The store ``settings`` name (already overridden by ``cache_settings``)."""
    local = settings.local or default_local
    if local is None:
        from ..errors import CinesynthError

        raise CinesynthError("which local cache?", hint="name a spec, set CINESYNTH_CACHE or "
                                                        "[cache] local in cinesynth.toml")
    if settings.url is None:
        return CacheStore(local, warn=warn)
    from .remote import open_remote
    from .shared import SharedStore

    return SharedStore(local, open_remote(settings.url, settings, warn), settings.lease_seconds, warn=warn)
