"""Previews of the published outputs, written beside them in ``thumbs/``: a thumbnail for each
still, a poster and a strip of frames for each clip (``media/thumbs.py``), and a waveform for
each sound and for each clip made from speech (``media/waveform.py``). A preview is named after
the digest of its source (a clip's waveform after the digest of the speech it was made from),
so an unchanged output keeps its previews: they are made again only when missing or when their
bytes are not the ones the last manifest recorded."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

from ..cache.digest import sha256_file

THUMBS = "thumbs"
STILLS = {".png", ".jpg", ".jpeg", ".webp"}
CLIPS = {".mp4", ".mov", ".webm", ".mkv"}
SOUNDS = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus"}
_DIGEST = re.compile(r"[0-9a-f]{64}")


def make_previews(output_dir: Path, published: dict[str, dict[str, Any]], earlier: Any,
                  warn: Callable[[str], None]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
    """``(previews, thumbs)``: for each published still, clip or sound the names of its
    previews, and for each preview file its digest, size and pixel size (a waveform: also the
    seconds it shows). ``earlier``: the last manifest's ``thumbs``. ``output_dir/thumbs`` must
    be a real folder. A preview that cannot be made is left out, with a warning: the report
    shows the output without it."""
    earlier = earlier if isinstance(earlier, dict) else {}
    previews: dict[str, dict[str, str]] = {}
    thumbs: dict[str, dict[str, Any]] = {}
    for rel, info in published.items():
        for roles, digest in preview_sets(rel, info):
            names = {role: f"{THUMBS}/{digest[:24]}.{role}.webp" for role in roles}
            if all(n in thumbs for n in names.values()) or \
                    all(_kept(output_dir / n, earlier.get(n)) for n in names.values()):
                previews.setdefault(rel, {}).update(names)
                thumbs.update({n: thumbs.get(n) or earlier[n] for n in names.values()})
                continue
            paths = {role: output_dir / name for role, name in names.items()}
            try:
                facts = _make(roles, output_dir / rel, paths)
            except Exception as exc:    # a preview never fails the render
                warn(f"no preview of '{rel}': {type(exc).__name__}: {exc}")
                continue
            previews.setdefault(rel, {}).update(names)
            for role, name in names.items():
                thumbs[name] = {"digest": sha256_file(paths[role]), "size": paths[role].stat().st_size,
                                **facts[role]}
    return previews, thumbs


def preview_sets(rel: str, info: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """The previews of one output, as ``(roles made together, digest they are named after)``:
    a still's thumbnail; a clip's poster and strip, and its waveform when the clip was made from
    speech (``audio_digest``: the digest of that speech); a sound's waveform."""
    suffix = Path(rel).suffix.lower()
    digest = info.get("digest")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        return []
    if suffix in STILLS:
        return [(("thumb",), digest)]
    if suffix in CLIPS:
        speech = info.get("audio_digest")
        return [(("poster", "strip"), digest)] + \
            ([(("wave",), speech)] if isinstance(speech, str) and _DIGEST.fullmatch(speech) else [])
    if suffix in SOUNDS:
        return [(("wave",), digest)]
    return []


def _make(roles: tuple[str, ...], src: Path, paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Write the previews ``roles`` of ``src``; each one's pixel size (and seconds shown)."""
    if roles == ("wave",):
        from ..media.waveform import waveform      # PyAV and Pillow: only to make one

        return {"wave": waveform(src, paths["wave"])}
    from ..media.thumbs import clip_previews, still_thumb

    if roles == ("thumb",):
        w, h = still_thumb(src, paths["thumb"])
        return {"thumb": {"width": w, "height": h}}
    got = clip_previews(src, paths["poster"], paths["strip"])
    return {"poster": {"width": got["poster_width"], "height": got["poster_height"]},
            "strip": {"width": got["strip_width"], "height": got["strip_height"]}}


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
