"""Model profiles: which model serves each stage role, where it lives, and its identity.

This module imports no torch. A profile is a YAML file (``tiny``, ``production`` ship with the
package; a project can name its own models file). Each role names a loader ``kind`` and one
source:

* ``tiny: NAME``  — built locally by ``catalog/tiny/build.py`` under ``$CINESYNTH_HOME/models``;
  identity is ``TINY_REVISION`` (the build is deterministic). The revision names what the builders
  make, not where their code lives: ``TINY_SOURCES_DIGEST`` records the builders' sources the
  revision was last checked against, and ``tests/unit/test_builder_revisions.py`` fails when they
  change, asking for a new revision when the built models change and a new recorded digest when
  only the code moved.
* ``shapes: NAME`` — a production architecture at its real size with seeded random weights, built
  on the render's device when a stage needs it (``catalog/shapes/``; nothing on disk); identity is
  ``SHAPES_REVISION``, kept honest by ``SHAPES_SOURCES_DIGEST`` as for the tiny models
  (``tests/unit/test_shapes_profile.py``).
* ``path: DIR|FILE`` — a local folder or file; identity hashes names, sizes and small files
  (folders) or the whole file.
* ``id: ORG/NAME`` — a Hugging Face repository, read from the local hub cache; identity is
  the snapshot's commit. ``HF_HUB_OFFLINE=1`` forbids downloads.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..cache.digest import DigestState, sha256_bytes
from ..errors import ModelError
from .shapes import KINDS as SHAPES_KINDS
from .shapes import ShapesSource

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
#: What the tiny builders make. Give it a new value whenever a builder's output changes.
TINY_REVISION = "tiny-d396d20387dd96d3"
#: The package files the tiny models are built from (relative to the package).
TINY_SOURCES = ("catalog/tiny/build.py", "catalog/tiny/rrdbnet.py", "catalog/tiny/animate.py",
                "catalog/tiny/s2v.py", "catalog/tiny/demucs.py", "catalog/tiny/parts.py",
                "models/rrdbnet.py", "models/s2v/transformer.py", "models/s2v/components.py",
                "models/separation.py", "tts/qwen_tiny.py", "catalog/tiny/rife.py", "models/rife.py",
                "catalog/tiny/amt.py", "models/amt/network.py", "models/amt/blocks.py", "catalog/tiny/segment.py")
#: ``tiny_sources_digest()`` of the sources ``TINY_REVISION`` was checked against.
TINY_SOURCES_DIGEST = "10c211ba0ce3036e975f45f9c8dc570a2ca7f51af9752c588b2dbe407a379886"
#: What the shapes builders make (architectures, dtypes, weight draws). New value when it changes.
SHAPES_REVISION = "shapes-3f6c1a2e9b8d4c70"
#: The package files the shapes models are built from (relative to the package).
SHAPES_SOURCES = ("catalog/shapes/__init__.py", "catalog/shapes/configs.py", "catalog/shapes/build.py",
                  "catalog/shapes/materialize.py", "catalog/tiny/parts.py", "catalog/tiny/build.py",
                  "models/rrdbnet.py", "models/s2v/transformer.py", "models/s2v/components.py",
                  "models/s2v/pipeline.py", "models/amt/network.py", "models/amt/blocks.py")
#: ``shapes_sources_digest()`` of the sources ``SHAPES_REVISION`` was checked against.
SHAPES_SOURCES_DIGEST = "9a171b93014c1cba67c8a2a50ec2fafce3c85e648dfcb796ec11c4c589da817d"
#: The profiles that ship with the package (any other profile is a models file).
BUILTIN_PROFILES = ("tiny", "production", "shapes")
SMALL_FILE = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    role: str
    kind: str
    id: str | None = None
    path: str | None = None
    tiny: str | None = None
    shapes: str | None = None
    revision: str | None = None
    source: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.shapes:
            return f"shapes/{self.shapes}"
        return self.id or self.path or f"tiny/{self.tiny}"


def cinesynth_home() -> Path:
    env = os.environ.get("CINESYNTH_HOME")
    return Path(env) if env else Path.home() / ".cache" / "cinesynth"


class Registry:
    """Resolves roles to models and LoRA names to files for one render."""

    def __init__(self, name: str, models: dict[str, ModelSpec], dtype: str, lora_dirs: list[str],
                 base_dir: Path, spec_dir: Path, digests: DigestState | None = None,
                 home: Path | None = None):
        self.name = name
        self.models = models
        self.dtype = dtype
        self.lora_dirs = lora_dirs
        self.base_dir = base_dir
        self.spec_dir = spec_dir
        self.digests = digests or DigestState()
        self.home = home or cinesynth_home()
        self._identity: dict[str, dict[str, Any]] = {}

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def load(cls, profile: str, spec_dir: Path, root: Path, digests: DigestState | None = None,
             home: Path | None = None) -> "Registry":
        if profile in BUILTIN_PROFILES:
            file, base = PROFILES_DIR / f"{profile}.yaml", root
        else:
            file = (spec_dir / profile).resolve()
            base = file.parent
            if not file.is_file():
                raise ModelError(f"models file '{profile}' not found",
                                 hint="profile is 'tiny', 'production', 'shapes' or a path to a models .yaml")
        data = _read_profile(file)
        parent = data.get("extends")
        models: dict[str, Any] = {}
        lora_dirs: list[str] = []
        dtype = "float32"
        if parent:
            base_reg = cls.load(parent, spec_dir, root, digests, home)
            models = {r: vars(s).copy() for r, s in base_reg.models.items()}
            lora_dirs = list(base_reg.lora_dirs)
            dtype = base_reg.dtype
        for role, entry in (data.get("models") or {}).items():
            if not isinstance(entry, dict) or "kind" not in {**models.get(role, {}), **entry}:
                raise ModelError(f"{file}: models.{role} needs a 'kind' and one of id/path/tiny/shapes")
            merged = {**models.get(role, {}), **entry, "role": role}
            if ("path" in entry or "id" in entry) and "tiny" not in entry:
                merged.pop("tiny", None)
            if any(k in entry for k in ("path", "id", "tiny")) and "shapes" not in entry:
                merged.pop("shapes", None)
            elif "shapes" in entry:
                for k in ("path", "id", "tiny"):
                    merged.pop(k, None)
                _check_shapes(file, role, merged)
            models[role] = merged
        lora_dirs = list(data.get("loras") or []) + lora_dirs
        dtype = data.get("dtype", dtype)
        specs = {}
        for r, e in models.items():
            fields = {k: v for k, v in e.items() if k in ModelSpec.__dataclass_fields__}
            fields["aliases"] = tuple(fields.get("aliases") or ())
            specs[r] = ModelSpec(**fields)
        return cls(data.get("name", file.stem), specs, dtype, lora_dirs, base, spec_dir, digests, home)

    # -- tiny models -----------------------------------------------------------------------------
    def tiny_revision(self) -> str:
        return TINY_REVISION

    def tiny_root(self) -> Path:
        return self.home / "models" / self.tiny_revision()

    def tiny_built(self) -> bool:
        return (self.tiny_root() / "tiny.json").is_file()

    def ensure_tiny(self) -> Path:
        """Build the tiny models if they are not there yet (imports torch)."""
        root = self.tiny_root()
        if not self.tiny_built():
            from .tiny.build import build_tiny

            build_tiny(root)
        return root

    def uses_tiny(self) -> bool:
        return any(s.tiny for s in self.models.values()) or self.tiny_loras()

    def tiny_loras(self) -> bool:
        """Whether a LoRA folder is the tiny models' (``tiny:DIR``): only then can a LoRA be built."""
        return any(d.startswith("tiny:") for d in self.lora_dirs)

    # -- models ----------------------------------------------------------------------------------
    def spec(self, role: str, name: str | None = None) -> ModelSpec:
        """The model serving ``role``; a stage may name another (``model: NAME``): a name the
        profile lists for the role (its id or one of its ``aliases``) is the profile's model, any
        other name is a Hugging Face id or a local path of the role's kind."""
        if role not in self.models:
            raise ModelError(f"profile '{self.name}' has no model for '{role}'",
                             hint=f"add models.{role} to the models file")
        base = self.models[role]
        if name is None or name == base.id or name in base.aliases:
            return base
        if name.startswith((".", "/", "~")) or Path(name).suffix in (".pth", ".safetensors"):
            return ModelSpec(role=role, kind=base.kind, path=name)
        return ModelSpec(role=role, kind=base.kind, id=name)

    def identity(self, role: str, name: str | None = None) -> dict[str, Any]:
        """``{"role", "kind", "id", "revision"}``; revision None when the model is not found."""
        memo = f"{role}\0{name}"
        if memo in self._identity:
            return self._identity[memo]
        s = self.spec(role, name)
        revision: str | None = s.revision
        if s.shapes:
            revision = SHAPES_REVISION
        elif s.tiny:
            revision = self.tiny_revision()
        elif s.path:
            p = self._abs(s.path)
            if revision is None and p.exists():
                revision = "sha256:" + (self.digests.digest(p) if p.is_file() else _folder_digest(p))
        elif s.id and revision is None:
            revision = _hub_cached_revision(s.id)
        ident = {"role": role, "kind": s.kind, "id": s.label, "revision": revision}
        self._identity[memo] = ident
        return ident

    def local_path(self, role: str, name: str | None = None) -> Path | ShapesSource:
        """Where the model's files are on this machine; a clear ModelError if nowhere. A ``shapes``
        model has no files: its ``ShapesSource`` (``load_model`` builds it on the device)."""
        s = self.spec(role, name)
        if s.shapes:
            return ShapesSource(s.shapes, s.kind, SHAPES_REVISION)
        if s.tiny and s.kind == "qwen3-tts":   # built by the tts worker environment, on first use
            from ..tts.qwen_client import ensure_tiny_qwen

            return ensure_tiny_qwen(self.ensure_tiny() / s.tiny)
        if s.tiny:
            return self.ensure_tiny() / s.tiny
        if s.path:
            p = self._abs(s.path)
            if p.exists():
                return p
            how = f" (download it from {s.source})" if s.source else ""
            raise ModelError(f"model for '{role}' not found at {p}",
                             hint=f"put the file there{how}, or set models.{role}.path in a models file")
        assert s.id is not None
        return _hub_snapshot(s.id, role)

    def _abs(self, path: str) -> Path:
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else (self.base_dir / p)

    # -- LoRAs -----------------------------------------------------------------------------------
    def lora_search_dirs(self) -> list[Path]:
        dirs = [self.spec_dir / "lora_adpts", self.base_dir / "lora_adpts"]
        for d in self.lora_dirs:
            if d.startswith("tiny:"):
                dirs.append(self.tiny_root() / d[len("tiny:"):])
            else:
                dirs.append(self._abs(d))
        unique: list[Path] = []
        for d in dirs:
            if d not in unique:
                unique.append(d)
        return unique

    def find_lora(self, name: str, family: str) -> Path | None:
        """The file of LoRA ``name``: ``NAME.safetensors`` (or ``NAME`` when it already ends so)
        in a LoRA folder or its ``family`` subfolder. A name never leaves the LoRA folders: an
        absolute path, ``..``, a backslash or a link out of the folder finds nothing."""
        if not plain_lora_name(name):
            return None
        file = name if name.endswith(".safetensors") else f"{name}.safetensors"
        for d in self.lora_search_dirs():
            try:
                folder = d.resolve()
                for cand in (folder / file, folder / family / file):
                    if cand.is_file() and folder in cand.resolve().parents:
                        return cand
            except (OSError, ValueError):
                continue
        return None

    def lora_identity(self, name: str, family: str) -> str | None:
        """A digest for the LoRA's content, None if it cannot be found."""
        p = self.find_lora(name, family)
        if p is not None:
            tiny = self.tiny_root()
            if tiny in p.parents:
                return f"{self.tiny_revision()}:{p.relative_to(tiny).as_posix()}"
            return "sha256:" + self.digests.digest(p)
        if self.tiny_loras() and not self.tiny_built():
            return f"{self.tiny_revision()}:lora_adpts/{family}/{name}.safetensors"
        return None

    def resolve_lora(self, name: str, family: str) -> Path:
        if self.tiny_loras():
            self.ensure_tiny()
        p = self.find_lora(name, family)
        if p is None:
            looked = ", ".join(str(d) for d in self.lora_search_dirs())
            raise ModelError(f"LoRA '{name}' not found", hint=f"looked for {name}.safetensors in {looked}")
        return p


def plain_lora_name(name: str) -> bool:
    """A relative name of plain parts: no absolute path, drive, ``~``, ``..``, ``.``, empty
    part, backslash or control character (the spec loader explains each refusal)."""
    if not name or "\\" in name or name.startswith(("/", "~")) or (len(name) > 1 and name[1] == ":"):
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    return all(part not in ("", ".", "..") and len(part.encode()) <= 255 for part in name.split("/"))


def _check_shapes(file: Path, role: str, entry: dict[str, Any]) -> None:
    name, kind = entry.get("shapes"), entry.get("kind")
    if name not in SHAPES_KINDS:
        raise ModelError(f"{file}: models.{role}.shapes: no shapes model named {name!r}",
                         hint=f"known: {', '.join(sorted(SHAPES_KINDS))}")
    if SHAPES_KINDS[name] != kind:
        raise ModelError(f"{file}: models.{role}: shapes model {name!r} is of kind "
                         f"{SHAPES_KINDS[name]!r}, not {kind!r}")


def _read_profile(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read models file {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"models file {file} must be a mapping with 'models:'")
    return data


def _folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size <= SMALL_FILE and p.suffix in (".json", ".txt", ".model", ".yaml"):
            h.update(sha256_bytes(p.read_bytes()).encode())
    return h.hexdigest()


def _hub_cached_revision(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for name in ("model_index.json", "config.json"):
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            return Path(hit).parent.name
    return None


def _hub_snapshot(repo_id: str, role: str) -> Path:
    hint = (f"download it with `huggingface-cli download {repo_id} --local-dir DIR` and set "
            f"models.{role}.path: DIR in a models file (profile: that file)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover
        raise ModelError(f"model '{repo_id}' needs huggingface_hub", hint=hint) from exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline))
    except Exception as exc:  # network errors, missing repo, offline without cache
        why = "not in the local Hugging Face cache" + (" and HF_HUB_OFFLINE is set" if offline else
                                                         " and it could not be downloaded")
        raise ModelError(f"model '{repo_id}' for '{role}' is {why} ({type(exc).__name__})",
                         hint=hint) from exc


def describe(registry: Registry) -> list[dict[str, Any]]:
    """One row per role for ``cinesynth models list``."""
    rows = []
    for role, s in sorted(registry.models.items()):
        ident = registry.identity(role)
        if s.shapes:
            where, ok = f"built on the device ({s.label}, random weights)", True
        elif s.tiny:
            where, ok = str(registry.tiny_root() / s.tiny), registry.tiny_built()
        elif s.path:
            p = registry._abs(s.path)
            where, ok = str(p), p.exists()
        else:
            where, ok = f"hf:{s.id}", ident["revision"] is not None
        rows.append({"role": role, "kind": s.kind, "model": s.label, "revision": ident["revision"],
                     "location": where, "available": ok})
    return rows


def sources_digest(names: tuple[str, ...]) -> str:
    """sha256 of the package files ``names`` (relative to the package): names and bytes."""
    package = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + (package / name).read_bytes())
    return h.hexdigest()


def tiny_sources_digest() -> str:
    return sources_digest(TINY_SOURCES)


def shapes_sources_digest() -> str:
    return sources_digest(SHAPES_SOURCES)
