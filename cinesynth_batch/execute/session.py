"""Everything one command needs about one spec: the loaded spec, its cache, lock, models.

Building a session imports no torch, so ``validate``, ``plan`` and ``status`` stay fast;
``validate`` (``check_spec``) does not import the planner either.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache.digest import DigestState
from ..cache.open import cache_settings, open_store
from ..cache.store import CacheStore
from ..errors import ModelError, Problems
from ..catalog.registry import BUILTIN_PROFILES, Registry
from ..spec import trust as t
from ..spec.load import LoadedSpec, load_spec

if TYPE_CHECKING:
    from ..cache.lock import Lock
    from ..plan.planner import Plan

LORA_FAMILY = {"image": "img", "video": "mov", "lipsync": "mov", "animate": "mov"}


@dataclass
class Session:
    loaded: LoadedSpec
    cache: CacheStore
    digests: DigestState
    registry: Registry
    lock_path: Path
    output_dir: Path

    @classmethod
    def open(cls, spec_path: str | Path, profile: str | None = None, warn=None,
             allow_paths: list[str] | None = None, allow_hosts: list[str] | None = None,
             cache_root: Path | None = None) -> "Session":
        """``cache_root``: the cache to use (a worker of a distributed render uses its driver's);
        None: ``$CINESYNTH_CACHE``, else ``.cinesynth/cache`` beside the spec."""
        loaded, registry = check_spec(spec_path, profile, allow_paths, allow_hosts)
        settings = cache_settings(loaded.config.cache)
        if cache_root is not None:          # the driver's local cache (and the same remote, if any)
            settings = replace(settings, local=Path(cache_root))
        cache = open_store(settings, loaded.spec_dir / ".cinesynth" / "cache", warn=warn)
        digests = DigestState.open(cache.state_path)
        registry.digests = digests
        output_dir = loaded.output_dir
        return cls(loaded, cache, digests, registry, output_dir / "render.lock", output_dir)

    def lock(self) -> Lock:
        from ..cache.lock import Lock

        return Lock.read(self.lock_path)

    def plan(self, offline: bool = False, device: str = "auto", dtype: str | None = None,
             **options) -> Plan:
        """The plan, its keys naming what ``device`` will run (a lossy setting this machine
        cannot honour is keyed as its fallback, see ``stages/effective.py``)."""
        from ..plan.planner import make_plan
        from ..plan.sources import refuse_downloads
        from ..stages.effective import effective_params

        run_dtype = dtype or self.registry.dtype

        def effective(kind: str, params: dict) -> dict:
            return effective_params(kind, params, device, run_dtype)

        plan = make_plan(self.loaded, self.registry, self.cache, self.lock(), self.digests,
                         effective=effective, **options)
        self.digests.save()
        if offline:
            refuse_downloads(plan)
        return plan


def check_spec(spec_path: str | Path, profile: str | None = None, allow_paths: list[str] | None = None,
               allow_hosts: list[str] | None = None):
    """Everything knowable before running: the spec, its models file and its LoRA names.
    Returns the loaded spec and its model registry; raises one ``SpecError`` holding every
    problem."""
    loaded = load_spec(spec_path, allow_paths=allow_paths, allow_hosts=allow_hosts)
    problems = Problems()
    registry = _registry(loaded, profile, problems, None)
    if registry is not None:
        check_loras(loaded, registry, problems)
    problems.raise_if_any()
    assert registry is not None
    return loaded, registry


def _registry(loaded: LoadedSpec, profile: str | None, problems: Problems,
              digests: DigestState | None) -> Registry | None:
    """The model registry, or None with a problem at ``profile:`` (a missing, unreadable or
    out-of-bounds models file)."""
    name = profile or loaded.spec.profile
    where = loaded.where("profile") if profile is None and "profile" in loaded.raw else None
    at = "profile" if where else ("--profile" if profile else "profile")
    if name not in BUILTIN_PROFILES:
        bad = t.path_problem(name)
        file = t.resolve_inside(loaded.spec_dir, name) if bad is None else None
        if file is None:
            problems.add(f"models file '{name!r}': {bad.message if bad else 'not a usable path'}",
                         where, at, hint=bad.hint if bad else None)
            return None
        if not any(t.inside(file, a) for a in (loaded.root, *loaded.trust.allow_paths)):
            problems.add(f"models file '{name}' is outside the project ({loaded.root})", where, at,
                         hint="put the models file in the project, or ask the operator to allow its folder")
            return None
    try:
        return Registry.load(name, loaded.spec_dir, loaded.root, digests)
    except ModelError as exc:
        problems.add(_model_error_text(exc, name), where, at,
                     hint=exc.hint or "profile is 'tiny', 'production', 'shapes' or a path to a models .yaml")
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        problems.add(f"models file '{name}' is not usable ({type(exc).__name__}: {exc})", where, at,
                     hint="see docs/spec.md, 'Models files'")
        return None


def _model_error_text(exc: ModelError, name: str) -> str:
    """A models-file error in one line; a YAML error names its own file:line:col."""
    cause = exc.__cause__
    mark = getattr(cause, "problem_mark", None)
    if mark is not None:
        return (f"models file {name}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: "
                f"{getattr(cause, 'problem', None) or cause}")
    return exc.message.splitlines()[0]


def spec_loras(loaded: LoadedSpec):
    """Every LoRA the spec names (presets included): ``(scene index, stage kind, j, name, family)``."""
    for i, scene in enumerate(loaded.spec.scenes):
        for kind, family in LORA_FAMILY.items():
            stage = getattr(scene, kind, None)
            for j, lora in enumerate(getattr(stage, "loras", None) or []):
                yield i, kind, j, lora.name, family


def check_loras(loaded: LoadedSpec, registry: Registry, problems: Problems) -> None:
    """Every LoRA name resolves to a file in the LoRA folders (a tiny profile whose models are
    not built yet is checked when they are)."""
    for i, kind, j, name, family in spec_loras(loaded):
        try:
            found = registry.find_lora(name, family) is not None or (
                registry.tiny_loras() and not registry.tiny_built())
            why = ""
        except (OSError, ValueError) as exc:
            found, why = False, f" ({type(exc).__name__})"
        if not found:
            loc = ("scenes", i, kind, "loras", j, "name")
            looked = ", ".join(str(d) for d in registry.lora_search_dirs())
            problems.add(f"LoRA '{name}' not found{why}", loaded.where(*loc),
                         loaded.path_text(*loc),
                         hint=f"put {name}.safetensors under lora_adpts/{family}/; "
                              f"searched: {looked}")


def missing_loras(spec_path: str | Path, profile: str | None = None) -> tuple[LoadedSpec, list[tuple[str, str]]]:
    """The spec and the ``(name, family)`` of each LoRA it names that no LoRA folder holds."""
    loaded = load_spec(spec_path)
    problems = Problems()
    registry = _registry(loaded, profile, problems, None)
    problems.raise_if_any()
    assert registry is not None
    out: list[tuple[str, str]] = []
    for _, _, _, name, family in spec_loras(loaded):
        if (name, family) not in out and registry.find_lora(name, family) is None:
            out.append((name, family))
    return loaded, out
