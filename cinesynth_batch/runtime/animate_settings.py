"""The Animate transformer's runtime settings, and what this machine can honour of them.

``RuntimeSettings`` are a run's ``precision``, ``quantize``, ``attention``, ``block_swap`` and
``rms_norm`` (their meaning: ``runtime/animate.py``). ``resolve_runtime`` decides which of them
run here and which fall back, and why. A render keys each Animate stage on that decision
(``stages/animate.py`` ``effective_params``), so deciding it for a CPU imports no torch: a plan,
or a render whose stages are all cached, stays light.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import FallbackWarning
from ..spec.params import AnimateRuntimeParams, check
from ..spec.rules import PRESCALED_FP8
from .attention import usable

SCALED_FP8 = PRESCALED_FP8


class AnimateFallbackWarning(FallbackWarning):
    """A requested Animate runtime setting cannot be used here; a stated alternative is used."""


@dataclass(frozen=True)
class RuntimeSettings:
    precision: str = "bf16"
    quantize: str | None = None
    attention: str = "sdpa"
    block_swap: int = 0
    rms_norm: str = "pytorch"

    def __post_init__(self) -> None:
        """The stage params' own rules (``spec/params.py``'s ``AnimateRuntimeParams``)."""
        check(AnimateRuntimeParams, asdict(self), "animate")

    @property
    def dtype(self):
        """The torch dtype the working copy computes in."""
        from .dtypes import torch_dtype

        return torch_dtype(self.precision)

    @property
    def fp8(self) -> bool:
        """Whether the working copy stores its large layers in fp8."""
        return self.quantize == "fp8_e4m3fn"


@dataclass
class Fallback:
    setting: str
    requested: Any
    used: Any
    reason: str


def resolve_runtime(requested: RuntimeSettings, device: str, num_blocks: int | None = None,
                    warn: bool = True) -> tuple[RuntimeSettings, list[Fallback]]:
    """What this machine can honour of ``requested``: the settings to use and the fallbacks taken.
    Each fallback is warned once (``AnimateFallbackWarning``) when ``warn``."""
    cuda = str(device).startswith("cuda")
    fallbacks: list[Fallback] = []
    quantize = requested.quantize
    reasons = []
    if quantize == SCALED_FP8:
        reasons.append("fp8_e4m3fn_scaled needs pre-scaled fp8 weights, which the bf16 model does not have")
        quantize = "fp8_e4m3fn"
    if reasons:
        used = quantize if quantize else f"{requested.precision} (no quantization)"
        fallbacks.append(Fallback("quantize", requested.quantize, quantize, "; ".join(reasons) + f"; using {used}"))

    attention = requested.attention
    if attention != "sdpa":
        reason = ""
        if not cuda:
            reason = f"{attention} runs on CUDA devices only, this run is on {device}"
        elif requested.precision == "fp32":
            reason = f"{attention} needs bf16 or fp16 compute, precision is fp32"
        else:
            ok, why = usable(attention, device, requested.dtype)
            reason = "" if ok else why
        if reason:
            exact = _fastest_exact(device, requested.dtype) if cuda else "sdpa"
            fallbacks.append(Fallback("attention", attention, exact,
                                      reason + f"; using {exact} ({EXACT_LABELS[exact]})"))
            attention = exact

    swap = requested.block_swap
    if swap and not cuda:
        fallbacks.append(Fallback("block_swap", swap, 0, f"block swap streams blocks from RAM to a CUDA device; "
                                  f"on {device} every block is in RAM already; using no swap"))
        swap = 0
    elif swap and num_blocks is not None and swap > num_blocks:
        fallbacks.append(Fallback("block_swap", swap, num_blocks,
                                  f"the transformer has {num_blocks} blocks; swapping all {num_blocks}"))
        swap = num_blocks

    resolved = replace(requested, quantize=quantize, attention=attention, block_swap=swap)
    if warn:
        for fb in fallbacks:
            warnings.warn(f"animate: {fb.setting}={fb.requested!r} cannot be used: {fb.reason}",
                          AnimateFallbackWarning, stacklevel=3)
    return resolved, fallbacks


EXACT_LABELS = {"fa3": "FlashAttention-3", "fa4": "FlashAttention-4", "cudnn": "cuDNN attention",
                "sdpa": "torch SDPA"}


def _fastest_exact(device: str, dtype: Any) -> str:
    """The fastest exact attention kernel ``device`` runs (the video stages' ``auto`` order)."""
    for name in ("fa3", "fa4", "cudnn"):
        if usable(name, device, dtype)[0]:
            return name
    return "sdpa"
