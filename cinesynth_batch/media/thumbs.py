"""Small previews of a render's outputs for the report: a thumbnail of a still, and for a clip
a poster frame and a strip of its first, middle and last frames. Clips are decoded with PyAV;
previews are WebP files a few kilobytes each, written to a temporary name and moved into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
from PIL import Image

THUMB = 200          # longest side of a still's thumbnail and of a clip's poster, in pixels
STRIP_HEIGHT = 64    # height of each frame of a clip's strip
QUALITY = 70         # WebP quality


def still_thumb(src: Path, dest: Path, side: int = THUMB) -> tuple[int, int]:
    """Write a thumbnail of the image ``src`` (longest side at most ``side``); its size."""
    with Image.open(src) as im:
        im.draft("RGB", (side, side))
        small = _fit(im.convert("RGB"), side)
    save_webp(small, dest)
    return small.size


def clip_previews(src: Path, poster: Path, strip: Path, side: int = THUMB,
                  strip_height: int = STRIP_HEIGHT) -> dict[str, int]:
    """Write the poster (the middle frame) and the strip (first, middle, last frames side by
    side) of the video ``src``. Returns the previews' sizes in pixels."""
    frames = _pick_frames(src)
    middle = frames[len(frames) // 2]
    poster_im = _fit(middle, side)
    save_webp(poster_im, poster)
    strip_height = min(strip_height, min(f.height for f in frames))    # never enlarged
    scaled = [f.resize((max(1, round(f.width * strip_height / f.height)), strip_height), Image.BILINEAR)
              for f in frames]
    gap = 2
    sheet = Image.new("RGB", (sum(s.width for s in scaled) + gap * (len(scaled) - 1), strip_height),
                      (255, 255, 255))
    x = 0
    for s in scaled:
        sheet.paste(s, (x, 0))
        x += s.width + gap
    save_webp(sheet, strip)
    return {"poster_width": poster_im.width, "poster_height": poster_im.height,
            "strip_width": sheet.width, "strip_height": sheet.height}


def _pick_frames(src: Path) -> list[Image.Image]:
    """The first, middle and last frames of ``src`` (fewer when it has fewer frames); only
    those three are converted to pictures. When the container does not say how many frames it
    holds (or says wrong), the first pass counts them and a second one picks them."""
    with av.open(str(src)) as container:
        if not container.streams.video:
            raise ValueError(f"{src}: no video stream")
        total = container.streams.video[0].frames
    kept, decoded = _decode_at(src, total)
    if len(kept) < len(_wanted(total)):
        kept, _ = _decode_at(src, decoded)
    if not kept:
        raise ValueError(f"{src}: no video frames")
    return [kept[i] for i in sorted(kept)]


def _wanted(total: int) -> set[int]:
    return {0, (total - 1) // 2, total - 1} if total > 0 else set()


def _decode_at(src: Path, total: int) -> tuple[dict[int, Image.Image], int]:
    """The frames at ``_wanted(total)`` as pictures, and how many frames were decoded."""
    wanted = _wanted(total)
    kept: dict[int, Image.Image] = {}
    n = 0
    with av.open(str(src)) as container:
        for n, frame in enumerate(container.decode(video=0), start=1):
            if n - 1 in wanted:
                kept[n - 1] = frame.to_image()
    return kept, n


def _fit(im: Image.Image, side: int) -> Image.Image:
    if max(im.size) <= side:
        return im.copy()
    scale = side / max(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)


def save_webp(im: Image.Image, dest: Path, lossless: bool = False) -> None:
    """Write ``im`` as WebP to a fresh temporary file (never through a link) and move it to
    ``dest``. ``lossless`` for drawings (a waveform), lossy for pictures."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            im.save(f, format="WEBP", quality=100 if lossless else QUALITY, lossless=lossless, method=4)
        os.replace(tmp, dest)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
