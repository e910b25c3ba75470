"""The ``assemble`` stage: cut scenes together into the final H.264 + AAC mp4.

Parameters (plain JSON; their rules are ``AssembleParams`` in ``spec/params.py``)::

    {"fps": 16, "width": W, "height": H, "audio_rate": 48000,
     "scenes": [{"id": "intro", "visual": "v0", "kind": "video" | "still",
                 "duration": null | seconds, "audio": "a0" | null, "audio_gain_db": 0.0,
                 "audio_optional": false, "transition": null | {"crossfade": seconds}}, ...],
     "music": {"input": "music", "gain_db": -18.0, "duck_db": null | dB} | null,
     "loudness": -14.0 | null,
     "crf": 18}

Optional: ``"preset"`` (x264 preset, default ``"medium"``), ``"audio_bitrate"`` (default
``"192k"``), ``"true_peak"`` (loudness ceiling in dBTP, default -1.5), ``"subtitles"`` (the name
of an input holding an SRT file to burn into the picture) with ``"subtitle_font"`` (the name of
the input holding the font file to draw it with, chosen at plan time; see ``media/burn.py``).

Inputs: ``inputs[scene.visual]`` is a list of mp4 paths for a ``video`` scene (its segments in
order; one path is taken as a one-segment list) or one image path for a ``still`` scene.
``inputs[scene.audio]`` is any audio file ffmpeg decodes (wav/mp3/m4a/flac, any rate and
channel count). ``inputs[music.input]`` is the music bed.

Rules
-----
* **Chained segments.** Every segment after the first of a scene starts on the previous
  segment's last frame, so its first frame is dropped: a scene of segments with f1, f2, ...
  frames has ``f1 + (f2 - 1) + (f3 - 1) + ...`` frames. A segment left with no frame is skipped.
* **Frames and rate.** Each decoded frame of a segment becomes one output frame at ``fps``.
  A segment whose own frame rate differs from ``fps`` (by more than 0.1 %) is resampled in
  time with ffmpeg's ``fps`` filter to ``round(frames * fps / its_fps)`` frames. Segment frame
  counts are enforced exactly (a short decode is padded with its last frame, a long one cut).
* **Sound of segments.** An audio track inside a video segment is ignored; a scene's sound is
  its ``audio`` input only.
* **Size.** A clip or still whose size differs from ``width`` x ``height`` is scaled to fit
  (aspect ratio kept, bicubic) and padded with black, centred. Output is yuv420p, square pixels.
* **Stills.** A still scene lasts ``round(duration * fps)`` frames when ``duration`` is set;
  otherwise ``ceil(audio_length * fps)`` frames when it has audio; otherwise 2 s. ``duration``
  is not used for video scenes (their length is their segments').
* **Scene audio.** Resampled to ``audio_rate``, made stereo (mono is copied to both channels,
  more channels are downmixed), ``audio_gain_db`` applied, then cut or padded with silence to
  exactly the scene's length. Scene *i* spans samples ``round(start_frame * rate / fps)`` up to
  ``round(end_frame * rate / fps)``, so the total is ``round(total_frames * rate / fps)`` samples
  with no drift. Scenes without audio are silent.
* **Music bed.** Looped (or cut) to the full length, ``gain_db`` applied (default -18 dB), and
  summed under the scene audio with ``amix`` ``normalize=0``: the scene audio keeps its level.
  With ``duck_db`` the bed is lowered under the scene audio by up to that many dB
  (``media/transitions.py`` says how).
* **Transitions.** A scene's ``transition`` ``{"crossfade": s}`` overlaps it with the scene
  before by ``round(s * fps)`` frames (``xfade`` for the picture, ``acrossfade`` for the sound);
  the output has ``sum(scene frames) - sum(overlaps)`` frames and a scene's ``start`` moves back
  by its overlap. A crossfade must be shorter than both scenes. ``null`` is a cut.
* **Optional audio.** ``audio_optional`` (a downloaded reference video): an input without an
  audio stream leaves the scene silent instead of failing.
* **Loudness.** With ``loudness`` set (integrated LUFS), a first ffmpeg pass measures the mixed
  audio with ``loudnorm print_format=json``; the render pass applies ``loudnorm`` with those
  measured values and ``linear=true`` (one gain for the whole programme, true peak ceiling
  ``true_peak``; loudnorm itself falls back to its dynamic mode when one gain would push the
  peaks over the ceiling; a measured loudness range of 0 LU, as for steady tones, is passed
  as 0.01 so that loudnorm does not take it for "not measured"), then resamples from loudnorm's 192 kHz back to ``audio_rate``.
  Silent programmes are left silent.
* **Output.** One ffmpeg run decodes every input, builds the whole picture and sound in one
  filter graph and encodes once: H.264 (libx264, ``crf``, yuv420p) + AAC stereo at
  ``audio_rate`` in mp4 with ``+faststart``. Exactly ``sum(scene frames) - sum(overlaps)`` frames, duration
  ``frames / fps``, the audio exactly as long (before AAC framing). Fixed encoder threads and
  bitexact flags make the same inputs give byte-identical files.
* **Resources.** Frames never pass through Python. ffmpeg opens all inputs at once; each
  costs a few buffered frames (about 10 MB per 720x1280 segment), so memory grows with the
  number of segments, not with their length.
* **Errors.** A missing, unreadable or undecodable input raises ``StageError`` naming the file
  and the scene.

Returns ``{"frames", "duration", "width", "height", "fps", "audio_rate",
"scenes": [{"id", "start", "frames", "duration"}], "loudness"}``; ``start`` and ``duration``
are seconds (``start`` is where the scene begins in the output, e.g. for subtitles), and
``loudness`` is ``None`` or ``{"target", "measured_i", "measured_tp", "measured_lra", "mode"}``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av

from cinesynth_batch.media.audio import AudioInfo, probe_audio
from cinesynth_batch.media import transitions
from cinesynth_batch.media.ffmpeg import FFmpegError, ffmpeg_path_arg, parse_loudnorm_json, run_ffmpeg
from cinesynth_batch.media.video_io import X264_THREADS, probe
from cinesynth_batch.spec.params import AssembleParams, check
from cinesynth_batch.stages.base import StageError

KIND = "assemble"
OUTPUT_EXT = ".mp4"
MODEL_ROLE = None

DECODE_THREADS = 1
DEFAULT_STILL_SECONDS = 2.0
DEFAULT_MUSIC_GAIN_DB = -18.0
DEFAULT_TRUE_PEAK = -1.5
DEFAULT_LRA = 11.0
FPS_TOLERANCE = 1e-3


@dataclass
class _Segment:
    path: Path
    src_frames: int
    src_fps: float | None
    drop_first: bool
    frames: int = 0


@dataclass
class _Scene:
    id: str
    kind: str
    frames: int
    segments: list[_Segment] = field(default_factory=list)
    still: Path | None = None
    audio: Path | None = None
    audio_info: AudioInfo | None = None
    gain_db: float = 0.0
    start_frame: int = 0
    overlap: int = 0          # frames shared with the scene before (a crossfade into this one)


@dataclass
class _Music:
    path: Path
    info: AudioInfo
    gain_db: float
    duck_db: float | None = None


class _Graph:
    """ffmpeg input arguments plus the filter chains that read them."""

    def __init__(self) -> None:
        self.input_args: list[str] = []
        self.chains: list[str] = []
        self.n_inputs = 0
        self.owners: list[tuple[str, Path]] = []

    def add_input(self, path: Path, owner: str, pre: list[str] | None = None) -> int:
        self.input_args += ["-threads", str(DECODE_THREADS), *(pre or []), "-i", ffmpeg_path_arg(path)]
        self.owners.append((owner, Path(path)))
        self.n_inputs += 1
        return self.n_inputs - 1

    def blame(self, stderr_tail: str) -> str:
        """Which scene inputs an ffmpeg error log mentions (outside the input banners)."""
        lines = [ln for ln in stderr_tail.splitlines() if not ln.lstrip().startswith("Input #")]
        text = "\n".join(lines)
        hits = []
        for owner, path in self.owners:
            if str(path.absolute()) in text or path.name in text:
                item = f"scene {owner!r} ({path})"
                if item not in hits:
                    hits.append(item)
        return "; ".join(hits)

    def add(self, chain: str) -> None:
        self.chains.append(chain)

    def text(self) -> str:
        return ";\n".join(self.chains) + "\n"


def check_params(params: dict) -> dict:
    """Validate ``params`` (``spec/params.py``; a null ``audio_rate`` or ``crf`` takes its default);
    returns the size, ``audio_rate``, ``crf``, ``loudness`` and ``music`` the run uses."""
    given = {k: v for k, v in params.items() if v is not None or k not in ("audio_rate", "crf")}
    return check(AssembleParams, given, KIND).model_dump()


def run(params: dict, inputs: dict, out: str | Path, ctx: Any = None) -> dict:
    """Assemble the scenes of ``params`` into ``out`` (mp4); see the module docstring."""
    fps = _fps_fraction(_param(params, "fps", 16))
    p = check_params(params)
    width, height, rate, crf, loudness = p["width"], p["height"], p["audio_rate"], float(p["crf"]), p["loudness"]
    try:
        true_peak = float(_param(params, "true_peak", DEFAULT_TRUE_PEAK))
    except (TypeError, ValueError) as exc:
        raise StageError(f"assemble: bad numeric parameter: {exc}") from exc
    preset = str(_param(params, "preset", "medium"))
    audio_bitrate = str(_param(params, "audio_bitrate", "192k"))

    scenes = _plan_scenes(params, inputs, fps)
    music = _plan_music(params, inputs)
    total_frames = scenes[-1].start_frame + scenes[-1].frames
    total_samples = _samples_at(total_frames, fps, rate)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    loud_info: dict | None = None
    with _work_dir(ctx) as work:
        loudnorm_filter = None
        if loudness is not None:
            measured = _measure_mix(scenes, music, fps, rate, total_samples, work)
            loudnorm_filter, loud_info = _loudnorm_second_pass(loudness, true_peak, measured)

        graph = _Graph()
        vlabel = _video_graph(graph, scenes, fps, width, height, work)
        if params.get("subtitles"):
            from cinesynth_batch.media.burn import burn_filter

            if not params.get("subtitle_font"):
                raise StageError("assemble: burning subtitles needs a font input (params 'subtitle_font')")
            vlabel = burn_filter(graph, vlabel, _input_path(inputs, params["subtitles"], "assembly", "subtitles"),
                                 work, _input_path(inputs, params["subtitle_font"], "assembly", "subtitle_font"))
        alabel = _audio_graph(graph, scenes, music, fps, rate, total_samples)
        alabel = _finish_audio(graph, alabel, loudnorm_filter, rate, total_samples, "aout")
        script = work / "assemble.filtergraph"
        script.write_text(graph.text(), encoding="utf-8")
        args = [
            "-y",
            *graph.input_args,
            "-/filter_complex", str(script),
            "-map", vlabel,
            "-map", alabel,
            "-fps_mode", "cfr",
            "-r", _ratio(fps),
            "-c:v", "libx264",
            "-preset", preset,
            "-crf", f"{crf:g}",
            "-pix_fmt", "yuv420p",
            "-threads", str(X264_THREADS),
            "-c:a", "aac",
            "-b:a", audio_bitrate,
            "-ar", str(rate),
            "-ac", "2",
            "-map_metadata", "-1",
            "-map_chapters", "-1",
            "-fflags", "+bitexact",
            "-flags:v", "+bitexact",
            "-flags:a", "+bitexact",
            "-movflags", "+faststart",
            "-f", "mp4",
            ffmpeg_path_arg(out),
        ]
        progress = getattr(ctx, "progress", None)
        on_frame = (lambda n: progress(min(n, total_frames), total_frames)) if callable(progress) else None
        try:
            proc = run_ffmpeg(args, "assembling the final video", progress=on_frame)
        except FFmpegError as exc:
            out.unlink(missing_ok=True)
            culprit = graph.blame(exc.stderr_tail)
            where = f" while reading {culprit}" if culprit else ""
            raise StageError(
                f"assemble: ffmpeg failed{where}: {exc}",
                hint="check that every scene input is a valid video, image or audio file",
            ) from exc

        if loudnorm_filter is not None and loud_info is not None:
            try:
                loud_info["mode"] = parse_loudnorm_json(proc.stderr).get("normalization_type", loud_info["mode"])
            except ValueError:
                pass

    _verify(out, total_frames, width, height)
    if callable(progress):
        progress(total_frames, total_frames)

    fps_out: int | float = int(fps) if fps.denominator == 1 else float(fps)
    return {
        "frames": total_frames,
        "duration": _seconds(total_frames, fps),
        "width": width,
        "height": height,
        "fps": fps_out,
        "audio_rate": rate,
        "scenes": [
            {
                "id": s.id,
                "start": _seconds(s.start_frame, fps),
                "frames": s.frames,
                "duration": _seconds(s.frames, fps),
            }
            for s in scenes
        ],
        "loudness": loud_info,
    }


def scene_layout(params: dict, inputs: dict) -> list[tuple[str, float, float]]:
    """(scene id, start, end) in seconds of each scene in the output, without rendering."""
    fps = _fps_fraction(_param(params, "fps", 16))
    return [(s.id, _seconds(s.start_frame, fps), _seconds(s.start_frame + s.frames, fps))
            for s in _plan_scenes(params, inputs, fps)]


# ---------------------------------------------------------------------------------------------
# planning: probe inputs, count frames


def _param(params: dict, key: str, default: Any) -> Any:
    value = params.get(key)
    return default if value is None else value


def _fps_fraction(value: Any) -> Fraction:
    try:
        fps = Fraction(str(value)).limit_denominator(1001)
    except (ValueError, ZeroDivisionError) as exc:
        raise StageError(f"fps must be a positive number, got {value!r}") from exc
    if fps <= 0:
        raise StageError(f"fps must be a positive number, got {value!r}")
    return fps


def _ratio(fps: Fraction) -> str:
    return f"{fps.numerator}/{fps.denominator}"


def _seconds(frames: int, fps: Fraction) -> float:
    return round(float(Fraction(frames) / fps), 6)


def _samples_at(frame: int, fps: Fraction, rate: int) -> int:
    return round(Fraction(frame) * rate / fps)


def _input_path(inputs: dict, name: Any, scene_id: str, role: str) -> Any:
    if name not in inputs:
        raise StageError(
            f"scene {scene_id!r}: no input named {name!r} for its {role}",
            hint="the plan should have bound every scene input",
        )
    return inputs[name]


def _existing(path: Any, scene_id: str, role: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise StageError(
            f"scene {scene_id!r}: {role} file {p} does not exist",
            hint="re-run the stage that produces it, or fix the path in the spec",
        )
    return p


def _undecodable(path: Path, scene_id: str, role: str, why: Any) -> StageError:
    return StageError(
        f"scene {scene_id!r}: cannot decode {role} file {path}: {why}",
        hint="the file may be truncated or not a media file; regenerate or replace it",
    )


def _check_first_video_frame(path: Path) -> None:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        for _ in container.decode(video=0):
            return
    raise ValueError("no decodable video frame")


def _plan_scenes(params: dict, inputs: dict, fps: Fraction) -> list[_Scene]:
    specs = params.get("scenes") or []
    if not specs:
        raise StageError("assemble needs at least one scene")
    scenes: list[_Scene] = []
    seen: set[str] = set()
    start = 0
    for i, spec in enumerate(specs):
        sid = str(spec.get("id") or f"scene{i}")
        if sid in seen:
            raise StageError(f"scene id {sid!r} is used twice")
        seen.add(sid)
        visual = _input_path(inputs, spec.get("visual"), sid, "visual")
        kind = spec.get("kind") or ("video" if isinstance(visual, (list, tuple)) else "still")

        audio_path = None
        audio_info = None
        if spec.get("audio") is not None:
            audio_path = _existing(_input_path(inputs, spec["audio"], sid, "audio"), sid, "audio")
            try:
                audio_info = probe_audio(audio_path)
            except ValueError as exc:
                if not spec.get("audio_optional"):  # a download that may have no sound
                    raise _undecodable(audio_path, sid, "audio", exc) from exc
                audio_path = None
            except Exception as exc:  # PyAV raises several error types for bad files
                raise _undecodable(audio_path, sid, "audio", exc) from exc
        gain = float(spec.get("audio_gain_db") or 0.0)

        if kind == "video":
            paths = list(visual) if isinstance(visual, (list, tuple)) else [visual]
            if not paths:
                raise StageError(f"scene {sid!r}: no video segments")
            segments = [_probe_segment(p, sid, j > 0) for j, p in enumerate(paths)]
            for seg in segments:
                seg.frames = _segment_frames(seg, fps)
            frames = sum(seg.frames for seg in segments)
            if frames <= 0:
                raise StageError(f"scene {sid!r}: its segments hold no frames")
            scene = _Scene(sid, kind, frames, segments=segments)
        elif kind == "still":
            if isinstance(visual, (list, tuple)):
                if len(visual) != 1:
                    raise StageError(f"scene {sid!r}: a still scene takes one image, got {len(visual)}")
                visual = visual[0]
            still = _existing(visual, sid, "image")
            try:
                _check_first_video_frame(still)
            except Exception as exc:
                raise _undecodable(still, sid, "image", exc) from exc
            frames = _still_frames(spec.get("duration"), audio_info, fps, sid)
            scene = _Scene(sid, kind, frames, still=still)
        else:
            raise StageError(f"scene {sid!r}: unknown kind {kind!r} (expected 'video' or 'still')")

        scene.audio = audio_path
        scene.audio_info = audio_info
        scene.gain_db = gain
        if scenes:
            try:
                scene.overlap = transitions.overlap_frames(spec.get("transition"), fps)
            except ValueError as exc:
                raise StageError(f"scene {sid!r}: {exc}") from exc
            if scene.overlap >= min(scene.frames, scenes[-1].frames):
                raise StageError(
                    f"scene {sid!r}: a crossfade of {scene.overlap} frames needs both scenes longer "
                    f"({scenes[-1].id!r} has {scenes[-1].frames}, {sid!r} has {scene.frames})",
                    hint="shorten the crossfade or use transition: cut")
        scene.start_frame = start - scene.overlap
        start = scene.start_frame + scene.frames
        scenes.append(scene)
    return scenes


def _probe_segment(path: Any, scene_id: str, drop_first: bool) -> _Segment:
    p = _existing(path, scene_id, "video")
    try:
        info = probe(p)
        if info.width is None or not info.frames:
            raise ValueError("no video frames")
        _check_first_video_frame(p)
    except Exception as exc:
        raise _undecodable(p, scene_id, "video", exc) from exc
    return _Segment(p, int(info.frames), info.fps, drop_first)


def _same_rate(src_fps: float | None, fps: Fraction) -> bool:
    return src_fps is None or src_fps <= 0 or abs(src_fps - float(fps)) <= FPS_TOLERANCE * float(fps)


def _segment_frames(seg: _Segment, fps: Fraction) -> int:
    n = seg.src_frames - (1 if seg.drop_first else 0)
    if n <= 0:
        return 0
    if _same_rate(seg.src_fps, fps):
        return n
    return max(1, round(Fraction(n) * fps / Fraction(seg.src_fps).limit_denominator(1001)))


def _still_frames(duration: Any, audio: AudioInfo | None, fps: Fraction, scene_id: str) -> int:
    if duration is not None:
        try:
            d = Fraction(str(float(duration)))
        except (TypeError, ValueError) as exc:
            raise StageError(f"scene {scene_id!r}: duration must be a number, got {duration!r}") from exc
        if d <= 0:
            raise StageError(f"scene {scene_id!r}: duration must be positive, got {duration!r}")
        return max(1, round(d * fps))
    if audio is not None:
        return max(1, math.ceil(Fraction(audio.samples) * fps / audio.rate))
    return max(1, round(Fraction(str(DEFAULT_STILL_SECONDS)) * fps))


def _plan_music(params: dict, inputs: dict) -> _Music | None:
    spec = params.get("music")
    if not spec:
        return None
    name = spec.get("input", "music")
    path = _existing(_input_path(inputs, name, "music", "music bed"), "music", "music bed")
    try:
        info = probe_audio(path)
    except Exception as exc:
        raise _undecodable(path, "music", "music bed", exc) from exc
    gain = spec.get("gain_db")
    duck_db = spec.get("duck_db")
    return _Music(path, info, DEFAULT_MUSIC_GAIN_DB if gain is None else float(gain),
                  None if duck_db is None else float(duck_db))


# ---------------------------------------------------------------------------------------------
# filter graph


def _fit(width: int, height: int) -> str:
    # Always in the chain: a no-op at the target size, and right for rotated sources, whose
    # decoded frames the ffmpeg CLI turns upright (so their size differs from the probe's).
    return (
        f"scale=w={width}:h={height}:force_original_aspect_ratio=decrease:force_divisible_by=2"
        f":flags=bicubic,pad=w={width}:h={height}:x=(ow-iw)/2:y=(oh-ih)/2:color=black,"
    )


def _safe_image_path(path: Path, work: Path, n: int) -> Path:
    if "%" not in path.name:
        return path
    link = work / f"still{n}{path.suffix.replace('%', '')}"
    try:
        link.symlink_to(path.absolute())
    except OSError:
        shutil.copyfile(path, link)
    return link


def _video_graph(g: _Graph, scenes: list[_Scene], fps: Fraction, width: int, height: int, work: Path) -> str:
    tb = f"{fps.denominator}/{fps.numerator}"
    labels: list[str] = []
    per_scene: list[list[str]] = []
    for scene in scenes:
        per_scene.append([])
        if scene.kind == "still":
            assert scene.still is not None
            k = g.add_input(_safe_image_path(scene.still, work, len(labels)), scene.id)
            label = f"[v{len(labels)}]"
            g.add(
                f"[{k}:v:0]trim=end_frame=1,setpts=PTS-STARTPTS,"
                f"{_fit(width, height)}setsar=1,format=yuv420p,"
                f"loop=loop={scene.frames - 1}:size=1:start=0,settb={tb},setpts=N{label}"
            )
            labels.append(label)
            per_scene[-1].append(label)
            continue
        for seg in scene.segments:
            if seg.frames <= 0:
                continue
            k = g.add_input(seg.path, scene.id)
            label = f"[v{len(labels)}]"
            head = "trim=start_frame=1," if seg.drop_first else ""
            if _same_rate(seg.src_fps, fps):
                timing = f"settb={tb},setpts=N,"
            else:
                timing = f"setpts=PTS-STARTPTS,fps=fps={_ratio(fps)},settb={tb},setpts=N,"
            g.add(
                f"[{k}:v:0]{head}setpts=PTS-STARTPTS,{timing}"
                f"{_fit(width, height)}setsar=1,format=yuv420p,"
                f"tpad=stop={seg.frames}:stop_mode=clone,trim=end_frame={seg.frames},"
                f"settb={tb},setpts=N{label}"
            )
            labels.append(label)
            per_scene[-1].append(label)
    if any(s.overlap for s in scenes):
        return transitions.join_video(g.add, per_scene, [s.frames for s in scenes],
                                      [s.overlap for s in scenes], fps, "[vout]")
    g.add(f"{''.join(labels)}concat=n={len(labels)}:v=1:a=0,settb={tb},setpts=N,format=yuv420p[vout]")
    return "[vout]"


def _to_stereo(info: AudioInfo, rate: int) -> str:
    pan = "pan=stereo|c0=c0|c1=c0," if info.channels == 1 else ""
    return f"{pan}aresample={rate},aformat=sample_fmts=fltp:sample_rates={rate}:channel_layouts=stereo"


def _gain(db: float) -> str:
    return f",volume=volume={db:.6g}dB:precision=float" if db else ""


def _exact(samples: int) -> str:
    return f"atrim=end_sample={samples},apad=whole_len={samples},atrim=end_sample={samples},asetpts=N/SR/TB"


def _audio_graph(
    g: _Graph, scenes: list[_Scene], music: _Music | None, fps: Fraction, rate: int, total: int
) -> str:
    labels: list[str] = []
    for i, scene in enumerate(scenes):
        n = _samples_at(scene.start_frame + scene.frames, fps, rate) - _samples_at(scene.start_frame, fps, rate)
        label = f"[a{i}]"
        if scene.audio is None:
            g.add(
                f"anullsrc=channel_layout=stereo:sample_rate={rate},"
                f"aformat=sample_fmts=fltp:sample_rates={rate}:channel_layouts=stereo,{_exact(n)}{label}"
            )
        else:
            assert scene.audio_info is not None
            k = g.add_input(scene.audio, scene.id)
            g.add(f"[{k}:a:0]{_to_stereo(scene.audio_info, rate)}{_gain(scene.gain_db)},{_exact(n)}{label}")
        labels.append(label)
    if any(s.overlap for s in scenes):
        overlaps = [0] + [_samples_at(a.start_frame + a.frames, fps, rate) - _samples_at(b.start_frame, fps, rate)
                          for a, b in zip(scenes, scenes[1:])]
        transitions.join_audio(g.add, labels, overlaps, "[speech]")
    else:
        g.add(f"{''.join(labels)}concat=n={len(labels)}:v=0:a=1,asetpts=N/SR/TB[speech]")
    if music is None:
        return "[speech]"
    k = g.add_input(music.path, "music", pre=["-stream_loop", "-1"])
    g.add(f"[{k}:a:0]{_to_stereo(music.info, rate)}{_gain(music.gain_db)},{_exact(total)}[music]")
    speech, bed = "[speech]", "[music]"
    if music.duck_db:
        speech, bed = transitions.duck(g.add, speech, bed, music.duck_db)
    g.add(f"{speech}{bed}amix=inputs=2:duration=first:dropout_transition=0:normalize=0[mix]")
    return "[mix]"


def _finish_audio(g: _Graph, label: str, loudnorm: str | None, rate: int, total: int, name: str) -> str:
    chain = f"{loudnorm}," if loudnorm else ""
    g.add(
        f"{label}{chain}aresample={rate},"
        f"aformat=sample_fmts=fltp:sample_rates={rate}:channel_layouts=stereo,{_exact(total)}[{name}]"
    )
    return f"[{name}]"


# ---------------------------------------------------------------------------------------------
# loudness


def _measure_mix(
    scenes: list[_Scene], music: _Music | None, fps: Fraction, rate: int, total: int, work: Path
) -> dict:
    g = _Graph()
    label = _audio_graph(g, scenes, music, fps, rate, total)
    g.add(f"{label}loudnorm=print_format=json[ameas]")
    script = work / "measure.filtergraph"
    script.write_text(g.text(), encoding="utf-8")
    try:
        proc = run_ffmpeg(
            [*g.input_args, "-/filter_complex", str(script), "-map", "[ameas]", "-f", "null", "-"],
            "measuring the loudness of the mix",
        )
        return parse_loudnorm_json(proc.stderr)
    except FFmpegError as exc:
        culprit = g.blame(exc.stderr_tail)
        where = f" while reading {culprit}" if culprit else ""
        raise StageError(f"assemble: loudness measurement failed{where}: {exc}") from exc
    except ValueError as exc:
        raise StageError(f"assemble: loudness measurement failed: {exc}") from exc


def _loudnorm_second_pass(target: float, true_peak: float, m: dict) -> tuple[str | None, dict]:
    info = {
        "target": target,
        "measured_i": m["input_i"],
        "measured_tp": m["input_tp"],
        "measured_lra": m["input_lra"],
        "mode": "none",
    }
    if not all(math.isfinite(m[k]) for k in ("input_i", "input_tp", "input_lra", "input_thresh")) or m["input_i"] <= -70:
        info.update(measured_i=None, measured_tp=None, measured_lra=None, mode="silent")
        return None, info
    target = min(max(target, -70.0), -5.0)
    true_peak = min(max(true_peak, -9.0), 0.0)
    lra = max(0.01, min(m["input_lra"], 99.0))
    target_lra = min(max(DEFAULT_LRA, lra), 50.0)
    gain = target - m["input_i"]
    info["mode"] = "linear" if (m["input_tp"] + gain <= true_peak and lra <= target_lra) else "dynamic"
    offset = m.get("target_offset", 0.0)
    offset = min(max(offset, -99.0), 99.0) if math.isfinite(offset) else 0.0
    filt = (
        f"loudnorm=I={target:.2f}:TP={true_peak:.2f}:LRA={target_lra:.2f}"
        f":measured_I={max(m['input_i'], -99.0):.2f}"
        f":measured_TP={min(max(m['input_tp'], -99.0), 99.0):.2f}"
        f":measured_LRA={lra:.2f}"
        f":measured_thresh={min(max(m['input_thresh'], -99.0), 0.0):.2f}"
        f":offset={offset:.2f}:linear=true:print_format=json"
    )
    return filt, info


# ---------------------------------------------------------------------------------------------
# helpers


@contextmanager
def _work_dir(ctx: Any) -> Iterator[Path]:
    base = getattr(ctx, "work_dir", None)
    if base is not None:
        Path(base).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="assemble-", dir=str(base) if base is not None else None))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _verify(out: Path, frames: int, width: int, height: int) -> None:
    try:
        info = probe(out)
    except Exception as exc:
        raise StageError(f"assemble: the output {out} cannot be read back: {exc}") from exc
    if info.frames != frames or info.width != width or info.height != height:
        out.unlink(missing_ok=True)
        raise StageError(
            f"assemble: the output has {info.frames} frames of {info.width}x{info.height}, "
            f"expected {frames} of {width}x{height}"
        )
    if info.audio_codec is None:
        out.unlink(missing_ok=True)
        raise StageError(f"assemble: the output {out} has no audio track")
