"""Download a URL input with yt-dlp into the cache.

params: ``url``, ``format`` (yt-dlp format selection; the plan caps the height), ``ytdlp``
(yt-dlp's major version, keyed so that a new extractor generation downloads again). The
render passes ``uses`` (where the spec names the URL), used in messages only.

yt-dlp writes into the stage's scratch folder inside the cache (its own cache folder is
off), merges separate video and audio with the imageio-ffmpeg binary, and the result is
checked with PyAV and re-muxed (streams copied) into one Matroska file: the executor then
moves it into the content-addressed store. Nothing is written outside the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import StageContext, StageError

KIND = "download"
OUTPUT_EXT = ".mkv"
MODEL_ROLE = None

SOCKET_TIMEOUT = 20


class _Quiet:
    """yt-dlp's logger: keep its messages for the error text instead of printing them."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def _where(params: dict[str, Any]) -> str:
    uses = params.get("uses") or []
    return "; ".join(f"scene '{u['scene']}' {u['field']}" if u.get("scene") else u["field"]
                     for u in uses) or "the spec"


def _checked(url: str) -> str:
    """The URL exactly as the plan rebuilt it from checked parts; anything two URL parsers could
    read differently (userinfo, backslashes, other schemes, spaces) is refused here too."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise StageError(f"download: refused URL {url!r} ({exc})") from None
    plain = all(c.isprintable() and not c.isspace() for c in url) and "\\" not in url
    if parts.scheme not in ("http", "https") or "@" in parts.netloc or not parts.hostname or not plain \
            or urlunsplit(parts) != url:
        raise StageError(f"download: refused URL {url!r}",
                         hint="only plain http(s) URLs, without user@ or backslashes, are downloaded")
    return url


def _fetch(url: str, fmt: str, folder: Path, progress) -> Path:
    import imageio_ffmpeg
    import yt_dlp

    url = _checked(url)

    folder.mkdir(parents=True, exist_ok=True)

    def hook(d: dict) -> None:
        total = d.get("total_bytes") or d.get("total_bytes_estimate")
        if d.get("status") == "downloading" and total:
            progress(int(d.get("downloaded_bytes") or 0), int(total))

    logger = _Quiet()
    opts = {
        "format": fmt, "outtmpl": str(folder / "media.%(ext)s"),
        "paths": {"home": str(folder), "temp": str(folder)}, "cachedir": False,
        "noplaylist": True, "playlist_items": "1", "quiet": True, "no_warnings": True, "noprogress": True,
        "logger": logger, "progress_hooks": [hook], "merge_output_format": "mkv",
        "ffmpeg_location": imageio_ffmpeg.get_ffmpeg_exe(), "socket_timeout": SOCKET_TIMEOUT,
        "retries": 1, "fragment_retries": 1, "overwrites": True, "updatetime": False,
    }
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            ydl.extract_info(url, download=True)
    except yt_dlp.utils.DownloadError as exc:
        text = (logger.errors[-1] if logger.errors else str(exc)).removeprefix("ERROR: ")
        raise StageError(f"download: {url}: {text}",
                         hint="check the URL and the network; a web page must hold a video") from exc
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
    if not files:
        raise StageError(f"download: {url}: yt-dlp finished without a file")
    return max(files, key=lambda p: p.stat().st_size)


def _check_media(path: Path, url: str) -> tuple[int, int]:
    """(video streams, audio streams) after decoding a frame of each; StageError if none."""
    import av

    try:
        with av.open(str(path)) as container:
            n_video, n_audio = len(container.streams.video), len(container.streams.audio)
            for kind, n in (("video", n_video), ("audio", n_audio)):
                if n:
                    stream = getattr(container.streams, kind)[0]
                    container.seek(0)
                    next(iter(container.decode(stream)))
    except (av.error.FFmpegError, OSError, StopIteration, UnicodeDecodeError) as exc:
        raise StageError(f"download: {url} is not a media file ({type(exc).__name__}: {exc})",
                         hint="the URL must lead to a video or audio file, or a page that holds one") \
            from exc
    if not n_video and not n_audio:
        raise StageError(f"download: {url} has no video or audio stream",
                         hint="the URL must lead to a video or audio file, or a page that holds one")
    return n_video, n_audio


def run(params: dict[str, Any], inputs: dict[str, Any], out: Path, ctx: StageContext) -> dict[str, Any]:
    from ..media.ffmpeg import FFmpegError, ffmpeg_path_arg, run_ffmpeg
    from ..media.video_io import probe

    url, fmt = params["url"], params["format"]
    work = (ctx.work_dir or out.parent) / "download"
    try:
        got = _fetch(url, fmt, work, ctx.progress)
        n_video, n_audio = _check_media(got, url)
    except StageError as exc:
        exc.message = f"{exc.message} (used by {_where(params)})"
        raise
    try:
        run_ffmpeg(["-y", "-i", ffmpeg_path_arg(got), "-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy",
                    "-map_metadata", "-1", "-fflags", "+bitexact", "-f", "matroska", ffmpeg_path_arg(out)],
                   f"storing the download of {url}")
    except FFmpegError as exc:
        raise StageError(f"download: {url}: cannot store the media ({exc.stderr_tail[-300:]})") from exc
    info = probe(out)
    return {"url": url, "bytes": got.stat().st_size, "video_streams": n_video, "audio_streams": n_audio,
            "width": info.width, "height": info.height, "duration": info.duration}
