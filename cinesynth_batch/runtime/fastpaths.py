"""What this GPU can run fast, and why not where it cannot: one line for the first lines of a render.

``survey(device)`` asks the same questions the stages ask when they pick a kernel (attention
kernels through ``runtime/attention.py``, compile and fp8 through ``runtime/accel.py``) for bf16
compute, so what it reports is what the stages will do with ``attention: auto``, ``compile: auto``
and ``quantize`` set. Off CUDA there are no fast paths to report (``{}``).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

#: ``{path: distribution whose version is shown}``, in the order of the line.
PATHS = {"fa3": "fa3-fwd", "fa4": "flash-attn-4", "cudnn": None, "sageattn": "sageattention",
         "compile": "triton", "fp8": "torchao", "fp8_e4m3fn": None}


def _version(dist: str | None) -> str | None:
    if dist is None:
        return None
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def survey(device: str) -> dict[str, Any]:
    """``{"device", "gpu", "paths": {name: {"found", "why", "version"}}}`` for a CUDA device."""
    import torch

    from . import accel
    from .attention import usable

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return {}
    paths: dict[str, dict[str, Any]] = {}
    for name, dist in PATHS.items():
        if name in ("fa3", "fa4", "cudnn", "sageattn"):
            try:
                ok, why = usable(name, device, torch.bfloat16, head_dim=128)
            except Exception as exc:  # noqa: BLE001 - a broken wheel is a reason, not a crash
                ok, why = False, f"{type(exc).__name__}: {exc}"
        elif name == "compile":
            ok, why = accel.triton_ok()
        elif name == "fp8":
            ok, why = accel.fp8_ok(device)
        else:
            ok, why = accel.fp8_storage_ok()
        paths[name] = {"found": ok, "why": why, "version": _version(dist) if ok else None}
    return {"device": str(device), "gpu": torch.cuda.get_device_name(torch.device(device)), "paths": paths}


def line(found: dict[str, Any]) -> str:
    """``fast paths on cuda (NVIDIA H100 80GB HBM3): fa3 0.0.3, cudnn, ...; not found: fa4 (why)``."""
    if not found:
        return ""
    have = [f"{n} {p['version']}" if p["version"] else n for n, p in found["paths"].items() if p["found"]]
    miss = [f"{n} ({p['why']})" for n, p in found["paths"].items() if not p["found"]]
    text = f"fast paths on {found['device']} ({found['gpu']}): {', '.join(have) or 'none'}"
    return text + (f"; not found: {'; '.join(miss)}" if miss else "")
