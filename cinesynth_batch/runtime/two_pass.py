"""The two-resolution expert hand-off of a Wan2.2 I2V pipeline (``WanImageToVideoPipeline``).

The first ``high_steps`` of a flow-match Euler schedule of ``steps`` run on the high-noise expert at
a reduced size and finish fully denoised (the last sigma of the window set to 0, as a ComfyUI
``KSamplerAdvanced`` with ``return_with_leftover_noise`` off); the latent is upscaled through the
VAE (decode, resize the frames, encode: ``LatentUpscaleWithVAE``); fresh noise brings it back to
the schedule's sigma at ``high_steps`` and the remaining steps run on the low-noise expert at the
full size (``add_noise`` on). Both passes call the pipeline itself: a window scheduler hands it
its part of the one schedule, and the expert boundary is set between the two parts, so the
pipeline's own expert switch picks the high expert for every step of the first pass and the low
expert for every step of the second.

An upscale in pixel space through the VAE, not a plain interpolation of the latent: the Wan
latent is not a picture (normalised, 4x temporally packed channels) and the seed resizes decoded
frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Window:
    """Steps ``start``..``end`` (end exclusive) of a schedule of ``steps``; ``to_zero``: the last
    step lands on sigma 0 (a fully denoised latent)."""

    start: int
    end: int
    to_zero: bool


def window_scheduler(scheduler: Any, window: Window) -> Any:
    """A flow-match Euler scheduler like ``scheduler`` whose ``set_timesteps(steps)`` keeps only
    ``window`` of the schedule of ``steps``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class WindowedEuler(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):  # noqa: ANN001
            super().set_timesteps(num_inference_steps, device=device, **kwargs)
            if not 0 <= window.start < window.end <= len(self.timesteps):
                raise ValueError(f"steps {window.start}..{window.end} are outside a schedule of "
                                 f"{len(self.timesteps)} steps")
            sigmas = self.sigmas[window.start:window.end + 1].clone()
            if window.to_zero:
                sigmas[-1] = 0.0
            self.timesteps = self.timesteps[window.start:window.end]
            self.sigmas = sigmas
            self.set_begin_index(0)

    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError("two_pass runs the flow-match Euler sampler (scheduler: euler)")
    return WindowedEuler.from_config(scheduler.config)


def schedule(scheduler: Any, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas) of ``scheduler``'s full schedule of ``steps``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    full = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    full.set_timesteps(steps)
    return full.timesteps.clone(), full.sigmas.clone()


def split_boundary(timesteps: torch.Tensor, high_steps: int, train_steps: int) -> float:
    """The expert boundary (a fraction of ``train_steps``) between step ``high_steps - 1`` and
    step ``high_steps``: the pipeline gives the earlier steps to the high-noise expert."""
    t_hi, t_lo = float(timesteps[high_steps - 1]), float(timesteps[high_steps])
    return (t_hi + t_lo) / 2.0 / train_steps


def _latent_stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    return mean, std


def upscale_latents(vae: Any, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """A normalised Wan latent decoded, its frames resized to ``width`` x ``height`` (bicubic,
    clamped to the VAE's range) and encoded again (the distribution's mode), normalised."""
    import torch.nn.functional as F

    device = next(vae.parameters()).device
    x = latents.to(device=device, dtype=vae.dtype)
    mean, std = _latent_stats(vae, x)
    video = vae.decode(x * std + mean, return_dict=False)[0]             # (B, C, F, H, W) in [-1, 1]
    b, c, f, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).float()
    frames = F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False).clamp(-1.0, 1.0)
    video = frames.reshape(b, f, c, height, width).permute(0, 2, 1, 3, 4).to(vae.dtype)
    up = vae.encode(video).latent_dist.mode()
    return ((up - mean) / std).to(latents.dtype)


def renoise(latents: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """``latents`` brought to noise level ``sigma`` of a flow-match schedule with noise drawn
    from ``seed`` (on the CPU, so every device draws the same)."""
    noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    return (sigma * noise.to(latents.device) + (1.0 - sigma) * latents.float()).to(latents.dtype)


@dataclass(frozen=True)
class TwoPassPlan:
    steps: int
    high_steps: int
    base: tuple[int, int]    # (width, height) of the first pass
    full: tuple[int, int]    # (width, height) of the second


def run_two_pass(pipe: Any, plan: TwoPassPlan, images: Callable[[int, int], tuple[Any, Any]], *, frames: int,
                 seed: int, call: dict[str, Any], on_step: Callable[[int], None] | None = None) -> Any:
    """Run ``pipe`` in two passes as the module says; returns the full-size frames as the pipeline's
    ``output_type="pt"`` gives them (batch, frames, channels, height, width).

    ``images(width, height)`` gives the (first, last-or-None) conditioning images at a size;
    ``call`` holds the keyword arguments both passes share (prompt embeddings, guidance scales);
    ``on_step(i)`` is told after each step ``i`` of the whole schedule (1-based)."""
    base_scheduler = pipe.scheduler
    timesteps, sigmas = schedule(base_scheduler, plan.steps)
    train_steps = base_scheduler.config.num_train_timesteps
    boundary = split_boundary(timesteps, plan.high_steps, train_steps)
    old_boundary = pipe.config.boundary_ratio

    def stepper(offset: int):
        if on_step is None:
            return None

        def cb(_pipe, i, _t, _kwargs):
            on_step(offset + i + 1)
            return {}
        return cb

    try:
        pipe.register_to_config(boundary_ratio=boundary)
        pipe.scheduler = window_scheduler(base_scheduler, Window(0, plan.high_steps, to_zero=True))
        first, last = images(*plan.base)
        low = pipe(image=first, last_image=last, width=plan.base[0], height=plan.base[1], num_frames=frames,
                   num_inference_steps=plan.steps, generator=torch.Generator("cpu").manual_seed(seed),
                   output_type="latent", callback_on_step_end=stepper(0), **call).frames
        up = upscale_latents(pipe.vae, low, *plan.full)
        start = renoise(up, float(sigmas[plan.high_steps]), seed + 1)
        pipe.scheduler = window_scheduler(base_scheduler, Window(plan.high_steps, plan.steps, to_zero=False))
        first, last = images(*plan.full)
        out = pipe(image=first, last_image=last, width=plan.full[0], height=plan.full[1], num_frames=frames,
                   num_inference_steps=plan.steps, latents=start, output_type="pt",
                   callback_on_step_end=stepper(plan.high_steps), **call)
    finally:
        pipe.scheduler = base_scheduler
        pipe.register_to_config(boundary_ratio=old_boundary)
    return out.frames
