"""Attention kernels for the Wan transformers, chosen per model through diffusers' dispatcher.

Names a spec or profile may use (``attention:``):

``auto``     the fastest exact kernel this machine has: ``fa3``, else ``fa4``, else ``cudnn`` on CUDA;
             ``sdpa`` elsewhere.
``sdpa``     diffusers ``native``: torch SDPA, which picks its own kernel.
``cudnn``    diffusers ``_native_cudnn``: torch SDPA restricted to cuDNN's fused attention.
``fa3``      FlashAttention-3 (Hopper) through diffusers ``_flash_3``. It needs a module named
             ``flash_attn_interface`` (the upstream ``hopper/`` build) or the forward-only
             ``fa3_fwd`` wheel (``fa3_fwd_interface``), which is handed to diffusers' backend.
``fa4``      FlashAttention-4 (Hopper and Blackwell; the ``flash-attn-4`` wheel, ``flash_attn.cute``)
             through diffusers ``flash_4_hub``, whose kernel is set to the installed wheel wrapped
             as a torch operator (``runtime/fa4.py``); nothing is downloaded.
``flash``    diffusers ``flash`` (flash-attn 2).
``sageattn`` diffusers ``sage`` (SageAttention, 8-bit Q·K: lossy).

Exact kernels (``sdpa``, ``cudnn``, ``fa3``, ``fa4``, ``flash``) agree to bf16 rounding; ``sageattn`` does
not and is never picked by ``auto``. ``resolve_attention`` says which kernel runs and, when the
requested one cannot, why; ``set_attention`` sets it on one model's attention processors only
(diffusers' process-wide active backend is untouched).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, get_args

from ..spec.rules import WanAttention

BACKENDS = {"sdpa": "native", "cudnn": "_native_cudnn", "fa3": "_flash_3", "fa4": "flash_4_hub", "flash": "flash",
            "sageattn": "sage"}
NAMES = get_args(WanAttention)           # "auto" and every kernel of BACKENDS
LOSSY = frozenset({"sageattn"})
_FA3_MODULES = ("flash_attn_interface", "fa3_fwd_interface")


@dataclass(frozen=True)
class AttentionChoice:
    requested: str
    used: str
    reason: str = ""          # why ``used`` differs from ``requested`` ("" when it does not)

    @property
    def backend(self) -> str:
        return BACKENDS[self.used]


def _cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def _capability_major(device: str) -> int:
    import torch

    return torch.cuda.get_device_capability(torch.device(device))[0]


def fa3_module() -> Any | None:
    """The installed FlashAttention-3 interface module, or None."""
    for name in _FA3_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def ensure_fa3_backend() -> tuple[bool, str]:
    """Make diffusers' ``_flash_3`` backend usable with whichever FA3 build is installed."""
    from diffusers.models import attention_dispatch as ad

    if getattr(ad, "_CAN_USE_FLASH_ATTN_3", False):
        return True, ""
    module = fa3_module()
    if module is None:
        return False, ("FlashAttention-3 is not installed (neither flash_attn_interface nor the "
                       "fa3_fwd wheel's fa3_fwd_interface imports)")
    ad.flash_attn_3_func = module.flash_attn_func
    ad.flash_attn_3_varlen_func = getattr(module, "flash_attn_varlen_func", None)
    ad._CAN_USE_FLASH_ATTN_3 = True
    return True, ""


def ensure_fa4_backend() -> tuple[bool, str]:
    """Make diffusers' ``flash_4_hub`` backend run the installed flash-attn-4 wheel."""
    try:
        import flash_attn.cute  # noqa: F401
    except ImportError as exc:
        return False, f"FlashAttention-4 (the flash-attn-4 wheel, flash_attn.cute) does not import: {exc}"
    from diffusers.models import attention_dispatch as ad

    from .fa4 import fa4_attention

    ad._HUB_KERNELS_REGISTRY[ad.AttentionBackendName.FLASH_4_HUB].kernel_fn = fa4_attention
    return True, ""


def ensure_backend(name: str) -> None:
    """Make kernel ``name`` callable through diffusers' dispatcher (FA3 and FA4 come from wheels
    diffusers does not look for); raises RuntimeError saying why it cannot."""
    ensure = {"fa3": ensure_fa3_backend, "fa4": ensure_fa4_backend}.get(name)
    if ensure is not None:
        ok, why = ensure()
        if not ok:
            raise RuntimeError(why)


def usable(name: str, device: str, dtype: Any, head_dim: int | None = None) -> tuple[bool, str]:
    """Whether kernel ``name`` runs here, and if not, why (on a CPU, without importing torch)."""
    if name == "sdpa":
        return True, ""
    if head_dim is not None and name in ("cudnn", "fa3", "fa4", "flash") and (head_dim % 8 or head_dim > 256):
        return False, f"{name} needs a head size that is a multiple of 8 and at most 256, this model's is {head_dim}"
    if not _cuda(device):
        return False, f"{name} runs on CUDA devices only, this run is on {device}"
    import torch

    if dtype not in (torch.bfloat16, torch.float16):
        return False, f"{name} needs bf16 or fp16 compute, the model computes in {dtype}"
    if name == "cudnn":
        return (True, "") if torch.backends.cudnn.is_available() else (False, "cuDNN is not available")
    if name == "fa3":
        if _capability_major(device) != 9:
            return False, "FlashAttention-3 runs on Hopper GPUs (compute capability 9.x) only"
        return ensure_fa3_backend()
    if name == "fa4":
        if _capability_major(device) < 9:
            return False, "FlashAttention-4 runs on Hopper and Blackwell GPUs (compute capability 9.x and up) only"
        return ensure_fa4_backend()
    from diffusers.models import attention_dispatch as ad

    flag, package = {"flash": ("_CAN_USE_FLASH_ATTN", "flash-attn"),
                     "sageattn": ("_CAN_USE_SAGE_ATTN", "sageattention")}[name]
    if getattr(ad, flag, False):
        return True, ""
    return False, f"the {package} package (at the version diffusers needs) is not installed"


def resolve_attention(requested: str, device: str, dtype: Any, head_dim: int | None = None) -> AttentionChoice:
    """The kernel that runs for ``requested`` on ``device`` with ``dtype`` compute (and heads of
    ``head_dim``, when known)."""
    if requested not in NAMES:
        raise ValueError(f"attention must be one of {', '.join(NAMES)}, got {requested!r}")
    if requested == "auto":
        for name in ("fa3", "fa4", "cudnn"):
            if usable(name, device, dtype, head_dim)[0]:
                return AttentionChoice("auto", name)
        return AttentionChoice("auto", "sdpa")
    ok, why = usable(requested, device, dtype, head_dim)
    if ok:
        return AttentionChoice(requested, requested)
    return AttentionChoice(requested, "sdpa", why + "; using sdpa (torch SDPA)")


def set_attention(model: Any, name: str) -> int:
    """Route every attention processor of ``model`` to kernel ``name``; returns how many were set."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    ensure_backend(name)
    backend = AttentionBackendName(BACKENDS[name])
    count = 0
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = backend
            count += 1
    return count
