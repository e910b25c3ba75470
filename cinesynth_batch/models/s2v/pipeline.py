"""Wan2.2-S2V speech-to-video: auto-regressive segments driven by speech.

The sampling follows the reference ``speech2video.py``:

* speech -> wav2vec2 hidden states of all layers -> 30 Hz rows -> one row per video frame,
  bucketed into segments of ``infer_frames`` frames (``audio_features.py``);
* the avatar is resized to cover the generation size and centre-cropped; its VAE latent is the
  reference of every segment;
* segment 1 starts with a motion history of 73 black frames, marked as dropped; each later
  segment's motion latents encode the last 73 frames made so far (FramePack);
* each segment denoises ``F = (infer_frames + 3 + 73) // 4 - 19`` latent frames with UniPC
  (flow shift) or Euler, classifier-free guidance on the text and the speech (the unconditional
  pass gets the negative prompt and silent audio features);
* segment 1 decodes ``[ref, latents]`` and drops its first 3 frames; later segments decode
  ``[motion, latents]``; each keeps its last ``infer_frames`` frames.

Segments: ``max(reference_count, ceil((round(seconds * fps) + 3) / infer_frames))``, where the
reference count is ``int(A / (infer_frames * 30 / fps)) + 1`` with ``A`` the number of 30 Hz
audio rows; the second term makes sure the frames cover the whole speech. 12 s at 16 fps with
``infer_frames: 80`` gives 3 segments (237 frames, cut to 192).

The model generates at the requested size rounded up to multiples of 64 (FramePack packs
latents 8x8) and the frames are centre-cropped back to the requested size.

LoRA weights switch from ``high`` to ``low`` when the timestep falls below
``boundary * 1000`` (the product's "High/Low Noise MoE" on one model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ...errors import StageError
from ...runtime.pixels import signed_to_uint8
from . import components as comp
from .audio_features import (FIRST_SEGMENT_DROP, audio_embed_bucket, audio_hidden_states, count_segments,
                             load_wav2vec2)
from .lora import PhaseLora, PhaseLoras
from .transformer import WanS2VTransformer3DModel

MOTION_FRAMES = 73
LATENT_MOTION_FRAMES = (MOTION_FRAMES + 3) // 4
NUM_TRAIN_TIMESTEPS = 1000
SIZE_DIVISOR = 64
DEFAULT_NEGATIVE_PROMPT = (
    "画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，"
    "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走")


@dataclass
class S2VResult:
    frames: np.ndarray                 # uint8 [T, H, W, 3]
    segments: int
    cache_stats: dict[str, Any] | None


def generation_size(width: int, height: int) -> tuple[int, int]:
    up = lambda v: int(math.ceil(v / SIZE_DIVISOR) * SIZE_DIVISOR)  # noqa: E731
    return up(width), up(height)


def latent_frames(infer_frames: int) -> int:
    return (infer_frames + 3 + MOTION_FRAMES) // 4 - LATENT_MOTION_FRAMES


class WanS2VPipeline:
    """All components of one S2V model folder, loaded once and kept by the residency manager."""

    def __init__(self, transformer: WanS2VTransformer3DModel, vae, text_encoder, tokenizer,
                 audio_model, audio_processor, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.audio_model = audio_model
        self.audio_processor = audio_processor
        self.device = torch.device(device)
        self.dtype = dtype
        self.loras = PhaseLoras(transformer)

    @property
    def components(self) -> dict[str, Any]:
        return {"transformer": self.transformer, "vae": self.vae, "text_encoder": self.text_encoder,
                "audio_model": self.audio_model}

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    place: bool = True) -> "WanS2VPipeline":
        """Load the official layout for ``device``; ``place``: move every component there (else
        they stay in host RAM where they were read, for the caller to place)."""
        folder = Path(folder)
        needed = ["config.json", comp.VAE_FILE, comp.T5_FILE, comp.T5_TOKENIZER_DIR, comp.WAV2VEC2_DIR]
        missing = [n for n in needed if not (folder / n).exists()]
        if missing:
            raise StageError(f"{folder} is not a Wan2.2-S2V folder: missing {', '.join(missing)}",
                             hint="download Wan-AI/Wan2.2-S2V-14B and point models.lipsync.path at it")
        transformer = WanS2VTransformer3DModel.from_pretrained(folder, torch_dtype=dtype)
        vae_dtype = torch.float32 if device == "cpu" else dtype
        vae = comp.load_wan21_vae(folder / comp.VAE_FILE, dtype=vae_dtype)
        text_encoder, tokenizer = comp.load_umt5_encoder(folder / comp.T5_FILE,
                                                         folder / comp.T5_TOKENIZER_DIR, dtype=dtype)
        audio_model, audio_processor = load_wav2vec2(folder / comp.WAV2VEC2_DIR, dtype=torch.float32)
        pipe = cls(transformer.eval(), vae.eval(), text_encoder.eval(), tokenizer, audio_model.eval(),
                   audio_processor, device=device, dtype=dtype)
        return pipe.to(device) if place else pipe

    def to(self, device: str | torch.device) -> "WanS2VPipeline":
        self.device = torch.device(device)
        for module in self.components.values():
            module.to(self.device)
        return self

    # -- VAE -----------------------------------------------------------------------------------
    def _latent_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=z.device).view(shape)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=z.device).view(shape)
        return mean, std

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[1, 3, T, H, W]`` in [-1, 1] -> normalised latents ``[1, 16, T', H/8, W/8]``."""
        vae_dtype = next(self.vae.parameters()).dtype
        mu = self.vae.encode(pixels.to(self.device, vae_dtype)).latent_dist.mode().float()
        mean, std = self._latent_stats(mu)
        return (mu - mean) / std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> pixels ``[1, 3, T, H, W]`` in [-1, 1]."""
        mean, std = self._latent_stats(latents)
        vae_dtype = next(self.vae.parameters()).dtype
        out = self.vae.decode((latents * std + mean).to(vae_dtype)).sample
        return out.float().clamp(-1, 1)

    # -- inputs --------------------------------------------------------------------------------
    def _reference_pixels(self, image, width: int, height: int) -> torch.Tensor:
        from PIL import Image

        img = image.convert("RGB")
        scale = max(width / img.width, height / img.height)
        size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = (img.width - width) // 2, (img.height - height) // 2
        img = img.crop((left, top, left + width, top + height))
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
        return arr.permute(2, 0, 1)[None, :, None]  # [1, 3, 1, H, W]

    def _pose_latents(self, pose_video: Path, segments: int, infer_frames: int, width: int,
                      height: int) -> list[torch.Tensor]:
        from PIL import Image

        from ...media.video_io import read_frames

        try:
            frames = read_frames(pose_video)
        except Exception as exc:
            raise StageError(f"lipsync: cannot read the pose video {pose_video.name}: {exc}") from exc
        need = segments * infer_frames
        if frames.shape[0] < need:
            frames = np.concatenate([frames, np.repeat(frames[-1:], need - frames.shape[0], 0)])
        out = []
        for r in range(segments):
            chunk = frames[r * infer_frames:(r + 1) * infer_frames]
            chunk = np.concatenate([chunk[:1], chunk])
            pix = torch.cat([self._reference_pixels(Image.fromarray(f), width, height) for f in chunk],
                            dim=2)
            out.append(self.encode(pix)[:, :, 1:])
        return out

    def _text(self, prompt: str) -> torch.Tensor:
        states = comp.encode_prompts(self.text_encoder, self.tokenizer, [prompt], device=self.device)
        return states[0][None].to(self.dtype)

    def encode_text(self, prompt: str, negative_prompt: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(context, unconditional context): the prompt and the negative prompt (the default one
        when none is given) through the text encoder, as ``generate`` uses them."""
        return self._text(prompt), self._text(negative_prompt if negative_prompt else DEFAULT_NEGATIVE_PROMPT)

    # -- sampling ------------------------------------------------------------------------------
    def _scheduler(self, kind: str, shift: float, steps: int):
        from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

        if kind == "unipc":
            sched = UniPCMultistepScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                                            prediction_type="flow_prediction", use_flow_sigmas=True,
                                            flow_shift=shift)
        elif kind == "euler":
            sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
        else:
            raise StageError(f"lipsync: unknown scheduler '{kind}' (use unipc or euler)")
        sched.set_timesteps(steps, device=self.device)
        return sched

    @torch.no_grad()
    def generate(self, *, image, speech: np.ndarray, audio_seconds: float, prompt: str,
                 negative_prompt: str | None, width: int, height: int, fps: int, infer_frames: int,
                 steps: int, guidance: float, shift: float, scheduler: str, seed: int,
                 boundary: float = 0.9, loras: list[PhaseLora] | None = None,
                 cache: dict[str, Any] | None = None, pose_video: Path | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 on_step: Callable[[int, int, float, torch.Tensor], None] | None = None,
                 texts: tuple[torch.Tensor, torch.Tensor] | None = None) -> S2VResult:
        """Generate the frames for ``speech``; ``on_step(segment, step, timestep, latents)`` is
        called after every denoising step (for inspection). ``texts``: ``encode_text``'s result for
        ``prompt``/``negative_prompt``, computed beforehand (the text encoder is then not used)."""
        gen_w, gen_h = generation_size(width, height)
        hidden = audio_hidden_states(self.audio_model, self.audio_processor, speech)
        bucket, reference_count = audio_embed_bucket(hidden, fps=fps, infer_frames=infer_frames)
        segments = count_segments(reference_count, audio_seconds, fps, infer_frames)
        if segments * infer_frames > bucket.shape[-1]:
            pad = segments * infer_frames - bucket.shape[-1]
            bucket = torch.nn.functional.pad(bucket, (0, pad))
        bucket = bucket.to(self.device, self.dtype)

        self.loras.use(list(loras or []))
        handle = self._cache(cache, steps)
        ref_latents = self.encode(self._reference_pixels(image, gen_w, gen_h))
        history = torch.zeros(1, 3, MOTION_FRAMES, gen_h, gen_w, device=self.device)
        # segment 1 drops its motion tokens, so its (black) history needs no encoding
        motion_latents = torch.zeros(1, 16, LATENT_MOTION_FRAMES, gen_h // 8, gen_w // 8,
                                     device=self.device)
        poses = (self._pose_latents(pose_video, segments, infer_frames, gen_w, gen_h)
                 if pose_video is not None else None)
        context, context_null = texts if texts is not None else self.encode_text(prompt, negative_prompt)
        total = segments * steps
        out: list[torch.Tensor] = []
        try:
            for r in range(segments):
                audio = bucket[..., r * infer_frames:(r + 1) * infer_frames]
                cond = poses[r].to(self.dtype) if poses is not None else None
                first = r == 0
                gen = torch.Generator("cpu").manual_seed(seed + r)
                shape = (1, 16, latent_frames(infer_frames), gen_h // 8, gen_w // 8)
                latents = torch.randn(shape, generator=gen, dtype=torch.float32).to(self.device)
                sched = self._scheduler(scheduler, shift, steps)
                phase = None
                common = dict(ref_latents=ref_latents.to(self.dtype),
                              motion_latents=motion_latents.to(self.dtype),
                              motion_frames=(MOTION_FRAMES, LATENT_MOTION_FRAMES), cond_states=cond,
                              drop_motion_frames=first)
                if progress is not None:      # the segment's denoising starts
                    progress(r * steps, total, segment=r + 1, segments=segments, segment_step=0,
                             segment_steps=steps)
                for i, t in enumerate(sched.timesteps):
                    now = "high" if float(t) >= boundary * NUM_TRAIN_TIMESTEPS else "low"
                    if now != phase:
                        self.loras.set_phase(now)
                        phase = now
                    x = latents.to(self.dtype)
                    ts = t.reshape(1).to(self.device)
                    pred = self.transformer(x, ts, context, audio_features=audio, **common).sample
                    if guidance > 1.0:
                        uncond = self.transformer(x, ts, context_null, audio_features=audio * 0.0,
                                                  **common).sample
                        pred = uncond + guidance * (pred - uncond)
                    latents = sched.step(pred.float(), t, latents, return_dict=False)[0]
                    if on_step is not None:
                        on_step(r, i, float(t), latents)
                    if progress is not None:
                        progress(r * steps + i + 1, total, segment=r + 1, segments=segments,
                                 segment_step=i + 1, segment_steps=steps)
                head = ref_latents if first else motion_latents
                pixels = self.decode(torch.cat([head, latents], dim=2))[:, :, -infer_frames:]
                if first:
                    pixels = pixels[:, :, FIRST_SEGMENT_DROP:]
                out.append(signed_to_uint8(pixels).cpu())
                if r + 1 < segments:
                    overlap = min(MOTION_FRAMES, pixels.shape[2])
                    history = torch.cat([history[:, :, overlap:], pixels[:, :, -overlap:]], dim=2)
                    motion_latents = self.encode(history)
        finally:
            stats = handle.stats() if handle is not None else None
            if handle is not None:
                handle.remove()
        video = torch.cat(out, dim=2)[0]                              # [3, T, H, W] uint8
        top, left = (gen_h - height) // 2, (gen_w - width) // 2
        video = video[:, :, top:top + height, left:left + width]
        frames = video.permute(1, 2, 3, 0).contiguous().numpy()
        return S2VResult(frames=frames, segments=segments, cache_stats=stats)

    def _cache(self, cache: dict[str, Any] | None, steps: int):
        if not cache or cache.get("kind") != "teacache":
            return None
        from ...runtime.teacache import TeaCacheConfig, apply_teacache
        from .teacache_adapter import S2VTeaCacheAdapter

        config = TeaCacheConfig(rel_l1_thresh=cache["threshold"], start_step=cache["start_step"],
                                use_coefficients=False, indicator="modulated_input", num_steps=steps)
        return apply_teacache(self.transformer, config, adapter=S2VTeaCacheAdapter(), name="s2v")
