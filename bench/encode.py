"""Writing and reading a clip: ``media/video_io.py``'s encoder threads and decoder frame threads
against one thread each, in one process.

Two 720x1280 × 77-frame clips (the Change Character size): noise, which is what random-weight
models make and the hardest case for x264, and a smooth moving pattern, nearer to a real clip.
Each write is timed with one x264 thread and with ``X264_THREADS`` (bytes compared between
repeats: a fixed thread count gives the same file every time); each read with PyAV decoding in
one thread and with frame threads (frames compared: decoding is exact).

    python bench/encode.py [--frames 77] [--size 720x1280] [--reps 2] [--threads 4:1,8:1,8:2,16:2]

``--threads`` adds a write line for other encoder settings (frame threads : lookahead threads),
each against one thread in the same run: what a different fixed count would cost or save on this
machine before it is chosen. Every setting is checked to give the same bytes on each repeat.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cinesynth_batch.media import video_io  # noqa: E402


def clips(frames: int, height: int, width: int) -> dict[str, np.ndarray]:
    noise = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([((np.sin(xx / 40 + i / 5) + np.cos(yy / 60 - i / 7)) * 60 + 128).astype(np.uint8)
                       for i in range(frames)])
    return {"noise": noise, "smooth": np.repeat(smooth[..., None], 3, axis=-1)}


def read_one_thread(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def timed(fn, reps: int) -> tuple[float, list]:
    times, outs = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        outs.append(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), outs


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=77)
    ap.add_argument("--size", default="720x1280", help="WIDTHxHEIGHT")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", default="", help="other encoder settings to time, e.g. 4:1,8:1,8:2,16:2")
    args = ap.parse_args()
    settings = [tuple(int(v) for v in (item.split(":") + ["1"])[:2]) for item in args.threads.split(",") if item]
    width, height = (int(v) for v in args.size.split("x"))
    print(f"{os.cpu_count()} cores, x264 threads {video_io.X264_THREADS}, {args.frames} frames {width}x{height}")
    print(f"{'clip':8} {'write 1 thread s':>17} {'write s':>8} {'x':>5} {'read 1 thread s':>16} {'read s':>7} {'x':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, frames in clips(args.frames, height, width).items():
            base, one = Path(tmp) / f"{name}-1.mp4", Path(tmp) / f"{name}.mp4"

            def write_new():
                video_io.write_video(frames, one, fps=16)
                return digest(one)

            def write_old():
                video_io.write_video(frames, base, fps=16, thread_args=video_io.x264_thread_args(1, 1))
                return digest(base)

            w1, _ = timed(write_old, args.reps)
            wn, digests = timed(write_new, args.reps)
            assert len(set(digests)) == 1, f"{name}: the threaded encoder gave different bytes: {digests}"
            r1, (old, *_) = timed(lambda: read_one_thread(one), args.reps)
            rn, (new, *_) = timed(lambda: video_io.read_frames(one), args.reps)
            assert np.array_equal(old, new), f"{name}: threaded decoding changed the frames"
            print(f"{name:8} {w1:17.2f} {wn:8.2f} {w1 / wn:5.2f} {r1:16.2f} {rn:7.2f} {r1 / rn:5.2f}")
            for threads, lookahead in settings:
                path = Path(tmp) / f"{name}-{threads}-{lookahead}.mp4"

                def write_setting():
                    args_ = video_io.x264_thread_args(threads, lookahead)
                    video_io.write_video(frames, path, fps=16, thread_args=args_)
                    return digest(path)

                ws, digests = timed(write_setting, args.reps)
                assert len(set(digests)) == 1, f"{name}: {threads}:{lookahead} gave different bytes: {digests}"
                print(f"{name:8} write with {threads} frame threads, {lookahead} lookahead: {ws:.2f} s, "
                      f"{w1 / ws:.2f}x one thread, {wn / ws:.2f}x the current setting, "
                      f"{path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
