"""What a spec may reach: folders, hosts and URLs, decided by the operator.

The operator sets the folders and hosts in ``cinesynth.toml`` ([trust]) and on the command line
(``--allow-path``, ``--allow-host``). A spec's own ``allow_paths`` / ``allow_hosts`` may only
narrow those: every item it lists must already be allowed. URLs are parsed once, checked, and
rebuilt from the parts that were checked, so the downloader is handed the host that was judged.

Imports no torch.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

NAME_MAX_BYTES = 255                       # one path component (file systems' NAME_MAX)
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)*$")


class Refused(ValueError):
    """A value the trust rules refuse: ``message`` and a ``hint``."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class CheckedUrl:
    url: str        # rebuilt from the checked parts: what the downloader is given
    host: str


def check_url(url: str) -> CheckedUrl:
    """Parse an http(s) URL strictly; raise ``Refused`` for anything two parsers could read
    differently (userinfo, backslashes, control characters, odd hosts or ports)."""
    text = url.strip()
    if CONTROL_RE.search(text) or " " in text:
        raise Refused("a URL may not hold spaces or control characters", "percent-encode them (%20)")
    if "\\" in text:
        raise Refused("a URL may not hold a backslash", "write forward slashes (/)")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a valid URL ({exc})", "write it as https://host/path") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused("only http:// and https:// URLs are downloaded", "give an http(s) URL or a file path")
    if "@" in parts.netloc:
        raise Refused("a URL may not hold a user name or password (user@host)",
                      "remove the part before '@'")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise Refused("the URL names no host", "write it as https://host/path")
    if not valid_host(host):
        raise Refused(f"'{host}' is not a host name or IP address", "write it as https://host/path")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    rebuilt = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    return CheckedUrl(rebuilt, host)


def valid_host(host: str) -> bool:
    """A host name (letters, digits, '-', dots) or an IP address."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(HOST_RE.match(host)) and len(host) <= 253


def host_allowed(host: str, hosts: tuple[str, ...] | list[str]) -> bool:
    """``host`` is one of ``hosts`` or a subdomain of one."""
    host = host.lower().rstrip(".")
    return any(host == h or host.endswith("." + h) for h in (x.lower().rstrip(".") for x in hosts))


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def path_problem(value: str) -> Refused | None:
    """Why a path written in a spec cannot be used as a path at all (before touching disk)."""
    if CONTROL_RE.search(value):
        return Refused("the path holds a control character (such as a NUL byte)",
                       "write the file name without control characters")
    if "\\" in value:
        return Refused("the path holds a backslash", "write forward slashes (/)")
    for part in value.split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
            return Refused(f"a path component is longer than {NAME_MAX_BYTES} bytes",
                           "shorten the file or folder name")
    return None


def resolve_inside(base: Path, value: str) -> Path | None:
    """``base / value`` resolved, or None when the file system refuses the name."""
    try:
        return (base / value).resolve()
    except (OSError, ValueError, RuntimeError):
        return None


def lora_name_problem(name: str) -> Refused | None:
    """A LoRA ``name`` is a name inside the LoRA folders: no absolute path, ``..`` or backslash."""
    bad = path_problem(name)
    if bad is not None:
        return bad
    if name.startswith("/") or name.startswith("~") or re.match(r"^[A-Za-z]:", name):
        return Refused("a LoRA name is a name inside the LoRA folders, not an absolute path",
                       "put the file under lora_adpts/ and write its name")
    if any(part in ("..", ".", "") for part in name.split("/")):
        return Refused("a LoRA name may not hold '..', '.' or empty parts",
                       "put the file under lora_adpts/ and write its name")
    return None


def printable(text: str) -> str:
    """``text`` with control characters escaped, cut to 200 characters (for messages)."""
    return text.encode("unicode_escape").decode("ascii")[:200]
