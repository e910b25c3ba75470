"""What ``--device auto`` means on this machine, asking torch only where a GPU can be reached.

Importing torch (and initialising CUDA) takes seconds; a plan, or a render whose stages are all
cached, still has to know the device, because a stage's key names what its settings run as there
(``stages/effective.py``). Where no GPU device node exists, torch could not find a GPU either.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: what ``--device`` accepts
DEVICE_FORM = re.compile(r"auto|cpu|cuda(:\d+)?")

#: device nodes through which torch reaches a GPU: NVIDIA's driver, ROCm's (torch.cuda on AMD), WSL's
GPU_NODES = ("nvidiactl", "kfd", "dxg")


def gpu_reachable(dev: str | Path = "/dev") -> bool:
    """False where torch cannot find a GPU: macOS, or Linux without any of ``GPU_NODES`` under
    ``dev``. True elsewhere (then torch decides)."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        root = Path(dev)
        return any((root / node).exists() for node in GPU_NODES) or any(root.glob("nvidia[0-9]*"))
    return True


def auto_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    if not gpu_reachable():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_problem(device: str) -> str | None:
    """Why the CUDA device ``device`` (``cuda`` or ``cuda:N``) cannot be used here, or None."""
    import torch

    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "torch finds no CUDA device"
        return f"--device {device}: {why} (torch {torch.__version__})"
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    count = torch.cuda.device_count()
    if index >= count:
        return f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    return None
