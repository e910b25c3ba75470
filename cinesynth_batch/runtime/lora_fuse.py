"""LoRAs fused into a pipeline's weights, for the runs that can take them that way.

An unfused LoRA computes beside every projection it adapts at every step (two small matmuls and
an add per adapter and layer: about 8 % of a Wan2.2 A14B step with two LoRAs). Fused, the
adapters' weighted products are added into the projections' weights once (diffusers'
``fuse_lora``, PEFT's merge) and a step costs what it costs without LoRAs.

Fusing changes the weights, and subtracting the products again would not give the original bits
back (bf16 rounding). So a fused pipeline is a state of the model: the pipeline carries which
adapters and weights it holds fused (``fused_loras``), and a run that asks for anything else —
other LoRAs, other weights, none, or an unfused run — gets a fresh copy of the model first
(``Residency.reload``): its output is then exactly what a fresh process computes. A batch
whose clips share one LoRA set fuses once; the planner's model grouping keeps such clips
together.

``lora_fuse`` (a stage parameter, not keyed, like ``compile``): ``auto`` fuses on CUDA when the
transformers are resident and unquantized (streamed blocks and fp8 weights are left unfused),
``on`` fuses wherever that holds (the CPU included), ``off`` never fuses.
"""

from __future__ import annotations

from typing import Any, Mapping

FUSED_ATTR = "_cinesynth_fused_loras"
MODES = ("auto", "on", "off")


def fused_loras(pipe: Any) -> dict[str, float] | None:
    """``{adapter: weight}`` fused into ``pipe``'s weights, or None when nothing was fused."""
    state = getattr(pipe, FUSED_ATTR, None)
    return dict(state) if state else None


def can_fuse(mode: str, device: str, speed: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether this run fuses its LoRAs, and why (``speed``: the pipeline's speed report)."""
    if mode == "off":
        return False, "lora_fuse: off"
    if mode == "auto" and not str(device).startswith("cuda"):
        return False, "auto fuses on CUDA only"
    if speed.get("offload"):
        return False, "the transformers' blocks stream from host RAM"
    for name in ("transformer", "transformer_2"):
        report = speed.get(name) or {}
        if report.get("offloaded_blocks") or report.get("block_swap"):
            return False, f"{name} streams some of its blocks from host RAM (block_swap)"
        if report.get("quantize"):
            return False, f"{name} runs {report['quantize']} weights"
    return True, "resident unquantized transformers"


def needs_fresh(pipe: Any, wanted: Mapping[str, float], fuse: bool) -> bool:
    """True when ``pipe`` holds fused LoRAs other than the ``wanted`` ones this run fuses
    (or holds any, for a run that does not fuse)."""
    state = fused_loras(pipe)
    if state is None:
        return False
    return not fuse or state != dict(wanted)


def fuse(pipe: Any, active: Mapping[str, float], components: tuple[str, ...]) -> bool:
    """Fuse the ``active`` adapters (already loaded and weighted by ``apply_loras``) into the
    ``components`` that hold them. Returns True when weights changed now (False: already fused
    or nothing to fuse)."""
    if fused_loras(pipe) == dict(active) or not active:
        return False
    names = list(active)
    pipe.fuse_lora(components=list(components), lora_scale=1.0, adapter_names=names)
    setattr(pipe, FUSED_ATTR, dict(active))
    return True
