"""The source stages on real files: download (yt-dlp from a local HTTP server), frame and
audio extraction (PyAV), vocal separation (the tiny HTDemucs through the real loader)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cinesynth_batch.media.audio import probe_audio, read_audio, write_tone
from cinesynth_batch.media.video_io import probe, read_frames
from cinesynth_batch.catalog.loaders import load_model
from cinesynth_batch.models.separation import load_demucs
from cinesynth_batch.plan.sources import download_format, ytdlp_major
from cinesynth_batch.stages import download, extract_audio, extract_frame, separate
from cinesynth_batch.stages.base import StageContext, StageError

from media_server import closed_port, make_clip


def _ctx(tmp_path: Path, models=None) -> StageContext:
    work = tmp_path / "scratch"
    work.mkdir(exist_ok=True)
    return StageContext(models=models, resolve_lora=None, work_dir=work)


def _dl_params(url: str) -> dict:
    return {"url": url, "format": download_format(1080), "ytdlp": ytdlp_major(),
            "uses": [{"scene": "s", "field": "scenes[0].animate.reference_video", "where": "x"}]}


def test_download_stores_the_media_and_nothing_else(media_server, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))          # yt-dlp must not write there
    make_clip(media_server.folder / "clip.mp4", seconds=1.0)
    out = tmp_path / "scratch" / "out.mkv"
    meta = download.run(_dl_params(media_server.url("clip.mp4")), {}, out, _ctx(tmp_path))
    info = probe(out)
    assert (info.video_codec, info.audio_codec, info.frames, info.width) == ("h264", "aac", 16, 64)
    assert meta["video_streams"] == 1 and meta["audio_streams"] == 1
    original = read_frames(media_server.folder / "clip.mp4")
    assert np.array_equal(read_frames(out), original)            # streams copied, not re-encoded
    assert not (tmp_path / "home").exists()
    assert {p.name for p in (tmp_path / "scratch").iterdir()} <= {"out.mkv", "download"}


@pytest.mark.parametrize("name,body,expected", [
    ("page.html", b"<html><body><p>no video here</p></body></html>", "Unsupported URL"),
    ("note.txt", b"just some text\n", "is not a media file"),
    ("missing.mp4", None, "HTTP Error 404"),
])
def test_download_of_non_media_fails_clearly(media_server, tmp_path, name, body, expected):
    if body is not None:
        (media_server.folder / name).write_bytes(body)
    url = media_server.url(name)
    with pytest.raises(StageError) as info:
        download.run(_dl_params(url), {}, tmp_path / "scratch" / "out.mkv", _ctx(tmp_path))
    assert url in info.value.message and expected in info.value.message
    assert "used by scene 's' scenes[0].animate.reference_video" in info.value.message
    assert not (tmp_path / "scratch" / "out.mkv").exists()


def test_download_of_unreachable_url_fails_clearly(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/clip.mp4"
    with pytest.raises(StageError, match="Connection refused") as info:
        download.run(_dl_params(url), {}, tmp_path / "scratch" / "out.mkv", _ctx(tmp_path))
    assert url in info.value.message


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1.0)


@pytest.mark.parametrize("at,index", [("first", 0), ("last", 15), (0.5, 8), (0.53, 8), (0.99, 15)])
def test_extract_frame_picks_the_frame_on_screen(clip, tmp_path, at, index):
    out = tmp_path / "f.png"
    meta = extract_frame.run({"at": at}, {"video": str(clip)}, out, _ctx(tmp_path))
    got = np.asarray(Image.open(out).convert("RGB")).astype(int)
    frames = read_frames(clip).astype(int)
    diffs = [np.abs(frames[k] - got).mean() for k in range(len(frames))]
    assert int(np.argmin(diffs)) == index and diffs[index] < 1.0
    assert meta["time"] == pytest.approx(index / 16)


def test_extract_frame_errors(clip, tmp_path):
    with pytest.raises(StageError, match="after the end of clip.mp4"):
        extract_frame.run({"at": 3.0}, {"video": str(clip)}, tmp_path / "f.png", _ctx(tmp_path))
    wav = write_tone(tmp_path / "t.wav", 0.5)
    with pytest.raises(StageError, match="t.wav has no video stream"):
        extract_frame.run({"at": "first"}, {"video": str(wav)}, tmp_path / "f.png", _ctx(tmp_path))


def test_extract_audio_cuts_the_range(tmp_path):
    src = write_tone(tmp_path / "t.wav", 2.0, freq=300, rate=16000)
    out = tmp_path / "a.wav"
    meta = extract_audio.run({"start": 0.5, "end": 1.25}, {"media": str(src)}, out, _ctx(tmp_path))
    assert meta == {"rate": 16000, "channels": 1, "samples": 12000, "duration": 0.75}
    got, whole = read_audio(out)[0], read_audio(src)[0]
    assert np.abs(got - whole[8000:20000]).max() < 1e-4
    meta = extract_audio.run({"start": 1.5, "end": None}, {"media": str(src)}, out, _ctx(tmp_path))
    assert meta["samples"] == 8000


def test_extract_audio_from_video_and_errors(clip, tmp_path):
    meta = extract_audio.run({"start": 0.0, "end": None}, {"media": str(clip)}, tmp_path / "a.wav",
                             _ctx(tmp_path))
    assert meta["duration"] == pytest.approx(probe_audio(clip).duration, abs=1e-3)
    with pytest.raises(StageError, match="outside the sound of clip.mp4"):
        extract_audio.run({"start": 5.0, "end": 6.0}, {"media": str(clip)}, tmp_path / "a.wav", _ctx(tmp_path))
    silent = make_clip(tmp_path / "silent.mp4", seconds=0.5, audio=False)
    with pytest.raises(StageError, match="silent.mp4 has no readable sound"):
        extract_audio.run({"start": 0.0, "end": None}, {"media": str(silent)}, tmp_path / "a.wav",
                          _ctx(tmp_path))


class _One:
    def __init__(self, model):
        self.model = model

    def get(self, role):
        assert role == "separate"
        return self.model


@pytest.fixture(scope="module")
def demucs(tiny_root):
    return load_model("demucs", tiny_root / "htdemucs")


def test_separate_stems_add_up_to_the_mix(demucs, tmp_path):
    song = write_tone(tmp_path / "song.wav", 1.5, freq=330, rate=22050, channels=2)
    outs = {}
    for stem in ("vocals", "accompaniment"):
        out = tmp_path / f"{stem}.wav"
        meta = separate.run({"stem": stem, "overlap": 0.25}, {"audio": str(song)}, out,
                            _ctx(tmp_path, _One(demucs)))
        assert meta["rate"] == demucs.samplerate and meta["samples"] == round(1.5 * demucs.samplerate)
        outs[stem] = read_audio(out)
    # the reference: demucs' own apply_model on the normalised mix, as `demucs.separate` does
    import torch
    from demucs.apply import apply_model

    mix = torch.from_numpy(read_audio(song, rate=demucs.samplerate, channels=2))
    mean, std = mix.mean(0).mean(), mix.mean(0).std()
    with torch.no_grad():
        ref = apply_model(demucs, ((mix - mean) / std)[None], shifts=0, overlap=0.25)[0] * std + mean
    vocals = ref[demucs.sources.index("vocals")].numpy()
    others = (ref.sum(0).numpy() - vocals)
    assert np.abs(outs["vocals"] - np.clip(vocals, -1, 1)).max() < 1e-4
    assert np.abs(outs["accompaniment"] - np.clip(others, -1, 1)).max() < 1e-4
    assert not np.allclose(outs["vocals"], outs["accompaniment"], atol=1e-2)
    again = tmp_path / "again.wav"
    separate.run({"stem": "vocals", "overlap": 0.25}, {"audio": str(song)}, again, _ctx(tmp_path, _One(demucs)))
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(
        (tmp_path / "vocals.wav").read_bytes()).digest()


def test_separate_refuses_bad_input_and_bad_model_folders(demucs, tmp_path):
    note = tmp_path / "note.wav"
    note.write_text("not audio")
    with pytest.raises(StageError, match="note.wav has no readable sound"):
        separate.run({"stem": "vocals", "overlap": 0.25}, {"audio": str(note)}, tmp_path / "o.wav",
                     _ctx(tmp_path, _One(demucs)))
    with pytest.raises(StageError, match="^separate: stem: 'drums': input should be 'vocals' or 'accompaniment'$"):
        separate.run({"stem": "drums", "overlap": 0.25}, {"audio": str(note)}, tmp_path / "o.wav",
                     _ctx(tmp_path, _One(demucs)))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "htdemucs.yaml").write_text("models: [955717e8]\n")
    (legacy / "955717e8.th").write_bytes(b"pickle")
    with pytest.raises(StageError, match=r"legacy \.th pickles are not read"):
        load_demucs(legacy)
