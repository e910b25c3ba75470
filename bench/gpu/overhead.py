"""What the renderer adds to a heavy stage: the stage's wall time inside ``cinesynth render``
against the same model's pure text encoding + denoising + VAE time, in one process.

For each kind (``video``: Wan2.2-I2V-A14B with two LoRAs of different high/low weights,
``image``: FLUX.2-klein-9B, ``lipsync``: Wan2.2-S2V-14B from a two-segment espeak line,
``animate``: Wan2.2-Animate-14B with the Change Character V1.1 preset and every step computed),
a project of two scenes of that kind (different seeds) is rendered
through the CLI in this process (``--only KIND``). The first scene (``--warm-steps``) pays the
load, the one-off compile and the LoRA fusing; the second (``--steps``) is the warm clip a batch
pays for each further scene: its row's ``stage s`` is the manifest's time for it, less the load
time it reports (none when warm). Then the same pipeline is loaded on its own through the
catalog's loader, given the same attention kernel, compile and LoRAs (fused as the stage fuses
them), and timed for what the model must do: the prompt encoding, then one ``pipe(...)`` call
(the image encode, the steps, the VAE decode) after an untimed warm-up call of ``--warm-steps``.
The text encoder leaves the GPU between the two, untimed, as the stage's placement does
(FLUX.2-klein's stays, as it does in the stage when the pipeline fits). What the stage spends
beyond that (planning, placement moves, LoRA switching, writing and hashing the clip,
publishing) is ``× pure − 1``. Of it, the warm scene's own calls are timed apart: writing its
output (``write_s``: the clip's encode, or the still's PNG), other ffmpeg runs (``mux_s``: the
speech muxed in), its commit to the cache (``commit_s``: hashed, synced, installed) and the
re-hashing of its inputs (``verify_s``).

    python bench/gpu/overhead.py [--kinds video,image,lipsync,animate] [--steps 40] [--warm-steps 2]   # shapes, CUDA
    python bench/gpu/overhead.py --tiny                                 # tiny profile: checks it runs

The animate scenes need the pose, face, background and mask videos of their reference
(``animate_prep``, mediapipe): where mediapipe is missing, ``--cache DIR`` names a cache that
holds them (it is copied; ``specs/examples/.cinesynth/cache`` by default, where it exists, holds
the nightly batch's, which these scenes share).

JSON goes to ``$OUT/overhead.json`` when OUT is set.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from _common import ROOT, Patches, gib, save, table

ASSETS = ROOT / "specs" / "examples" / "assets"
CACHE = ROOT / "specs" / "examples" / ".cinesynth" / "cache"
LORAS = [{"name": "shapes/motion", "high": 1.0, "low": 0.5}, {"name": "shapes/camera", "high": 0.6, "low": 1.0}]


SPEECH = ("Good evening. Tonight the harbour lights came on one by one, and the last ferry crossed the bay "
          "under a sky full of dark rain clouds. Here is what happened in the city today.")   # 9.25 s: two segments
KINDS = ("video", "image", "lipsync", "animate")


def stage_for(kind: str, tiny: bool, steps: int) -> dict:
    if kind == "video":
        return {"image": "assets/avatar.png", "prompt": "the last ferry crosses the bay at dusk",
                "resolution": "64x64" if tiny else "480x832", "frames": 9 if tiny else 81, "steps": steps,
                "loras": [] if tiny else LORAS}
    if kind == "lipsync":
        return {"avatar": "assets/avatar.png", "prompt": "a news anchor talking to the camera, studio light",
                "audio": {"tts": {"text": SPEECH, "language": "en", "backend": "espeak"}},
                "resolution": "64x64" if tiny else "480x832", "infer_frames": 80, "steps": steps}
    if kind == "animate":                     # the preset's every value; TeaCache off: every step computed
        return {"preset": "change_character_v1_1", "reference_video": "assets/dance_77.mp4",
                "character": "assets/avatar.png", "mode": "replace", "steps": steps, "cache": {"kind": "none"},
                **({"resolution": "64x64", "frame_window": 17} if tiny else {})}
    return {"prompt": "a harbour at dusk, ferries crossing, rain clouds", "steps": steps}


def spec_for(kind: str, tiny: bool, steps: int, warm_steps: int) -> dict:
    stage = stage_for(kind, tiny, steps)
    scenes = [{"id": f"s{i}", kind: {**stage, "seed": 100 + i, "steps": n}} for i, n in enumerate((warm_steps, steps))]
    return {"project": f"overhead_{kind}", "profile": "tiny" if tiny else "shapes",
            "defaults": {"resolution": "64x64" if tiny else "720x1280", "fps": 16}, "scenes": scenes}


def cli(argv: list[str]) -> None:
    from cinesynth_batch.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"cinesynth {argv[0]} exited with {exc.code}")


def render(project: Path, spec: Path, kind: str) -> dict:
    cli(["render", str(spec), "--keep-going", "--only", kind])
    manifest = next((project / "outputs").glob("*/manifest.json"))
    return json.loads(manifest.read_text())


#: What the probe times during the render: (module, attribute on it, label).
PROBED = (("cinesynth_batch.media.video_io", "write_video", "write_s"),     # a clip: the ffmpeg encode
          ("PIL.Image", "Image.save", "write_s"),                           # a still: the PNG
          ("cinesynth_batch.media.ffmpeg", "run_ffmpeg", "mux_s"),          # other ffmpeg runs: muxing
          ("cinesynth_batch.cache.store", "CacheStore.commit", "commit_s"),  # hash, fsync, install
          ("cinesynth_batch.cache.store", "CacheStore.verified_path", "verify_s"))   # inputs re-hashed


class Probe(Patches):
    """Times the renderer's own work inside a render (writing the output, committing it to the
    cache, verifying the inputs) by wrapping the functions that do it, each call stamped with the
    wall clock so that a stage's share is read off its ``started_at``/``ended_at`` (the commit
    comes after the stage's module returns, so the call stack cannot tell)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float, float]] = []       # (label, wall start, seconds)

    def __enter__(self) -> "Probe":
        import importlib

        for module, path, label in PROBED:
            owner = importlib.import_module(module)
            *outer, name = path.split(".")
            for part in outer:
                owner = getattr(owner, part)
            self.wrap(owner, name, self._timed(label))
        return self

    def _timed(self, label: str):
        def make(fn):
            def timed(*args, **kwargs):
                began, t0 = time.time(), time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.calls.append((label, began, time.perf_counter() - t0))
            return timed
        return make

    def within(self, stage: dict) -> dict[str, float]:
        """Seconds per label of the calls made while ``stage`` (a manifest entry, its times to the
        millisecond) ran."""
        out = {label: 0.0 for _, _, label in PROBED}
        for label, began, seconds in self.calls:
            if stage["started_at"] - 0.001 <= began <= stage["ended_at"] + 0.001:
                out[label] += seconds
        return {label: round(v, 3) for label, v in out.items()}


def free() -> None:
    """Drop what the render compiled and loaded (compiled code can hold its modules), so the pure
    run's copy of the model finds the device empty; says what is still allocated."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        print(f"after the render: {gib(torch.cuda.memory_allocated())} GiB still allocated", flush=True)


def clock(device: str, fn):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def stage_inputs(plan, stage_id: str) -> dict:
    """The planned stage's inputs as the stage receives them: files, or its upstream stages'
    artifacts from the cache (the render made them)."""
    from cinesynth_batch.plan.expand import input_paths

    def artifact(node_id: str) -> Path:
        entry = plan.stages[node_id].entry
        path = plan.cache.verified_path(entry, full=True) if entry is not None else None
        if path is None:
            raise RuntimeError(f"{node_id} is not in the cache")
        return path

    return {name: input_paths(value, artifact) for name, value in plan.stages[stage_id].node.inputs.items()}


def video_calls(pipe, p, inputs, device, registry):
    from PIL import Image

    from cinesynth_batch.runtime.accel import prepare_pipeline, settings_from_params
    from cinesynth_batch.runtime.lora import HIGH, LOW, apply_loras, video_lora_requests
    from cinesynth_batch.runtime.lora_fuse import can_fuse, fuse
    from cinesynth_batch.stages.video import encode_prompts

    speed = prepare_pipeline(pipe, settings_from_params(p), device)
    active = apply_loras(pipe, video_lora_requests(p["loras"], registry.resolve_lora))
    if can_fuse(p["lora_fuse"], device, speed)[0]:      # as the stage runs them
        fuse(pipe, active, (HIGH, LOW))
    first = Image.open(inputs["image"]).convert("RGB").resize((p["width"], p["height"]))

    def encode():
        return encode_prompts(pipe, p["prompt"], p["negative_prompt"], p["guidance"])

    def call(embeds, steps):
        return pipe(image=first, prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1],
                    height=p["height"], width=p["width"], num_frames=p["frames"],
                    num_inference_steps=steps, guidance_scale=p["guidance"],
                    guidance_scale_2=p["guidance_2"], generator=torch.Generator("cpu").manual_seed(p["seed"]),
                    output_type="np").frames
    return encode, call


def image_calls(pipe, p, inputs, device, registry):
    from cinesynth_batch.runtime.lora import apply_loras, image_lora_requests
    from cinesynth_batch.stages.image import encode_prompts

    apply_loras(pipe, image_lora_requests(p["loras"], registry.resolve_lora))
    cfg = p["guidance"] > 1.0 and not getattr(pipe.config, "is_distilled", False)

    def encode():
        return encode_prompts(pipe, p["prompt"], p["negative_prompt"], cfg)

    def call(embeds, steps):
        return pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], width=p["width"],
                    height=p["height"], num_inference_steps=steps, guidance_scale=p["guidance"],
                    generator=torch.Generator("cpu").manual_seed(p["seed"]), output_type="pil").images
    return encode, call


def lipsync_calls(pipe, p, inputs, device, registry):
    """The S2V pipeline's own work: the prompt encoding, then ``generate`` (the audio encoder, the
    reference and motion latents, every segment's steps, the VAE decodes)."""
    from cinesynth_batch.models.s2v.audio_features import read_speech
    from cinesynth_batch.models.s2v.lora import PhaseLora
    from cinesynth_batch.runtime.accel import prepare_pipeline, settings_from_params
    from cinesynth_batch.stages.lipsync import _open_avatar

    prepare_pipeline(pipe, settings_from_params(p), device)
    avatar = _open_avatar(Path(inputs["avatar"]))
    wave, seconds = read_speech(Path(inputs["audio"]))
    loras = [PhaseLora(lo["name"], registry.resolve_lora(lo["name"], "mov"), lo["high"], lo["low"])
             for lo in p["loras"]]

    def encode():
        return pipe.encode_text(p["prompt"], p["negative_prompt"])

    def call(texts, steps):
        return pipe.generate(image=avatar, speech=wave, audio_seconds=seconds, prompt=p["prompt"],
                             negative_prompt=p["negative_prompt"], width=p["width"], height=p["height"],
                             fps=p["fps"], infer_frames=p["infer_frames"], steps=steps, guidance=p["guidance"],
                             shift=p["shift"], scheduler=p["scheduler"], seed=p["seed"], boundary=p["boundary"],
                             loras=loras, texts=texts).frames
    return encode, call


def animate_calls(pipe, p, inputs, device, registry):
    """Wan2.2-Animate with the stage's runtime (fp8 storage, block swap, the LoRAs fused as the
    stage fuses them; untimed): the prompt encoding, then one ``pipe(...)`` over every window."""
    from cinesynth_batch.runtime.animate import RuntimeSettings, animate_lora_requests, prepare_animate_run
    from cinesynth_batch.stages.animate import read_inputs
    from cinesynth_batch.stages.video import encode_prompts, make_scheduler

    settings = RuntimeSettings(precision=p["precision"], quantize=p["quantize"], attention=p["attention"],
                               block_swap=p["block_swap"], rms_norm=p["rms_norm"])
    prepare_animate_run(pipe, settings, animate_lora_requests(p["loras"], registry.resolve_lora), device=device,
                        lora_fuse=p["lora_fuse"])
    pipe.scheduler = make_scheduler(pipe, p["scheduler"], p["shift"])
    data = read_inputs(inputs, p["mode"])

    def encode():
        return encode_prompts(pipe, p["prompt"], p["negative_prompt"], p["guidance"])

    def call(embeds, steps):
        return pipe(image=data["character"], pose_video=data["pose"], face_video=data["face"],
                    background_video=data.get("background"), mask_video=data.get("mask"),
                    prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], height=p["height"],
                    width=p["width"], segment_frame_length=p["frame_window"],
                    prev_segment_conditioning_frames=p["prev_frames"], num_inference_steps=steps, mode=p["mode"],
                    guidance_scale=p["guidance"], generator=torch.Generator("cpu").manual_seed(p["seed"]),
                    output_type="pt").frames
    return encode, call


CALLS = {"video": video_calls, "image": image_calls, "lipsync": lipsync_calls, "animate": animate_calls}


def pure(kind: str, spec: Path, stage_id: str, reps: int, warm_steps: int) -> dict:
    """The planned stage's model, loaded on its own, timed for its compute only."""
    from cinesynth_batch.catalog.loaders import load_model
    from cinesynth_batch.execute.session import Session
    from cinesynth_batch.runtime.placement import TEXT_ENCODER
    from cinesynth_batch.runtime.swap import swap_component

    session = Session.open(spec)
    plan = session.plan()
    planned = plan.stages[stage_id]
    registry = session.registry
    role, name = planned.node.model_role, planned.node.model_name
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = registry.dtype if device == "cuda" else "float32"
    pipe = load_model(registry.spec(role, name).kind, registry.local_path(role, name), device, dtype)
    module = __import__(f"cinesynth_batch.stages.{kind}", fromlist=["check_params"])
    p = module.check_params(planned.params)
    encode, call = CALLS[kind](pipe, p, stage_inputs(plan, stage_id), device, registry)
    park = device == "cuda" and kind != "image"     # the stage's placement: the text encoder waits in host RAM
    rows = []
    with torch.no_grad():
        for rep in range(reps + 1):             # the first is the warm-up (compile), with fewer steps
            steps = p["steps"] if rep else warm_steps
            enc_s, embeds = clock(device, encode)
            if park:
                swap_component(pipe, TEXT_ENCODER, "host")     # untimed
            call_s, _ = clock(device, lambda: call(embeds, steps))
            if park:
                swap_component(pipe, TEXT_ENCODER, "cuda")
            rows.append({"encode_s": enc_s, "call_s": call_s})
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    del pipe, encode, call
    free()
    timed = rows[1:]
    best = min(timed, key=lambda r: r["encode_s"] + r["call_s"])
    return {"encode_s": round(best["encode_s"], 3), "call_s": round(best["call_s"], 3),
            "pure_s": round(best["encode_s"] + best["call_s"], 3), "warmup_s": round(sum(rows[0].values()), 2),
            "peak_gib": gib(peak)}


def measure(kind: str, tiny: bool, steps: int, reps: int, warm_steps: int, cache: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"overhead-{kind}-") as tmp:
        project = Path(tmp)
        shutil.copytree(ASSETS, project / "assets")
        shutil.copytree(ROOT / "presets", project / "presets")     # change_character_v1_1
        if cache is not None and cache.is_dir():
            shutil.copytree(cache, project / ".cinesynth" / "cache")
        spec = project / "spec.yaml"
        spec.write_text(yaml.safe_dump(spec_for(kind, tiny, steps, warm_steps), sort_keys=False))
        if kind in ("video", "animate") and not tiny:
            cli(["models", "shapes-loras", str(spec), "--rank", "64"])
        t0 = time.perf_counter()
        with Probe() as probe:
            manifest = render(project, spec, kind)
        render_s = time.perf_counter() - t0
        free()
        stages = {st["id"]: st for st in manifest["stages"]}
        cold, warm = stages[f"s0.{kind}"], stages[f"s1.{kind}"]
        timing = warm.get("facts", {}).get("timing", {})
        stage_s = warm["seconds"] - float(timing.get("load_s") or 0.0)
        base = pure(kind, spec, f"s1.{kind}", reps, warm_steps)
    return {"kind": kind, "steps": steps, "loras": warm.get("facts", {}).get("loras"), "render_s": round(render_s, 2), "cold_stage_s": cold["seconds"],
            "stage_s": round(stage_s, 3), "stage_load_s": timing.get("load_s"), "timing": timing,
            **probe.within(warm), **base,
            "x_pure": round(stage_s / base["pure_s"], 4), "renderer_s": round(stage_s - base["pure_s"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="video,image", help=f"of {','.join(KINDS)}")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warm-steps", type=int, default=2, help="steps of the first (compiling) clip")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="tiny profile (on the CPU: checks that it runs)")
    ap.add_argument("--cache", type=Path, default=CACHE, help="a cache to start from (copied): the animate "
                    "scenes' pose/face/background/mask videos where mediapipe is missing")
    args = ap.parse_args()
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown kind(s) {', '.join(sorted(unknown))}: give some of {','.join(KINDS)}")
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("overhead.py needs CUDA for profile shapes (use --tiny to check it on the CPU)")
    rows = []
    for kind in args.kinds.split(","):
        rows.append(measure(kind, args.tiny, args.steps, args.reps, args.warm_steps, args.cache))
        print(kind, rows[-1], flush=True)
    print(table(rows, ["kind", "cold_stage_s", "stage_s", "encode_s", "call_s", "pure_s", "x_pure", "renderer_s",
                       "write_s", "mux_s", "commit_s", "verify_s", "peak_gib"]))
    save("overhead.json", {"steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
