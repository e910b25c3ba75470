"""The report's parts: previews of stills and clips and waveforms of sounds (PyAV, real files),
the timeline SVG, the figures and history a render keeps, and the weight of a 30-scene page."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cinesynth_batch.execute.publish import memory_table
from cinesynth_batch.media.audio import write_tone
from cinesynth_batch.media.ffmpeg import ffmpeg_path_arg, run_ffmpeg
from cinesynth_batch.media.thumbs import clip_previews, still_thumb
from cinesynth_batch.media.video_io import write_video
from cinesynth_batch.media.waveform import peaks, waveform
from cinesynth_batch.report.figures import HISTORY, carried_figures, figures, history, history_entry
from cinesynth_batch.report.html import render_report
from cinesynth_batch.report.previews import make_previews
from cinesynth_batch.report.scenes import scene_rows
from cinesynth_batch.report.timeline import timeline_svg


def grey_clip(path: Path, levels: list[int], size=(48, 64)) -> Path:
    frames = np.stack([np.full((*size, 3), v, np.uint8) for v in levels])
    write_video(frames, path, fps=8, crf=0)
    return path


def talking_clip(path: Path, speech: Path) -> Path:
    """A grey clip with ``speech`` muxed in as AAC, as the lipsync stage writes it."""
    silent = grey_clip(path.with_name("silent.mp4"), [60] * 16)
    run_ffmpeg(["-y", "-i", ffmpeg_path_arg(silent), "-i", ffmpeg_path_arg(speech), "-map", "0:v:0",
                "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-ar", "48000", "-threads", "1",
                ffmpeg_path_arg(path)], what="muxing")
    return path


def half_silent(path: Path) -> Path:
    """One second of silence, then one second of a 300 Hz tone at 0.4 of full scale (stereo)."""
    write_tone(path.with_name("quiet.wav"), 1.0, amplitude=0, rate=22050, channels=2)
    write_tone(path.with_name("loud.wav"), 1.0, freq=300, amplitude=0.4, rate=22050, channels=2)
    run_ffmpeg(["-y", "-i", ffmpeg_path_arg(path.with_name("quiet.wav")), "-i",
                ffmpeg_path_arg(path.with_name("loud.wav")), "-filter_complex", "[0:a][1:a]concat=n=2:v=0:a=1",
                ffmpeg_path_arg(path)], what="joining")
    return path


def test_waveform_peaks_follow_the_sound_and_a_long_one_shows_its_beginning(tmp_path):
    wav = half_silent(tmp_path / "speech.wav")
    low, high, seconds = peaks(wav, columns=20)
    assert seconds == pytest.approx(2.0, abs=1e-3)
    assert np.abs(high[:9]).max() < 1e-3 and np.abs(low[:9]).max() < 1e-3       # the silent second
    assert np.allclose(high[10:], 0.4, atol=0.01) and np.allclose(low[10:], -0.4, atol=0.01)
    _, _, shown = peaks(wav, columns=20, max_seconds=0.5)
    assert shown == pytest.approx(0.5, abs=1e-3)
    got = waveform(wav, tmp_path / "w.webp")
    assert got == {"width": 200, "height": 40, "seconds": 2.0}
    im = np.asarray(Image.open(tmp_path / "w.webp").convert("RGB")).astype(int)
    ink = (np.abs(im - [59, 110, 165]).sum(axis=2) < 30)
    assert ink[:, :95].sum() <= 95                        # silence: the middle line at most
    assert ink[1:39, 105:].all()                          # the tone: scaled to the full height
    with pytest.raises(ValueError, match="no audio stream"):
        peaks(grey_clip(tmp_path / "mute.mp4", [10, 20]))


def test_a_talking_clip_has_the_waveform_of_its_speech_shared_with_the_sound(tmp_path):
    """A lip-synced clip's waveform is named after its speech's digest: one file for the clip
    and the TTS sound it was made from, kept while that digest is the same; the scene row shows
    it once, beside the sound."""
    (tmp_path / "thumbs").mkdir()
    (tmp_path / "scenes").mkdir()
    wav = half_silent(tmp_path / "scenes" / "a.tts.wav")
    talking_clip(tmp_path / "scenes" / "a.mp4", wav)
    speech, clip = "a" * 64, "b" * 64
    published = {"scenes/a.tts.wav": {"stage": "a.tts", "kind": "tts", "scene": "a", "digest": speech},
                 "scenes/a.mp4": {"stage": "a.lipsync", "kind": "lipsync", "scene": "a", "digest": clip,
                                  "audio_digest": speech}}
    warnings: list[str] = []
    previews, thumbs = make_previews(tmp_path, published, {}, warnings.append)
    wave = f"thumbs/{'a' * 24}.wave.webp"
    assert previews == {"scenes/a.tts.wav": {"wave": wave},
                        "scenes/a.mp4": {"poster": f"thumbs/{'b' * 24}.poster.webp",
                                         "strip": f"thumbs/{'b' * 24}.strip.webp", "wave": wave}}
    assert thumbs[wave]["seconds"] == pytest.approx(2.0, abs=1e-3) and warnings == []
    # the clip alone (no sound published): its waveform is drawn from its own audio track
    (tmp_path / wave).unlink()
    alone, drawn = make_previews(tmp_path, {"scenes/a.mp4": published["scenes/a.mp4"]}, {}, warnings.append)
    assert alone["scenes/a.mp4"]["wave"] == wave and drawn[wave]["width"] == 200 and warnings == []
    assert drawn[wave]["seconds"] == pytest.approx(2.0, abs=0.05)
    made = (tmp_path / wave).stat().st_mtime_ns
    make_previews(tmp_path, published, drawn, warnings.append)      # same speech: kept as it is
    assert (tmp_path / wave).stat().st_mtime_ns == made
    stages = [{"id": "a.tts", "kind": "tts", "scene": "a", "status": "ran", "publish": "scenes/a.tts.wav"},
              {"id": "a.lipsync", "kind": "lipsync", "scene": "a", "status": "ran", "publish": "scenes/a.mp4"}]
    (row,) = scene_rows({"stages": stages, "files": published, "previews": previews, "thumbs": thumbs})
    assert [i["wave"]["src"] for i in row["sounds"]] == [wave] and "wave" not in row["clips"][0]
    (row,) = scene_rows({"stages": stages[1:], "files": published, "previews": previews, "thumbs": thumbs})
    assert row["sounds"] == [] and row["clips"][0]["wave"] == {"src": wave, "width": 200, "height": 40,
                                                               "seconds": thumbs[wave]["seconds"]}


def test_clip_previews_are_the_middle_frame_and_first_middle_last(tmp_path):
    clip = grey_clip(tmp_path / "c.mp4", [20, 50, 80, 110, 140, 170, 200, 230, 250])
    got = clip_previews(clip, tmp_path / "p.webp", tmp_path / "s.webp", side=200, strip_height=32)
    poster, strip = Image.open(tmp_path / "p.webp"), Image.open(tmp_path / "s.webp")
    assert poster.size == (64, 48)                           # never enlarged
    assert abs(poster.getpixel((32, 24))[0] - 140) <= 6      # frame 4 of 9
    panel = round(64 * 32 / 48)
    assert got == {"poster_width": 64, "poster_height": 48, "strip_width": 3 * panel + 4, "strip_height": 32}
    centres = [strip.getpixel((i * (panel + 2) + panel // 2, 16))[0] for i in range(3)]
    assert [abs(c - want) <= 6 for c, want in zip(centres, (20, 140, 250))] == [True] * 3, centres


def test_still_thumb_keeps_the_shape(tmp_path):
    Image.new("RGB", (1280, 720), (10, 200, 30)).save(tmp_path / "s.png")
    assert still_thumb(tmp_path / "s.png", tmp_path / "t.webp") == (200, 112)
    assert Image.open(tmp_path / "t.webp").size == (200, 112)


def test_previews_are_kept_while_their_bytes_are_the_recorded_ones(tmp_path):
    (tmp_path / "thumbs").mkdir()
    Image.new("RGB", (96, 64), (200, 0, 0)).save(tmp_path / "a.png")
    grey_clip(tmp_path / "a.mp4", [30, 90, 150])
    write_tone(tmp_path / "a.wav", 0.5)
    (tmp_path / "a.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    published = {"a.png": {"digest": "1" * 64}, "a.mp4": {"digest": "2" * 64}, "a.wav": {"digest": "3" * 64},
                 "a.srt": {"digest": "4" * 64}}
    warnings: list[str] = []
    previews, thumbs = make_previews(tmp_path, published, {}, warnings.append)
    assert previews == {"a.png": {"thumb": f"thumbs/{'1' * 24}.thumb.webp"},
                        "a.mp4": {"poster": f"thumbs/{'2' * 24}.poster.webp",
                                  "strip": f"thumbs/{'2' * 24}.strip.webp"},
                        "a.wav": {"wave": f"thumbs/{'3' * 24}.wave.webp"}}
    assert warnings == []
    poster = tmp_path / previews["a.mp4"]["poster"]
    made = poster.stat().st_mtime_ns
    again, kept = make_previews(tmp_path, published, thumbs, warnings.append)
    assert (again, kept) == (previews, thumbs) and poster.stat().st_mtime_ns == made
    poster.write_bytes(b"edited")                                  # not the recorded bytes: made again
    make_previews(tmp_path, published, thumbs, warnings.append)
    assert poster.read_bytes() != b"edited" and Image.open(poster).size == (64, 48)
    (tmp_path / "b.mp4").write_bytes(b"not a video")
    previews, _ = make_previews(tmp_path, {"b.mp4": {"digest": "5" * 64}}, {}, warnings.append)
    assert previews == {} and warnings and warnings[-1].startswith("no preview of 'b.mp4': ")
    (tmp_path / "b.wav").write_bytes(b"RIFF not a sound")
    previews, _ = make_previews(tmp_path, {"b.wav": {"digest": "6" * 64}}, {}, warnings.append)
    assert previews == {} and warnings[-1].startswith("no preview of 'b.wav': ")
    # a digest that is not one names no preview file
    assert make_previews(tmp_path, {"c.png": {"digest": "../../x" + "0" * 57}}, {}, warnings.append) == ({}, {})


def rows_with_spans():
    return [
        {"id": "a.image", "kind": "image", "scene": "a", "status": "ran", "model": "m/img@1",
         "started_at": 100.0, "ended_at": 102.5, "lane": "rank 0"},
        {"id": "b.image", "kind": "image", "scene": "b", "status": "cached"},
        {"id": "a.video", "kind": "video", "scene": "a", "status": "ran", "model": "m/vid@1",
         "started_at": 102.5, "ended_at": 110.0, "lane": "rank 1"},
        {"id": "b.video<x>", "kind": "video", "scene": "b", "status": "failed", "model": "m/vid@1",
         "started_at": 102.6, "ended_at": 103.0, "lane": "rank 0", "error": "boom\nmore"},
        {"id": "assemble.final", "kind": "assemble", "scene": None, "status": "blocked"},
    ]


def test_figures_sum_seconds_by_kind_and_model_and_count_hits():
    memory = {"ranks": [{"device": "cuda:0"}], "loads": 3, "swaps": 1, "bytes_moved": 10, "peak_gpu_bytes": 7}
    fig = figures(rows_with_spans(), memory, "T", 12.0)
    assert fig["by_kind"] == {"video": 7.9, "image": 2.5}
    assert fig["by_model"] == {"m/vid@1": 7.9, "m/img@1": 2.5}
    assert (fig["ran"], fig["cached"], fig["failed"], fig["blocked"]) == (2, 1, 1, 1)
    assert fig["hit_rate"] == 0.25 and fig["device_seconds"] == "GPU-seconds"
    assert [(b["stage"], b["lane"], b["start"], b["end"]) for b in fig["bars"]] == [
        ("a.image", "rank 0", 0.0, 2.5), ("a.video", "rank 1", 2.5, 10.0), ("b.video<x>", "rank 0", 2.6, 3.0)]


def test_timeline_draws_one_bar_per_stage_in_its_lane_escaped():
    svg = timeline_svg(figures(rows_with_spans(), {}, "T", 12.0)["bars"])
    bars = re.findall(r'<rect class="(bar[^"]*)" data-stage="([^"]*)"[^>]*y="(\d+)"', svg)
    assert [(c, s) for c, s, _ in bars] == [("bar", "a.image"), ("bar", "a.video"),
                                           ("bar failed", "b.video&lt;x&gt;")]
    assert bars[0][2] == bars[2][2] != bars[1][2]                   # rank 0, rank 1, rank 0
    assert "<x>" not in svg and ">rank 0<" in svg and ">rank 1<" in svg
    assert timeline_svg([]) == ""


def test_a_stage_split_over_ranks_counts_its_seconds_once_per_rank():
    """A sequence-parallel stage on 4 ranks for 4 s is 16 device-seconds, by kind and by model;
    its bar is in its leading rank's lane, with a share in each other rank's lane."""
    split = {"id": "c.lipsync", "kind": "lipsync", "scene": "c", "status": "ran", "model": "m/s2v@1",
             "started_at": 103.0, "ended_at": 107.0, "lane": "rank 2", "ranks": [2, 3, 0, 1]}
    memory = {"ranks": [{"device": f"cuda:{i}"} for i in range(4)]}
    fig = figures(rows_with_spans() + [split], memory, "T", 12.0)
    assert fig["by_kind"] == {"lipsync": 16.0, "video": 7.9, "image": 2.5}
    assert fig["by_model"] == {"m/s2v@1": 16.0, "m/vid@1": 7.9, "m/img@1": 2.5}
    assert fig["bars"][-1]["shares"] == ["rank 3", "rank 0", "rank 1"]
    assert "shares" not in fig["bars"][0] and fig["device_seconds"] == "GPU-seconds"
    svg = timeline_svg(fig["bars"])
    assert re.findall(r'<rect class="bar" data-stage="c.lipsync"[^>]*y="(\d+)"', svg) == ["50"]     # rank 2
    assert re.findall(r'<rect class="share" data-stage="c.lipsync"[^>]*y="(\d+)"', svg) == ["74", "2", "26"]
    assert len(re.findall(r'<rect class="bar', svg)) == 4 and "on 4 ranks" in svg
    assert carried_figures({"rendered_at": "T", "by_kind": {}, "bars": fig["bars"]})["bars"] == fig["bars"]
    # ranks that do not read as ranks count the stage once
    for odd in ([2, True, -1], list(range(65))):                   # more than one node's GPUs
        assert figures([{**split, "ranks": odd}], memory, "T", 1.0)["by_kind"] == {"lipsync": 4.0}
    assert carried_figures({"rendered_at": "T", "by_kind": {}, "bars": [{**fig["bars"][-1], "shares": [1]}]})["bars"] == []


def test_history_keeps_the_last_renders_and_drops_what_does_not_read_as_one():
    fig = figures(rows_with_spans(), {}, "T0", 12.0)
    old = [history_entry({**fig, "rendered_at": f"T{i}"}, "x") for i in range(1, 10)]
    new = history(old + ["junk", {"rendered_at": 3}], history_entry(fig, "2 run"))
    assert [h["rendered_at"] for h in new] == ["T0"] + [f"T{i}" for i in range(1, HISTORY)]
    assert history(old, None) == old[:HISTORY]
    assert carried_figures({"rendered_at": "T", "by_kind": {}, "bars": [{"stage": 1}, *fig["bars"]]})["bars"] \
        == fig["bars"]
    assert carried_figures({"rendered_at": "T", "bars": "x"}) is None


def test_a_thirty_scene_page_weighs_under_a_megabyte(tmp_path):
    """HTML plus previews of 30 scenes (still, upscaled still, one clip and a spoken line each)
    and the final video, the previews made from natural pictures at production sizes and the
    waveforms from real speech (eSpeak NG)."""
    from cinesynth_batch.tts.espeak import speak_to_file

    data = pytest.importorskip("skimage.data")
    big = Image.fromarray(data.astronaut()).resize((1280, 1280))
    big.crop((0, 280, 1280, 1000)).save(tmp_path / "still.png")
    big.crop((0, 280, 1280, 1000)).resize((1920, 1080)).save(tmp_path / "up.png")
    src = np.asarray(big.resize((1000, 1000)))
    write_video(np.stack([src[100 + i * 8:580 + i * 8, 50 + i * 4:882 + i * 4] for i in range(17)]),
                tmp_path / "clip.mp4", fps=16)
    speak_to_file("Good evening. Here is the news from the harbour, where the boats came in late.",
                  "en", None, tmp_path / "line.wav")
    (tmp_path / "thumbs").mkdir()
    one = {"s.png": {"digest": "1" * 64}, "u.png": {"digest": "2" * 64}, "c.mp4": {"digest": "3" * 64},
           "t.wav": {"digest": "4" * 64}}
    for name, real in (("s.png", "still.png"), ("u.png", "up.png"), ("c.mp4", "clip.mp4"), ("t.wav", "line.wav")):
        (tmp_path / name).symlink_to(tmp_path / real)
    previews, thumbs = make_previews(tmp_path, one, {}, print)
    per_scene = sum(t["size"] for t in thumbs.values())
    rows, files, all_previews, all_thumbs = [], {}, {}, {}
    for i in range(30):
        for kind, rel, ext in (("image", "s.png", "png"), ("upscale", "u.png", "png"), ("video", "c.mp4", "mp4"),
                               ("tts", "t.wav", "wav")):
            out = f"scenes/s{i:02d}_{kind}.{ext}"
            rows.append({"id": f"s{i:02d}.{kind}", "kind": kind, "scene": f"s{i:02d}", "status": "ran",
                         "publish": out, "seconds": 1.0, "model": f"tiny/{kind}@1",
                         "started_at": i * 3.0, "ended_at": i * 3.0 + 1, "lane": "rank 0",
                         "key": "k" * 64, "reason": "new stage (no earlier render)"})
            files[out] = {"stage": rows[-1]["id"], "kind": kind, "digest": "d" * 64, "width": 1280, "height": 720}
            all_previews[out] = {role: f"thumbs/{i:02d}{name[6:]}" for role, name in previews[rel].items()}
            all_thumbs.update({f"thumbs/{i:02d}{n[6:]}": thumbs[n] for n in previews[rel].values()})
    rows.append({"id": "assemble.final", "kind": "assemble", "scene": None, "status": "ran",
                 "publish": "final.mp4", "started_at": 90.0, "ended_at": 95.0, "lane": "rank 0"})
    files["final.mp4"] = {"stage": "assemble.final", "kind": "assemble", "digest": "f" * 64}
    all_previews["final.mp4"] = {r: f"thumbs/final.{r}.webp" for r in ("poster", "strip")}
    all_thumbs.update({f"thumbs/final.{r}.webp": thumbs[previews["c.mp4"][r]] for r in ("poster", "strip")})
    memory = memory_table([{"rank": 0, "device": "cpu", "peak_gpu_bytes": None, "pinned_bytes": 0,
                            "loads": 3, "swaps": 0, "bytes_moved": 1}])
    manifest = {"project": "p", "spec": "p.yaml", "profile": "tiny", "rendered_at": "T", "seconds": 96,
                "summary": "91 run", "stages": rows, "files": files, "previews": all_previews,
                "thumbs": all_thumbs, "memory": memory, "figures": figures(rows, memory, "T", 96),
                "scene_order": [f"s{i:02d}" for i in range(30)]}
    html = render_report(manifest).encode()
    referenced = set(re.findall(rb'src="(thumbs/[^"]+)"', html))
    assert len(referenced) == len(all_thumbs) == 30 * 5 + 2
    assert html.count(b'<img class="wave"') == 30
    weight = len(html) + sum(t["size"] for t in all_thumbs.values())
    print(f"30-scene page: {len(html)} B of HTML, {per_scene} B of previews a scene, {weight} B in all")
    assert weight < 1_000_000
    assert b"<video" not in html and b"<audio" not in html and html.count(b'href="scenes/s') == 30 * 4
