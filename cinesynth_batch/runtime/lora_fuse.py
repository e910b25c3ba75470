"""LoRAs fused into a pipeline's weights, for the runs that can take them that way.

An unfused LoRA computes beside every projection it adapts at every step (two small matmuls and
an add per adapter and layer: about 8 % of a Wan2.2 A14B step with two LoRAs). Fused, the
adapters' weighted products are added into the projections' weights once (as diffusers'
``fuse_lora`` and PEFT's merge do) and a step costs what it costs without LoRAs.

Each fused weight is rounded to its dtype once: the weight and every adapter's product
(``B @ A`` times its scale) are summed in fp32 and the sum is cast back (``add_into_weights``), where
PEFT's own merge would compute each product in the weights' dtype on a GPU and round after every
adapter it adds. The weight is updated in place, so a pinned host copy of it (``runtime/swap.py``)
sees it changed and takes the fused values when the model leaves the device.

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
    merged: set[str] = set()
    for name in components:
        model = getattr(pipe, name, None)
        if model is not None:
            merged.update(add_into_weights(model, names))
    if hasattr(pipe, "_merged_adapters"):           # what diffusers' own fuse_lora records
        pipe._merged_adapters = set(pipe._merged_adapters) | merged
    setattr(pipe, FUSED_ATTR, dict(active))
    return True


def _plain_linear(module: Any, name: str) -> bool:
    """A vanilla LoRA adapter ``name`` on a linear layer: no variant (DoRA ...) and no LoRA bias."""
    from peft.tuners.lora.layer import Linear

    return (isinstance(module, Linear) and name not in getattr(module, "lora_variant", {})
            and not (getattr(module, "lora_bias", None) or {}).get(name))


def add_into_weights(model: Any, names: list[str]) -> set[str]:
    """Merge the adapters ``names`` into the weights of ``model``'s LoRA layers that hold them (and
    have not merged them yet), so that their forward runs the base layer alone. On a linear layer
    with plain adapters the weight and every adapter's weighted product are summed in fp32 and the
    sum is written back into the weight, rounded once to its dtype; any other layer merges through
    PEFT. Returns the names merged."""
    import torch
    from peft.tuners.lora.layer import LoraLayer
    from peft.utils.other import transpose

    done: set[str] = set()
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            merged = set(module.merged_adapters)
            todo = [n for n in names if n in module.lora_A and n not in merged]
            if not todo:
                continue
            if not all(_plain_linear(module, n) for n in todo):
                module.merge(adapter_names=todo)
                done.update(todo)
                continue
            weight = module.get_base_layer().weight
            total = weight.to(torch.float32, copy=True)
            for n in todo:
                a = module.lora_A[n].weight.to(device=weight.device, dtype=torch.float32)
                b = module.lora_B[n].weight.to(device=weight.device, dtype=torch.float32)
                total += transpose(b @ a, module.fan_in_fan_out) * module.scaling[n]
            weight.copy_(total)                      # in place: one rounding, the version moves on
            module.merged_adapters.extend(todo)
            done.update(todo)
    return done
