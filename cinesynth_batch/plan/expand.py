"""Spec -> Graph: one scene at a time, every stage a node with explicit inputs.

Node ids: ``<scene>.image``, ``<scene>.upscale``, ``<scene>.fit``, ``<scene>.video`` (or
``<scene>.video.<k>`` when a clip has several segments), ``<scene>.shadow`` and ``<scene>.interpolate`` (a clip's
post-processing), ``<scene>.tts``, ``assemble.<name>`` and its subtitles
``assemble.<name>.srt``; downloads, frames and separated or extracted audio come from
``plan/sources.py``; an image's references (face crops, inline edits) from
``plan/references.py``; a masked edit's ``<scene>.detect`` and ``<scene>.segment`` from
``plan/masks.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..runtime.attention import LOSSY
from ..spec import model as m
from ..spec.load import LoadedSpec
from ..spec.params import UpscaleParams
from ..spec.rules import INTERPOLATE_ROLES
from ..tts import espeak_revision
from .graph import FileInput, Graph, NodeInput, StageNode
from .references import ReferencePlanner
from .sources import source_input

SeedSource = Callable[[str], int]

AUDIO_RATE = 48000


def build_graph(loaded: LoadedSpec, seed_for: SeedSource) -> Graph:
    spec = loaded.spec
    graph = Graph()
    visuals: dict[str, tuple[str, tuple[NodeInput, ...] | NodeInput]] = {}
    sounds: dict[str, FileInput | NodeInput] = {}
    refs = ReferencePlanner(graph, loaded, seed_for)
    for index, scene in enumerate(spec.scenes):
        visuals[scene.id] = _scene_nodes(graph, loaded, index, scene, seed_for, sounds, refs)
    refs.check()
    for j, asm in enumerate(spec.assemblies()):
        _assemble_node(graph, loaded, j, asm, visuals, sounds)
    return graph


def _seed(stage_seed: int | None, scene: m.Scene, spec: m.Spec) -> int:
    for value in (stage_seed, scene.seed, spec.defaults.seed):
        if value is not None:
            return value
    return -1


def _file(loaded: LoadedSpec, value: str) -> FileInput:
    return FileInput(path=(loaded.spec_dir / value).resolve(), display=value)


def _scene_nodes(graph: Graph, loaded: LoadedSpec, index: int, scene: m.Scene, seed_for: SeedSource,
                 sounds: dict[str, FileInput | NodeInput],
                 refs: ReferencePlanner) -> tuple[str, tuple[NodeInput, ...] | NodeInput]:
    """The scene's nodes; its sound (lip-sync speech, else its ``audio``) goes into ``sounds``."""
    spec = loaded.spec
    sid = scene.id
    width, height = m.parse_resolution(scene.resolution or spec.defaults.resolution)
    still: NodeInput | None = None
    if scene.image is not None:
        img = scene.image
        node_id = f"{sid}.image"
        refs.image_node(scene, img, node_id, ("scenes", index, "image"), (width, height), f"scenes/{sid}.png")
        still = NodeInput(node_id)
        if img.upscale:
            up_id = f"{sid}.upscale"
            graph.add(StageNode(
                id=up_id, kind="upscale", scene=sid, model_role="upscale",
                params=UpscaleParams().model_dump(),   # x2, the tiles at their defaults
                inputs={"image": still}, publish=f"scenes/{sid}_x2.png",
                where=loaded.where("scenes", index, "image", "upscale")))
            still = NodeInput(up_id)
        if img.fit:
            still = refs.fit_node(scene, index, still)
    if scene.audio is not None and scene.lipsync is None:
        sounds[sid] = _audio_input(graph, loaded, index, scene, scene.audio, ("scenes", index, "audio"),
                                   seed_for)
    if scene.lipsync is not None:
        clip = _lipsync_node(graph, loaded, index, scene, still, (width, height), seed_for)
        sounds[sid] = graph[clip.node].inputs["audio"]
        return "video", _post_nodes(graph, loaded, index, scene, "lipsync", (clip,))
    if scene.animate is not None:
        clip = _animate_nodes(graph, loaded, index, scene, still, (width, height), seed_for)
        return "video", _post_nodes(graph, loaded, index, scene, "animate", (clip,))
    if scene.video is None:
        assert still is not None
        return "still", still

    vid = scene.video
    vw, vh = m.parse_resolution(vid.resolution) if vid.resolution else (width, height)
    at = ("scenes", index, "video")
    base_seed = _seed(vid.seed, scene, spec)
    extra = {"cache": _cache_params(vid.cache)} if _cache_params(vid.cache) else {}
    two_pass = _two_pass_param(loaded, at, vid, vw, vh)
    if two_pass is not None:
        extra["two_pass"] = two_pass
    if vid.keyframes:
        return "video", _post_nodes(graph, loaded, index, scene, "video",
                                    _keyframe_clips(graph, loaded, at, scene, (vw, vh), base_seed, extra, seed_for))
    start = source_input(graph, loaded, vid.image, (*at, "image")) if vid.image else still
    segments: list[NodeInput] = []
    for k in range(1, vid.segments + 1):
        node_id = f"{sid}.video" if vid.segments == 1 else f"{sid}.video.{k}"
        seed = base_seed + k - 1 if base_seed >= 0 else seed_for(node_id)
        inputs: dict = {"image": start} if k == 1 else {"prev": segments[-1]}
        if k == vid.segments and vid.last_image:
            inputs["last_image"] = source_input(graph, loaded, vid.last_image, (*at, "last_image"))
        graph.add(_video_node(loaded, at, scene, node_id, inputs, (vw, vh), vid.frames, seed, extra,
                              _chain_runtime(k, vid.segments),
                              f"scenes/{sid}.mp4" if vid.segments == 1 else f"scenes/{sid}.{k}.mp4"))
        segments.append(NodeInput(node_id))
    return "video", _post_nodes(graph, loaded, index, scene, "video", tuple(segments))


def _video_node(loaded: LoadedSpec, at: tuple, scene: m.Scene, node_id: str, inputs: dict,
                size: tuple[int, int], frames: int, seed: int, extra: dict, chain: dict,
                publish: str) -> StageNode:
    """One Wan I2V clip of ``scene.video``: a segment of a chain, or a keyframe pair's clip."""
    vid = scene.video
    assert vid is not None
    return StageNode(
        id=node_id, kind="video", scene=scene.id, model_role="video",
        params={
            "prompt": vid.prompt, "negative_prompt": vid.negative_prompt, "frames": frames,
            "steps": vid.steps, "guidance": vid.guidance,
            "guidance_2": vid.guidance if vid.guidance_2 is None else vid.guidance_2,
            "shift": vid.shift, "boundary": vid.boundary, "scheduler": vid.scheduler,
            "width": size[0], "height": size[1], "fps": loaded.spec.defaults.fps, "seed": seed,
            "loras": [{"name": lo.name, "high": lo.high, "low": lo.low} for lo in vid.loras],
            **extra, **_quantize_param(vid),
        },
        inputs=inputs, loras=tuple((lo.name, "mov") for lo in vid.loras),
        runtime={**_speed_runtime(vid), "lora_fuse": vid.lora_fuse, **chain}, publish=publish,
        where=loaded.where(*at), parallel=vid.parallel)


def _keyframe_clips(graph: Graph, loaded: LoadedSpec, at: tuple, scene: m.Scene, size: tuple[int, int],
                    base_seed: int, extra: dict, seed_for: SeedSource) -> tuple[NodeInput, ...]:
    """One first-last-frame clip per consecutive pair of ``video.keyframes`` (``<scene>.video.<k>``;
    with ``loop`` a last one from the last keyframe back to the first). A clip takes only its two
    keyframes, so a changed keyframe re-runs the clips that touch it; ``assemble`` drops the first
    frame of every clip after the first (it repeats the previous clip's last keyframe)."""
    vid = scene.video
    assert vid is not None and vid.keyframes
    images = [source_input(graph, loaded, ref, (*at, "keyframes", i)) for i, ref in enumerate(vid.keyframes)]
    lengths = vid.clip_lengths()
    clips: list[NodeInput] = []
    for k, frames in enumerate(lengths, start=1):
        node_id = f"{scene.id}.video.{k}"
        seed = base_seed + k - 1 if base_seed >= 0 else seed_for(node_id)
        inputs = {"image": images[k - 1], "last_image": images[k % len(images)]}
        graph.add(_video_node(loaded, at, scene, node_id, inputs, size, frames, seed, extra,
                              _chain_runtime(k, len(lengths)), f"scenes/{scene.id}.{k}.mp4"))
        clips.append(NodeInput(node_id))
    return tuple(clips)


def _two_pass_param(loaded: LoadedSpec, at: tuple, stage: m.VideoStage, width: int, height: int) -> dict | None:
    """``two_pass`` as a clip's params: the base size and the high-noise expert's steps (keyed
    only when set, so a clip without it keeps its key)."""
    tp = stage.two_pass
    if tp is None:
        return None
    from ..errors import Problem, SpecError

    loc = (*at, "two_pass")
    bw, bh = tp.base_size(width, height)
    problem = None
    if tp.base_width is not None and tp.scale is not None and abs(tp.base_width * tp.scale - width) > 0.5:
        problem = (f"two_pass: base_width {tp.base_width} x scale {tp.scale:g} is {tp.base_width * tp.scale:g}, "
                   f"not the clip's width {width}", "give one of base_width and scale, or make them agree")
    elif bw >= width or bh >= height:
        problem = (f"two_pass: the base size {bw}x{bh} is not smaller than the clip's {width}x{height}",
                   "lower base_width or raise scale")
    if problem is not None:
        raise SpecError([Problem(problem[0], loaded.where(*loc), loaded.path_text(*loc), problem[1])])
    return {"base_width": bw, "base_height": bh,
            "high_steps": tp.high_steps if tp.high_steps is not None else stage.steps // 2}


def _post_nodes(graph: Graph, loaded: LoadedSpec, index: int, scene: m.Scene, field: str,
                clip: tuple[NodeInput, ...]) -> tuple[NodeInput, ...]:
    """The clip after its post-processing stages: ``<scene>.shadow`` (animate's ``shadow``), then
    ``<scene>.interpolate`` (the stage's ``interpolate``); each takes only what it changes."""
    stage = getattr(scene, field)
    at = ("scenes", index, field)
    shadow = getattr(stage, "shadow", None)
    if shadow is not None:
        node_id = f"{scene.id}.shadow"
        graph.add(StageNode(
            id=node_id, kind="shadow", scene=scene.id, params={"opacity": shadow.opacity},
            inputs={"clip": clip}, publish=f"scenes/{scene.id}.shadow.mp4", where=loaded.where(*at, "shadow")))
        clip = (NodeInput(node_id),)
    interp = stage.interpolate
    if interp is not None:
        node_id = f"{scene.id}.interpolate"
        params: dict = {"fps": interp.target(loaded.spec.defaults.fps), "backend": interp.backend}
        role = INTERPOLATE_ROLES.get(interp.backend)
        if role is not None:
            params["scale"] = float(interp.scale)
        graph.add(StageNode(
            id=node_id, kind="interpolate", scene=scene.id, model_role=role, params=params,
            inputs={"clip": clip}, publish=f"scenes/{scene.id}.interpolated.mp4",
            where=loaded.where(*at, "interpolate")))
        clip = (NodeInput(node_id),)
    return clip


def clip_rate(graph: Graph, visual: tuple | NodeInput, fps: int) -> int:
    """The frame rate of a scene's visual: an interpolated clip's new rate, else ``fps``."""
    items = visual if isinstance(visual, tuple) else (visual,)
    rates = [graph[i.node].params["fps"] for i in items
             if isinstance(i, NodeInput) and graph[i.node].kind == "interpolate"]
    return max(rates, default=fps)


def _speed_runtime(stage: m.VideoStage | m.LipsyncStage) -> dict:
    """The exact speed and memory options: passed to the stage, not part of the key."""
    return {"attention": stage.attention, "compile": stage.compile, "block_swap": stage.block_swap}


def _chain_runtime(k: int, segments: int) -> dict:
    """A chained clip's place (segment k of n): for progress and ``plan``, not part of the key."""
    return {"segment": k, "segments": segments} if segments > 1 else {}


def _quantize_param(stage: m.SpeedOptions) -> dict:
    """The output-changing speed options, keyed only when set (unset keeps earlier keys):
    ``quantize`` and a lossy ``attention`` kernel (the executor keys what actually runs)."""
    keyed: dict = {"quantize": stage.quantize} if stage.quantize else {}
    if stage.attention in LOSSY:
        keyed["attention"] = stage.attention
    return keyed


def _cache_params(cache: m.StepCache | None) -> dict | None:
    if cache is None or cache.kind == "none":
        return None
    return {"kind": cache.kind, "threshold": cache.threshold, "start_step": cache.start_step,
            "coefficients": cache.coefficients}


def _lipsync_node(graph: Graph, loaded: LoadedSpec, index: int, scene: m.Scene,
                  still: NodeInput | None, size: tuple[int, int], seed_for: SeedSource) -> NodeInput:
    spec = loaded.spec
    ls = scene.lipsync
    assert ls is not None
    width, height = m.parse_resolution(ls.resolution) if ls.resolution else size
    node_id = f"{scene.id}.lipsync"
    seed = _seed(ls.seed, scene, spec)
    at = ("scenes", index, "lipsync")
    inputs: dict = {"avatar": source_input(graph, loaded, ls.avatar, (*at, "avatar")) if ls.avatar else still,
                    "audio": _audio_input(graph, loaded, index, scene, ls.audio, (*at, "audio"), seed_for)}
    if ls.pose_video:
        inputs["pose_video"] = source_input(graph, loaded, ls.pose_video, (*at, "pose_video"))
    cache = _cache_params(ls.cache)
    graph.add(StageNode(
        id=node_id, kind="lipsync", scene=scene.id, model_role="lipsync",
        params={
            "prompt": ls.prompt, "negative_prompt": ls.negative_prompt, "steps": ls.steps,
            "infer_frames": ls.infer_frames, "guidance": ls.guidance, "shift": ls.shift,
            "boundary": ls.boundary, "scheduler": ls.scheduler, "width": width, "height": height,
            "fps": spec.defaults.fps, "seed": seed if seed >= 0 else seed_for(node_id),
            "loras": [{"name": lo.name, "high": lo.high, "low": lo.low} for lo in ls.loras],
            "cache": cache, "resampler": "soxr_hq", **_quantize_param(ls),
        },
        inputs=inputs, loras=tuple((lo.name, "mov") for lo in ls.loras), runtime=_speed_runtime(ls),
        publish=f"scenes/{scene.id}.mp4", where=loaded.where("scenes", index, "lipsync"),
        parallel=ls.parallel))
    return NodeInput(node_id)


PREP_OUTPUTS = {"animate": ("pose", "face"), "replace": ("pose", "face", "mask", "background")}


def _animate_nodes(graph: Graph, loaded: LoadedSpec, index: int, scene: m.Scene,
                   still: NodeInput | None, size: tuple[int, int], seed_for: SeedSource) -> NodeInput:
    """Preprocessing nodes (one per video the pipeline needs; they do not depend on the
    character, so changing it re-runs only the animate node) and the animate node."""
    spec = loaded.spec
    an = scene.animate
    assert an is not None
    width, height = m.parse_resolution(an.resolution) if an.resolution else size
    where = loaded.where("scenes", index, "animate")
    reference = source_input(graph, loaded, an.reference_video, ("scenes", index, "animate", "reference_video"))
    prep_inputs: dict = {"video": reference}
    runtime: dict = {"detector": None, "pose_model": None}
    for key in ("detector", "pose_model"):
        value = getattr(an.preprocess, key)
        if value:
            prep_inputs[key] = _file(loaded, value)
            runtime[key] = str(prep_inputs[key].path)
    character = source_input(graph, loaded, an.character, ("scenes", index, "animate", "character")) \
        if an.character else still
    inputs: dict = {"character": character, "reference": reference}
    for output in PREP_OUTPUTS[an.mode]:
        node_id = f"{scene.id}.{output}"
        graph.add(StageNode(
            id=node_id, kind="animate_prep", scene=scene.id,
            params={"output": output, "fps": spec.defaults.fps, "max_frames": an.max_frames,
                    "width": width, "height": height, "backend": an.preprocess.backend},
            inputs=dict(prep_inputs), runtime=dict(runtime), publish=f"scenes/{scene.id}.{output}.mp4",
            where=where))
        inputs[output] = NodeInput(node_id)
    node_id = f"{scene.id}.animate"
    seed = _seed(an.seed, scene, spec)
    graph.add(StageNode(
        id=node_id, kind="animate", scene=scene.id, model_role="animate", model_name=an.model,
        params={
            "mode": an.mode, "prompt": an.prompt, "negative_prompt": an.negative_prompt,
            "width": width, "height": height, "fps": spec.defaults.fps, "steps": an.steps,
            "guidance": an.guidance, "shift": an.shift, "scheduler": an.scheduler,
            "seed": seed if seed >= 0 else seed_for(node_id), "frame_window": an.frame_window,
            "prev_frames": an.prev_frames,
            "loras": [{"name": lo.name, "weight": lo.weight} for lo in an.loras],
            "precision": an.precision, "quantize": an.quantize, "attention": an.attention,
            "rms_norm": an.rms_norm, "cache": _cache_params(an.cache),
        },
        runtime={"block_swap": an.block_swap, "lora_fuse": an.lora_fuse},
        inputs=inputs, loras=tuple((lo.name, "mov") for lo in an.loras),
        publish=f"scenes/{scene.id}.mp4", where=where, parallel=an.parallel))
    return NodeInput(node_id)


def _assemble_node(graph: Graph, loaded: LoadedSpec, j: int, asm: m.Assemble,
                   visuals: dict[str, tuple[str, tuple[NodeInput, ...] | NodeInput]],
                   sounds: dict[str, FileInput | NodeInput]) -> None:
    spec = loaded.spec
    width, height = m.parse_resolution(spec.defaults.resolution)
    order = asm.scenes or [s.id for s in spec.scenes]
    by_id = {s.id: s for s in spec.scenes}
    scenes, inputs, lines = [], {}, []
    for i, sid in enumerate(order):
        scene = by_id[sid]
        kind, visual = visuals[sid]
        inputs[f"v{i}"] = visual
        audio_name, gain, optional = None, 0.0, False
        speech = sounds.get(sid)
        if scene.animate is not None:
            reference = graph[f"{sid}.animate"].inputs["reference"]
            # a download's streams are known only once it is made: its sound is used if it has one
            optional = isinstance(reference, NodeInput)
            if optional or has_audio(reference.path):
                speech = reference
        if asm.audio and speech is not None:
            audio_name = f"a{i}"
            inputs[audio_name] = speech
            gain = scene.audio.gain_db if scene.audio is not None else 0.0
        entry = {"id": sid, "visual": f"v{i}", "kind": kind, "duration": scene.duration,
                 "audio": audio_name, "audio_gain_db": gain}
        if optional:
            entry["audio_optional"] = True
        transition = scene_transition(scene.transition, asm.transition) if i else None
        if transition:
            entry["transition"] = transition
        scenes.append(entry)
        source = scene.lipsync.audio if scene.lipsync is not None else scene.audio
        if audio_name and speech is sounds.get(sid) and isinstance(source, m.AudioSource) and source.tts:
            lines.append({"scene": sid, "audio": audio_name, "text": source.tts.text})
    music = None
    if asm.music is not None:
        inputs["music"] = source_input(graph, loaded, asm.music.file, ("assemble", j, "music", "file"))
        music = {"input": "music", "gain_db": asm.music.gain_db}
        if asm.music.duck_under_speech:
            music["duck_db"] = asm.music.duck_db
    fps = asm.fps or max((clip_rate(graph, visuals[sid][1], spec.defaults.fps) for sid in order),
                         default=spec.defaults.fps)
    params = {"fps": fps, "width": width, "height": height, "audio_rate": AUDIO_RATE,
              "scenes": scenes, "music": music, "loudness": asm.loudness, "crf": asm.crf}
    srt = _subtitles_node(graph, loaded, j, asm, params, inputs, lines)
    if srt is not None and asm.subtitles == "burn":
        inputs["subtitles"] = srt
        params["subtitles"] = "subtitles"
        inputs["subtitle_font"] = _subtitle_font(loaded, j, lines)   # its digest keys the font
        params["subtitle_font"] = "subtitle_font"
    graph.add(StageNode(
        id=f"assemble.{asm.name}", kind="assemble", scene=None, model_role=None,
        params=params, inputs=inputs, publish=f"{asm.name}.mp4", where=loaded.where("assemble", j)))


# --- audio sources and subtitles ---------------------------------------------------------------

def _audio_input(graph: Graph, loaded: LoadedSpec, index: int, scene: m.Scene, value: str | m.AudioSource,
                 loc: tuple, seed_for: SeedSource) -> FileInput | NodeInput:
    """The input for audio at ``loc`` (spec path): a file, or the node that makes it (a download,
    ``<scene>.tts``, ``<scene>.separate`` or ``<scene>.extract_audio``)."""
    if isinstance(value, m.AudioSource) and value.tts is not None:
        return _tts_node(graph, loaded, index, scene, value.tts, loc, seed_for)
    return source_input(graph, loaded, value, loc)


def _tts_node(graph: Graph, loaded: LoadedSpec, index: int, scene: m.Scene, tts: m.TtsSource,
              loc: tuple, seed_for: SeedSource) -> NodeInput:
    node_id = f"{scene.id}.tts"
    params = {"text": tts.text, "language": tts.language, "backend": tts.backend, "voice": tts.voice,
              "instruct": tts.instruct}
    role = None
    if tts.backend == "espeak":
        params["engine"] = espeak_revision()
    else:
        role = "tts"
        seed = _seed(tts.seed, scene, loaded.spec)
        params["seed"] = seed if seed >= 0 else seed_for(node_id)
    graph.add(StageNode(id=node_id, kind="tts", scene=scene.id, model_role=role, params=params,
                        runtime={"scene_id": scene.id, "field": ".".join((*loc[2:], "tts"))},
                        publish=f"scenes/{scene.id}.tts.wav", where=loaded.where(*loc, "tts")))
    return NodeInput(node_id)


def _subtitles_node(graph: Graph, loaded: LoadedSpec, j: int, asm: m.Assemble, params: dict,
                    inputs: dict, lines: list[dict]) -> NodeInput | None:
    """``assemble.<name>.srt``: cues from the TTS text, timed by the scenes and their speech.

    It takes only what decides the text and timings: the scenes' sounds, and a visual only where
    the clip's length is not known otherwise (a chained video's is fixed by its parameters, a
    lip-sync's by its speech, a still's by its duration or its sound): a new picture does not
    re-time the subtitles."""
    if asm.subtitles == "none" or not lines:
        return None
    scenes = [_subtitle_scene(graph, entry, inputs, params["fps"]) for entry in params["scenes"]]
    used = {e[k] for e in scenes for k in ("visual", "audio") if e.get(k)}
    node_id = f"assemble.{asm.name}.srt"
    graph.add(StageNode(
        id=node_id, kind="subtitles", scene=None, model_role=None,
        params={"fps": params["fps"], "audio_rate": params["audio_rate"], "scenes": scenes,
                "lines": lines},
        inputs={k: v for k, v in inputs.items() if k in used}, publish=f"{asm.name}.srt",
        where=loaded.where("assemble", j)))
    return NodeInput(node_id)


def _subtitle_font(loaded: LoadedSpec, j: int, lines: list[dict]) -> FileInput:
    """The font that draws every character of the subtitle lines (``media/fonts.py``)."""
    from ..errors import Problem, SpecError
    from ..media.fonts import FontError, choose_font

    configured = loaded.config.subtitles.font
    try:
        path = choose_font("\n".join(line["text"] for line in lines), configured)
    except FontError as exc:
        loc = ("assemble", j, "subtitles")
        raise SpecError([Problem(exc.message, loaded.where(*loc), loaded.path_text(*loc), exc.hint)]) from exc
    return FileInput(path=path, display=path.name)


def _subtitle_scene(graph: Graph, entry: dict, inputs: dict, fps: int) -> dict:
    """An assembly's scene entry as the subtitles read it: without the visual when its length
    is known without it (``frames`` for a chained video, ``speech_frames`` for a lip-sync whose
    speech is the scene's audio; a still's own rule)."""
    out = dict(entry)
    if entry["kind"] == "still":
        out.pop("visual")
        return out
    if _lipsync_of_scene_audio(graph, entry, inputs, fps):
        out.pop("visual")
        out["speech_frames"] = True
        return out
    frames = _chained_frames(graph, inputs[entry["visual"]], fps)
    if frames is not None:
        out.pop("visual")
        out["frames"] = frames
    return out


def _lipsync_of_scene_audio(graph: Graph, entry: dict, inputs: dict, fps: int) -> bool:
    """Whether a scene's clip is a lip-sync at ``fps`` of the very speech the scene plays."""
    visual = inputs[entry["visual"]]
    item = visual[0] if isinstance(visual, tuple) and len(visual) == 1 else visual
    if not isinstance(item, NodeInput) or not entry.get("audio"):
        return False
    node = graph[item.node]
    return (node.kind == "lipsync" and node.params["fps"] == fps
            and node.inputs.get("audio") == inputs[entry["audio"]])


def _chained_frames(graph: Graph, visual: tuple | NodeInput, fps: int) -> int | None:
    """Frames of a clip made of video segments at ``fps`` (each after the first drops its first
    frame, as ``assemble`` joins them); None when another stage makes it."""
    items = visual if isinstance(visual, tuple) else (visual,)
    nodes = [graph[i.node] for i in items if isinstance(i, NodeInput)]
    if not nodes or len(nodes) != len(items) or any(n.kind != "video" or n.params["fps"] != fps
                                                     for n in nodes):
        return None
    return sum(n.params["frames"] for n in nodes) - (len(nodes) - 1)


def scene_transition(own: m.Transition | None, default: m.Transition) -> dict | None:
    """The transition into a scene as assemble params: None for a cut."""
    chosen = default if own is None else own
    return {"crossfade": chosen.crossfade} if isinstance(chosen, m.Crossfade) else None


def has_audio(path: Path) -> bool:
    """Whether a media file has an audio stream (PyAV reads the container header only)."""
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except (OSError, av.error.FFmpegError):
        return False


def input_paths(value: FileInput | NodeInput | tuple, resolve: Callable[[str], Path]):
    """Turn a node's input value into the path(s) a stage receives."""
    if isinstance(value, tuple):
        return [input_paths(v, resolve) for v in value]
    if isinstance(value, FileInput):
        return value.path
    return resolve(value.node)
