"""The project's configuration: ``cinesynth.toml`` at the project root, set by the operator.

What a spec may do is decided here and on the command line, never by the spec it constrains:
the folders outside the project that inputs may come from, the hosts URL inputs may be
downloaded from, the size limits every spec is held to, and the subtitle font. A spec's own
``allow_paths`` / ``allow_hosts`` may only narrow these.

```toml
[trust]
allow_paths = ["../shared-assets"]     # relative to the project root
allow_hosts = ["youtube.com", "youtu.be", "media.example.org"]

[limits]
scenes = 5000

[subtitles]
font = "fonts/NotoSansKR-Regular.otf"  # relative to the project root

[cache]
url = "s3://render-cache/studio"       # a shared remote store (s3:// only); $CINESYNTH_CACHE wins
endpoint_url = "http://10.0.0.5:8333"  # an S3-compatible server; credentials from the AWS variables
local = ".cinesynth/cache"             # the local read-through copy (relative to the root)
```

Imports no torch.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import CinesynthError

CONFIG_NAME = "cinesynth.toml"
CONFIG_MAX_BYTES = 1 << 20
DEFAULT_ALLOW_HOSTS = ("youtube.com", "youtu.be")


class ConfigError(CinesynthError):
    """``cinesynth.toml`` is unreadable or holds a value of the wrong kind."""

    exit_code = 2


@dataclass(frozen=True)
class Limits:
    """Upper bounds every spec is held to; generous for real work, overridable in
    ``[limits]`` of ``cinesynth.toml`` (never in the spec)."""

    spec_bytes: int = 4 << 20           # a spec or preset file
    yaml_nodes: int = 200_000           # nodes after alias expansion
    yaml_depth: int = 64                # nesting of mappings and lists
    expanded_nodes: int = 1_000_000     # nodes of all scenes after matrix and preset expansion
    scenes: int = 5_000                 # scenes after matrix expansion
    template_chars: int = 100_000       # output of one template
    template_seconds: float = 2.0       # run time of one template
    template_range: int = 100_000       # items one range() may produce in a template
    prompt_chars: int = 20_000          # one prompt or spoken line
    path_chars: int = 1_024             # a path or URL written in a spec
    name_chars: int = 128               # an id, project, output, preset or LoRA name
    frames: int = 9_601                 # frames of one clip (10 minutes at 16 fps, 4k+1)
    side: int = 4_096                   # width or height in pixels
    duration: float = 3_600.0           # seconds of one clip or audio cut
    segments: int = 256                 # chained or auto-regressive segments of one stage
    steps: int = 200                    # denoising steps


@dataclass(frozen=True)
class Trust:
    """Folders (absolute, resolved) and hosts a spec's inputs may come from, besides the
    project itself."""

    allow_paths: tuple[Path, ...] = ()
    allow_hosts: tuple[str, ...] = DEFAULT_ALLOW_HOSTS


@dataclass(frozen=True)
class Subtitles:
    font: Path | None = None            # a font file for burnt-in subtitles (absolute)


@dataclass(frozen=True)
class CacheSettings:
    """Where the cache lives. ``url``: a shared remote store (``s3://bucket/prefix``); ``local``:
    the local store (with a remote, its read-through copy); None means beside the spec. The
    endpoint, region and AWS profile are the operator's; credentials come from the standard AWS
    variables or that profile, never from a spec."""

    url: str | None = None
    local: Path | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    lease_seconds: float = 600.0        # a remote lease not renewed for this long is a dead render's


@dataclass(frozen=True)
class ProjectConfig:
    root: Path
    trust: Trust = field(default_factory=Trust)
    limits: Limits = field(default_factory=Limits)
    subtitles: Subtitles = field(default_factory=Subtitles)
    cache: CacheSettings = field(default_factory=CacheSettings)
    file: Path | None = None            # the file read, if any

    @classmethod
    def load(cls, root: Path) -> "ProjectConfig":
        """Read ``root/cinesynth.toml``; defaults when it is absent."""
        root = Path(root).resolve()
        path = root / CONFIG_NAME
        if not path.is_file():
            return cls(root=root)
        try:
            if path.stat().st_size > CONFIG_MAX_BYTES:
                raise ConfigError(f"{path}: larger than {CONFIG_MAX_BYTES} bytes")
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}", hint="see docs/spec.md, 'Project configuration'") from exc
        return cls.from_dict(root, data, path)

    @classmethod
    def from_dict(cls, root: Path, data: dict[str, Any], path: Path | None = None) -> "ProjectConfig":
        where = str(path or CONFIG_NAME)
        unknown = set(data) - {"trust", "limits", "subtitles", "cache"}
        if unknown:
            raise ConfigError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}",
                              hint="sections: trust, limits, subtitles, cache")
        trust_raw = _section(data, "trust", where)
        paths = _str_list(trust_raw, "allow_paths", where, [])
        hosts = _str_list(trust_raw, "allow_hosts", where, list(DEFAULT_ALLOW_HOSTS))
        extra = set(trust_raw) - {"allow_paths", "allow_hosts"}
        if extra:
            raise ConfigError(f"{where}: [trust] has unknown key(s) {', '.join(sorted(extra))}",
                              hint="keys: allow_paths, allow_hosts")
        trust = Trust(tuple((root / p).resolve() for p in paths), tuple(h.lower() for h in hosts))
        limits = _limits(_section(data, "limits", where), where)
        sub_raw = _section(data, "subtitles", where)
        font = sub_raw.get("font")
        if font is not None and not isinstance(font, str):
            raise ConfigError(f"{where}: [subtitles] font must be a path")
        extra = set(sub_raw) - {"font"}
        if extra:
            raise ConfigError(f"{where}: [subtitles] has unknown key(s) {', '.join(sorted(extra))}",
                              hint="keys: font")
        subtitles = Subtitles((root / font).resolve() if font else None)
        cache = _cache(_section(data, "cache", where), root, where)
        return cls(root=root, trust=trust, limits=limits, subtitles=subtitles, cache=cache, file=path)

    def with_command_line(self, allow_paths: list[str] | None = None,
                          allow_hosts: list[str] | None = None) -> "ProjectConfig":
        """Add what the operator allowed on the command line (paths relative to the current
        folder)."""
        paths = tuple(Path(p).resolve() for p in allow_paths or [])
        hosts = tuple(h.lower() for h in allow_hosts or [])
        trust = Trust(self.trust.allow_paths + paths, self.trust.allow_hosts + hosts)
        return replace(self, trust=trust)


def _section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value


def _str_list(table: dict[str, Any], key: str, where: str, default: list[str]) -> list[str]:
    value = table.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return value


def _cache(table: dict[str, Any], root: Path, where: str) -> CacheSettings:
    strings = ("url", "local", "endpoint_url", "region", "profile")
    extra = set(table) - {*strings, "lease_seconds"}
    if extra:
        raise ConfigError(f"{where}: [cache] has unknown key(s) {', '.join(sorted(extra))}",
                          hint="keys: " + ", ".join((*strings, "lease_seconds")))
    for key in strings:
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise ConfigError(f"{where}: [cache] {key} must be a non-empty string")
    url = table.get("url")
    if url is not None and not url.startswith("s3://"):
        raise ConfigError(f"{where}: [cache] url '{url}' is not an s3:// URL",
                          hint="a local cache folder goes in [cache] local")
    endpoint = table.get("endpoint_url")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: [cache] endpoint_url '{endpoint}' is not an http(s) URL")
    lease = table.get("lease_seconds", CacheSettings.lease_seconds)
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or lease <= 0:
        raise ConfigError(f"{where}: [cache] lease_seconds must be a positive number")
    local = table.get("local")
    return CacheSettings(url=url, local=(root / local).resolve() if local else None,
                         endpoint_url=endpoint, region=table.get("region"),
                         profile=table.get("profile"), lease_seconds=float(lease))


def _limits(table: dict[str, Any], where: str) -> Limits:
    known = {f.name: f for f in fields(Limits)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: [limits] has unknown key '{key}'",
                              hint="keys: " + ", ".join(known))
        want = float if known[key].type == "float" else int
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
                or (want is int and not isinstance(value, int)):
            raise ConfigError(f"{where}: [limits] {key} must be a positive "
                              f"{'number' if want is float else 'whole number'}")
        values[key] = want(value)
    return Limits(**values)
