import numpy as np

from cinesynth_batch.media.video_io import X264_LOOKAHEAD_THREADS, X264_THREADS, last_frame, probe, read_frames, write_video


def frames(t=9, h=32, w=48, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(1, h, w, 3), dtype=np.uint8)
    shift = np.arange(t, dtype=np.uint8)[:, None, None, None] * 7
    return (base + shift).astype(np.uint8)


def test_same_frames_same_bytes_in_one_process(tmp_path):
    f = frames(h=256, w=128)      # x264 allows a lookahead thread per 4 macroblock rows
    digests = set()
    for i in range(4):
        p = tmp_path / f"v{i}.mp4"
        write_video(f, p, fps=16)
        digests.add(p.read_bytes())
    assert len(digests) == 1
    # the encoder's thread count is fixed (x264 records it in the stream), not the machine's core count
    assert f"threads={X264_THREADS} lookahead_threads={X264_LOOKAHEAD_THREADS} ".encode() in digests.pop()


def test_roundtrip_counts_size_and_content(tmp_path):
    yy, xx = np.mgrid[0:64, 0:96]
    still = np.stack([xx * 2, yy * 3, (xx + yy) * 2], axis=-1) % 256
    f = np.stack([(still + 5 * i) % 256 for i in range(17)]).astype(np.uint8)
    p = tmp_path / "v.mp4"
    write_video(f, p, fps=16, crf=0)
    info = probe(p)
    assert (info.frames, info.width, info.height, info.fps, info.video_codec) == (17, 96, 64, 16.0, "h264")
    assert info.duration == 17 / 16
    back = read_frames(p)
    assert back.shape == f.shape
    assert np.abs(back.astype(int) - f).mean() < 3     # smooth content: only yuv420p rounding
    assert np.array_equal(last_frame(p), back[-1])


def test_rejects_odd_sizes(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="must be even"):
        write_video(frames(h=31), tmp_path / "x.mp4")
