"""Names of torch dtypes, and quieting the libraries' own progress output while models load."""

from __future__ import annotations

from typing import Any

from ..errors import StageError


def torch_dtype(dtype: Any):
    """``"float32"``/``"fp32"``/``"bfloat16"``/``"bf16"``/``"float16"``/``"fp16"`` or a torch dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
    }
    try:
        return names[str(dtype).lower()]
    except KeyError:
        raise StageError(
            f"unknown dtype {dtype!r}",
            hint="use one of: float32, bfloat16, float16",
        ) from None


def quiet_libraries() -> None:
    """The renderer shows its own progress: no loading/saving bars from the libraries, and no
    notice that torchvision is absent (its PIL image processors are used on purpose)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
