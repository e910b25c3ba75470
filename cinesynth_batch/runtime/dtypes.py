"""Names of torch dtypes, and quieting the libraries' own progress output while models load."""

from __future__ import annotations

from typing import Any

from ..errors import StageError


#: the dtype names a render accepts, and the torch dtype each stands for
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16",
               "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "half": "float16"}


def torch_dtype(dtype: Any):
    """A name of ``DTYPE_NAMES`` (``"float32"``, ``"bf16"``, ...) or a torch dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return getattr(torch, DTYPE_NAMES[str(dtype).lower()])
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
