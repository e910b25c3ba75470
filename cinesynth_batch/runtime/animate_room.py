"""How many Wan2.2-Animate blocks must stream for one window to fit the device room it is given.

A device budget (``--vram-budget``) counts the models' weights. The Animate working copy
(``runtime/animate.py``) also needs room for one window's work: its latents and conditioning and
the transformer's activations, which grow with the window's latent tokens. On the H100 at
720x1280 with a 77-frame window (75,600 tokens), five LoRAs fused, the transformer's forward
peaked at 24.25 GiB with 24 of the 40 blocks streamed, of which 8.7 GiB were the weights on the
device (16 fp8 blocks, the working copy outside the blocks, the VAE, the image encoder) and
0.75 GiB the two fp8 blocks in flight (docs/performance.md): 14.8 GiB of work, 41 bytes per
token per channel of the model's width (37 in an earlier run with every block streamed). The
estimate takes 48, so that the window fits with room to spare for the allocator. The VAE decode
peaked lower.

``block_swap_for_room`` keeps the spec's ``block_swap`` when the estimate fits the room and
streams more blocks when it does not (block swap changes where the weights wait, not the
output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .animate_settings import RuntimeSettings
from .memory import IN_FLIGHT, fp8_targets

#: Device bytes a window's work takes per latent token and per channel of the model's width.
WORK_BYTES_PER_TOKEN_CHANNEL = 48
LATENT_STRIDE = (4, 16, 16)    # frames, height, width per latent token (Wan VAE 4x8x8, patch 1x2x2)


@dataclass(frozen=True)
class BlockSwapChoice:
    asked: int
    chosen: int
    room: int            # device bytes the pipeline may use
    need: int            # the estimate with ``chosen`` blocks streamed
    fits: bool

    def facts(self) -> dict[str, Any]:
        return {"asked": self.asked, "chosen": self.chosen, "room_bytes": self.room, "need_bytes": self.need,
                "fits": self.fits}


def window_tokens(height: int, width: int, frames: int) -> int:
    """Latent tokens of one window of ``frames`` frames, with the reference image's frame."""
    t, h, w = LATENT_STRIDE
    return ((frames - 1) // t + 2) * (height // h) * (width // w)


def work_bytes(transformer: Any, height: int, width: int, frames: int) -> int:
    config = transformer.config
    channels = int(config.num_attention_heads) * int(config.attention_head_dim)
    return window_tokens(height, width, frames) * channels * WORK_BYTES_PER_TOKEN_CHANNEL


def _working_bytes(module: Any, fp8_layers: set[int], compute_bytes: int) -> int:
    """Bytes of ``module``'s working copy: fp8 layers one byte a weight, the rest in the run dtype."""
    total = 0
    for sub in module.modules():
        per = 1 if id(sub) in fp8_layers else compute_bytes
        for store in (sub._parameters, sub._buffers):
            for tensor in store.values():
                if tensor is not None and tensor.is_floating_point():
                    total += tensor.numel() * per
    return total


def _on_device_bytes(pipe: Any, skip: tuple[str, ...]) -> int:
    """Bytes of the pipeline's other components that sit on an accelerator now."""
    total = 0
    for name, component in getattr(pipe, "components", {}).items():
        if name in skip or not hasattr(component, "parameters"):
            continue
        total += sum(t.numel() * t.element_size() for t in component.parameters() if t.device.type != "cpu")
    return total


def block_swap_for_room(pipe: Any, settings: RuntimeSettings, room: int, height: int, width: int,
                        frames: int) -> BlockSwapChoice:
    """The fewest streamed blocks, at least ``settings.block_swap``, for which the working copy
    placed with ``settings`` (as ``resolve_runtime`` resolved them), the other components on the
    device and one window's work fit ``room`` bytes (all blocks when none do)."""
    transformer = pipe.transformer
    blocks = list(transformer.blocks)
    compute_bytes = settings.dtype.itemsize
    layers = {id(layer) for _, layer in fp8_targets(transformer)} if settings.fp8 else set()
    per_block = [_working_bytes(block, layers, compute_bytes) for block in blocks]
    outside = _working_bytes(transformer, layers, compute_bytes) - sum(per_block)
    fixed = outside + _on_device_bytes(pipe, ("transformer",)) + work_bytes(transformer, height, width, frames)

    def need(swap: int) -> int:
        in_flight = IN_FLIGHT * max(per_block, default=0) if swap else 0
        return fixed + in_flight + sum(per_block[swap:])       # blocks[:swap] stream

    asked = min(max(settings.block_swap, 0), len(blocks))
    chosen = next((swap for swap in range(asked, len(blocks) + 1) if need(swap) <= room), len(blocks))
    return BlockSwapChoice(asked, chosen, room, need(chosen), need(chosen) <= room)
