"""Test helpers: a local HTTP server for URL inputs, a closed port, a small real clip."""

from __future__ import annotations

from pathlib import Path
class MediaServer:
    """A folder served over HTTP on 127.0.0.1 (random port, in a thread), counting requests."""

    def __init__(self, folder: Path):
        import functools
        import http.server
        import threading
        from collections import Counter

        self.folder = folder
        self.requests: Counter = Counter()
        counts = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send_head(self):
                counts[self.path] += 1
                return super().send_head()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A local port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_clip(path: Path, seconds: float = 1.0, size: int = 64, fps: int = 16, audio: bool = True) -> Path:
    """A small H.264 (+ AAC tone) mp4 made by the real ffmpeg."""
    from cinesynth_batch.media.ffmpeg import run_ffmpeg

    args = ["-y", "-f", "lavfi", "-i", f"testsrc=size={size}x{size}:rate={fps}"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"]
    args += ["-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    args += ["-c:a", "aac"] if audio else []
    run_ffmpeg([*args, str(path)], "making a test clip")
    return path

