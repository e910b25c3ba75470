"""Everything one command needs about one spec: the loaded spec, its cache, lock, models.

Building a session imports no torch, so ``validate``, ``plan`` and ``status`` stay fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..cache.digest import DigestState
from ..cache.lock import Lock
from ..cache.store import CacheStore
from ..models.registry import Registry
from ..plan.planner import Plan, make_plan
from ..plan.sources import refuse_downloads
from ..spec.load import LoadedSpec, load_spec


@dataclass
class Session:
    loaded: LoadedSpec
    cache: CacheStore
    digests: DigestState
    registry: Registry
    lock_path: Path
    output_dir: Path

    @classmethod
    def open(cls, spec_path: str | Path, profile: str | None = None, warn=None) -> "Session":
        loaded = load_spec(spec_path)
        cache_root = Path(os.environ["CINESYNTH_CACHE"]) if os.environ.get("CINESYNTH_CACHE") \
            else loaded.spec_dir / ".cinesynth" / "cache"
        cache = CacheStore(cache_root, warn=warn)
        digests = DigestState.open(cache.state_path)
        registry = Registry.load(profile or loaded.spec.profile, loaded.spec_dir, loaded.root, digests)
        out = loaded.spec.output
        output_dir = (loaded.spec_dir / out).resolve() if out else loaded.root / "outputs" / loaded.spec.project
        return cls(loaded, cache, digests, registry, output_dir / "render.lock", output_dir)

    def lock(self) -> Lock:
        return Lock.read(self.lock_path)

    def plan(self, offline: bool = False, **options) -> Plan:
        plan = make_plan(self.loaded, self.registry, self.cache, self.lock(), self.digests, **options)
        self.digests.save()
        if offline:
            refuse_downloads(plan)
        return plan
