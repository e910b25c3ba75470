"""Previews of the published outputs, written beside them in ``thumbs/``: a thumbnail for each
still, a poster and a strip of frames for each clip (``media/thumbs.py``). A preview is named
after the digest of its source, so an unchanged output keeps its previews: they are made again
only when missing or when their bytes are not the ones the last manifest recorded."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable

from ..cache.digest import sha256_file

THUMBS = "thumbs"
STILLS = {".png", ".jpg", ".jpeg", ".webp"}
CLIPS = {".mp4", ".mov", ".webm", ".mkv"}


def make_previews(output_dir: Path, published: dict[str, dict[str, Any]], earlier: Any,
                  warn: Callable[[str], None]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
    """``(previews, thumbs)``: for each published still or clip the names of its previews, and
    for each preview file its digest and size. ``earlier``: the last manifest's ``thumbs``.
    ``output_dir/thumbs`` must be a real folder. A preview that cannot be made is left out,
    with a warning: the report shows the output without it."""
    earlier = earlier if isinstance(earlier, dict) else {}
    previews: dict[str, dict[str, str]] = {}
    thumbs: dict[str, dict[str, Any]] = {}
    for rel, info in published.items():
        suffix = Path(rel).suffix.lower()
        roles = ("thumb",) if suffix in STILLS else ("poster", "strip") if suffix in CLIPS else ()
        if not roles:
            continue
        names = {role: f"{THUMBS}/{info['digest'][:24]}.{role}.webp" for role in roles}
        if all(n in thumbs for n in names.values()) or \
                all(_kept(output_dir / n, earlier.get(n)) for n in names.values()):
            previews[rel] = names
            thumbs.update({n: thumbs.get(n) or earlier[n] for n in names.values()})
            continue
        paths = {role: output_dir / name for role, name in names.items()}
        from ..media.thumbs import clip_previews, still_thumb   # PyAV and Pillow: only to make one

        try:
            if roles == ("thumb",):
                w, h = still_thumb(output_dir / rel, paths["thumb"])
                sizes = {"thumb": (w, h)}
            else:
                got = clip_previews(output_dir / rel, paths["poster"], paths["strip"])
                sizes = {"poster": (got["poster_width"], got["poster_height"]),
                         "strip": (got["strip_width"], got["strip_height"])}
        except Exception as exc:    # a preview never fails the render
            warn(f"no preview of '{rel}': {type(exc).__name__}: {exc}")
            continue
        previews[rel] = names
        for role, name in names.items():
            thumbs[name] = {"digest": sha256_file(paths[role]), "size": paths[role].stat().st_size,
                            "width": sizes[role][0], "height": sizes[role][1]}
    return previews, thumbs


def _kept(path: Path, info: Any) -> bool:
    """Whether ``path`` is a regular file with the bytes ``info`` (an earlier entry) records."""
    if not isinstance(info, dict) or not isinstance(info.get("digest"), str):
        return False
    if not all(isinstance(info.get(k), int) for k in ("width", "height")):
        return False
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    return sha256_file(path) == info["digest"]
