"""Load pipelines and networks from local folders through the real ``from_pretrained`` paths.

Kinds:

* ``"flux2-klein"``: a ``Flux2KleinPipeline`` folder.
* ``"wan-i2v"``: a ``WanImageToVideoPipeline`` folder (Wan2.2 A14B: ``transformer`` + ``transformer_2``).
* ``"rrdbnet-x2"``: a Real-ESRGAN x2 checkpoint file (see ``models/rrdbnet.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..errors import StageError

PIPELINE_KINDS = ("flux2-klein", "wan-i2v")
KINDS = PIPELINE_KINDS + ("rrdbnet-x2", "wan-s2v", "wan-animate", "qwen3-tts", "demucs")


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


def _check_pipeline_folder(kind: str, path: Path) -> None:
    if not path.exists():
        raise StageError(
            f"model folder for {kind!r} not found: {path}",
            hint="point the profile at a local diffusers folder (one holding model_index.json), "
            "or build the tiny models with `cinesynth models build-tiny`",
        )
    if not path.is_dir() or not (path / "model_index.json").is_file():
        raise StageError(
            f"{path} is not a diffusers pipeline folder (no model_index.json)",
            hint=f"a {kind!r} model must be a folder written by save_pretrained / downloaded with "
            "`huggingface-cli download <repo> --local-dir <folder>`",
        )


def quiet_libraries() -> None:
    """The renderer shows its own progress: no loading/saving bars from the libraries, and no
    notice that torchvision is absent (its PIL image processors are used on purpose)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


def _pipeline_class(kind: str):
    if kind == "flux2-klein":
        from diffusers import Flux2KleinPipeline as cls
    else:
        from diffusers import WanImageToVideoPipeline as cls
    return cls


def load_model(kind: str, path: Path, device: str = "cpu", dtype: str = "float32") -> Any:
    """Load the model of ``kind`` from ``path`` and move it to ``device``."""
    path = Path(path)
    if kind == "qwen3-tts":  # runs in its own environment: the "model" is a worker process
        from ..tts.qwen_client import QwenWorker

        return QwenWorker.start(path, device, dtype)
    if kind == "rrdbnet-x2":
        from .rrdbnet import load_rrdbnet

        return load_rrdbnet(path, device, dtype)
    if kind == "demucs":
        from .separation import load_demucs

        return load_demucs(path, device)
    if kind == "wan-animate":
        from .animate import load_animate_pipeline

        quiet_libraries()
        return load_animate_pipeline(path, device, dtype)
    if kind == "wan-s2v":
        from .s2v.pipeline import WanS2VPipeline

        quiet_libraries()
        return WanS2VPipeline.from_folder(path, device=device, dtype=torch_dtype(dtype))
    if kind not in PIPELINE_KINDS:
        raise StageError(f"unknown model kind {kind!r}", hint=f"known kinds: {', '.join(KINDS)}")
    td = torch_dtype(dtype)
    _check_pipeline_folder(kind, path)
    quiet_libraries()
    try:
        cls = _pipeline_class(kind)
        pipe = cls.from_pretrained(str(path), dtype=td, local_files_only=True)
    except StageError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise StageError(
            f"cannot load {kind!r} pipeline from {path}: {type(exc).__name__}: {exc}",
            hint="check that the folder is complete (every component folder listed in model_index.json)",
        ) from exc
    if kind == "wan-i2v" and (getattr(pipe, "transformer", None) is None or getattr(pipe, "transformer_2", None) is None):
        raise StageError(
            f"{path} is not a Wan2.2 A14B I2V folder: it needs both transformer and transformer_2",
            hint="use Wan2.2-I2V-A14B-Diffusers (two experts)",
        )
    pipe.set_progress_bar_config(disable=True)
    return move_model(pipe, device)


def _modules(obj: Any) -> Iterator[Any]:
    import torch

    if isinstance(obj, torch.nn.Module):
        yield obj
        return
    components = getattr(obj, "components", None)
    if isinstance(components, dict):
        for value in components.values():
            if isinstance(value, torch.nn.Module):
                yield value
        return
    for attr in ("net", "model", "module"):
        value = getattr(obj, attr, None)
        if isinstance(value, torch.nn.Module):
            yield value
            return


def model_nbytes(obj: Any) -> int:
    """Bytes held by the parameters and buffers of every torch module of ``obj`` (counted once)."""
    seen: set[int] = set()
    total = 0
    for module in _modules(obj):
        for t in list(module.parameters()) + list(module.buffers()):
            key = t.data_ptr() if t.device.type != "meta" else id(t)
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def move_model(obj: Any, device: str) -> Any:
    """Move a pipeline, module or wrapper to ``device``; returns the object."""
    import torch

    if isinstance(obj, torch.nn.Module) or hasattr(obj, "components"):
        moved = obj.to(device)
        return obj if moved is None else moved
    if hasattr(obj, "to"):
        moved = obj.to(device)
        return obj if moved is None else moved
    for module in _modules(obj):
        module.to(device)
    return obj


_HOST_COPY_ATTR = "_cinesynth_host_copy"


def swap_model(obj: Any, where: str) -> None:
    """Move ``obj``'s modules to pinned host RAM (``"host"``) or to a device, at copy speed."""
    from .swap import HostCopy

    copy = getattr(obj, _HOST_COPY_ATTR, None)
    if copy is None:
        copy = HostCopy(list(_modules(obj)))
        setattr(obj, _HOST_COPY_ATTR, copy)
    if where == "host":
        copy.to_host()
    else:
        copy.to_device(where)
