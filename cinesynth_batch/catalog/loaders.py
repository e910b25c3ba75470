"""Load pipelines and networks from local folders through the real ``from_pretrained`` paths.

Kinds:

* ``"flux2-klein"``: a ``Flux2KleinPipeline`` folder.
* ``"wan-i2v"``: a ``WanImageToVideoPipeline`` folder (Wan2.2 A14B: ``transformer`` + ``transformer_2``).
* ``"rrdbnet-x2"``: a Real-ESRGAN x2 checkpoint file (see ``models/rrdbnet.py``).
* ``"wan-s2v"``: the official Wan2.2-S2V-14B layout (see ``models/s2v/``).
* ``"wan-animate"``: a ``WanAnimatePipeline`` folder (its transformer stays in host RAM: see
  ``runtime/animate.py``).
* ``"qwen3-tts"``: a worker process in its own environment; ``"demucs"``: an HTDemucs package.
* ``"rife"``: a RIFE IFNet ``.safetensors`` file (see ``models/rife.py``).
* ``"grounding-dino"``, ``"sam"``: transformers folders of the text-prompted mask's detector and
  segmenter (see ``preprocess/segment.py``).
* ``"amt"``: an AMT ``.safetensors`` file, any of its variants (see ``models/amt/``).

A ``ShapesSource`` (profile ``shapes``) in place of a path builds the production pipeline of that
kind at full size with seeded random weights on ``device`` (``catalog/shapes/build.py``); what
happens after (LoRAs, placement, swaps) is the same code as for a loaded one.

On CUDA, ``room`` (the device bytes the residency leaves the model) decides where the components
of a pipeline whose stage moves them (``PLACED_KINDS``) are loaded: one that does not fit ``room``
whole gets its text encoder in pinned host RAM from the start (``runtime/placement.py``
``host_at_load``), so the device never holds the text encoder and the transformer together; its
stage brings the encoder to the device only to encode.

A video or lip-sync pipeline that needs more than ``room`` on CUDA streams every transformer
block from pinned RAM in its stage (``runtime/placement.py`` ``stream_at_load``): it is loaded
(or built) in host RAM and never put on the device whole; its stage's offloading pins the blocks
and places the rest.

``split_loader`` loads a model as usual and splits it over ranks (``runtime/sequence_parallel.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import StageError
from ..runtime.dtypes import quiet_libraries, torch_dtype
from ..runtime.placement import component_sizes, host_at_load, place_loaded, stream_at_load, streamed_components
from .shapes import SIZES, ShapesSource

PIPELINE_KINDS = ("flux2-klein", "wan-i2v")
#: Kinds whose text encoder waits in pinned host RAM from the load on when they do not fit ``room``.
PLACED_KINDS = ("flux2-klein",)
KINDS = PIPELINE_KINDS + ("rrdbnet-x2", "wan-s2v", "wan-animate", "qwen3-tts", "demucs", "rife", "amt",
                          "grounding-dino", "sam")


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


def _pipeline_class(kind: str):
    if kind == "flux2-klein":
        from diffusers import Flux2KleinPipeline as cls
    else:
        from diffusers import WanImageToVideoPipeline as cls
    return cls


def load_model(kind: str, path: Path | ShapesSource, device: str = "cpu", dtype: str = "float32",
               room: int | None = None) -> Any:
    """Load the model of ``kind`` from ``path`` and move it to ``device`` (or build a shapes model
    there); ``room``: the device bytes it may take (None: no limit)."""
    if isinstance(path, ShapesSource):
        return _build_shapes(kind, path, device, dtype, room)
    path = Path(path)
    if kind == "qwen3-tts":  # runs in its own environment: the "model" is a worker process
        from ..tts.qwen_client import QwenWorker

        return QwenWorker.start(path, device, dtype)
    if kind == "rrdbnet-x2":
        from ..models.rrdbnet import load_rrdbnet

        return load_rrdbnet(path, device, dtype)
    if kind == "rife":
        from ..models.rife import load_rife

        return load_rife(path, device, dtype)
    if kind == "amt":
        from ..models.amt.runner import load_amt

        return load_amt(path, device, dtype)
    if kind == "demucs":
        from ..models.separation import load_demucs

        return load_demucs(path, device)
    if kind in ("grounding-dino", "sam"):
        from ..preprocess.segment import load_grounding_dino, load_sam

        quiet_libraries()
        return (load_grounding_dino if kind == "grounding-dino" else load_sam)(path, device, dtype)
    if kind == "wan-animate":
        quiet_libraries()
        return load_animate_pipeline(path, device, dtype)
    if kind == "wan-s2v":
        from ..models.s2v.pipeline import WanS2VPipeline

        quiet_libraries()
        pipe = WanS2VPipeline.from_folder(path, device=device, dtype=torch_dtype(dtype), place=False)
        return _placed(kind, pipe, device, room)
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
    return _placed(kind, pipe, device, room)


def _placed(kind: str, pipe: Any, device: str, room: int | None) -> Any:
    """A pipeline loaded in host RAM, placed for its stage (``load_placement``)."""
    stay, on_host = load_placement(kind, component_sizes(pipe), device, room)
    return place_loaded(pipe, device, on_host, stay=stay)


def load_placement(kind: str, sizes: dict[str, int], device: str,
                   room: int | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(components left in host RAM for the stage to stream, components loaded into pinned host
    RAM) of a ``kind`` pipeline of these ``sizes``: a pipeline that streams (``stream_at_load``),
    else the text encoder of one over its room (``host_at``); the rest goes to ``device``."""
    if stream_at_load(kind, sizes, room, cuda=str(device).startswith("cuda")):
        return streamed_components(kind, list(sizes))
    return (), host_at(kind, sizes, device, room)


def host_at(kind: str, sizes: dict[str, int], device: str, room: int | None) -> tuple[str, ...]:
    """The components of a ``kind`` pipeline of these ``sizes`` loaded into pinned host RAM."""
    if kind not in PLACED_KINDS:
        return ()
    return host_at_load(sizes, room, cuda=str(device).startswith("cuda"))


def _build_shapes(kind: str, source: ShapesSource, device: str, dtype: str, room: int | None = None) -> Any:
    from .shapes.build import build_shapes

    if source.kind != kind:
        raise StageError(f"shapes model {source.name!r} is of kind {source.kind!r}, not {kind!r}")
    stay, on_host = load_placement(kind, {c.name: c.nbytes(dtype) for c in SIZES[source.name]}, device, room)
    model = build_shapes(source.name, device, dtype, host=stay + on_host)
    return place_loaded(model, device, on_host, stay=stay) if stay or on_host else model


def load_animate_pipeline(path: Path, device: str = "cpu", dtype: str = "float32") -> Any:
    """Load a ``WanAnimatePipeline`` folder. The transformer keeps its loaded weights in host RAM
    (its rest copy); the other components move to ``device``."""
    import torch

    from ..runtime.animate import DEVICE_ATTR

    path = Path(path)
    td = torch_dtype(dtype)
    _check_pipeline_folder("wan-animate", path)
    quiet_libraries()
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel
    try:
        pipe = WanAnimatePipeline.from_pretrained(str(path), dtype=td, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise StageError(
            f"cannot load 'wan-animate' pipeline from {path}: {type(exc).__name__}: {exc}",
            hint="use a WanAnimatePipeline folder (Wan-AI/Wan2.2-Animate-14B-Diffusers layout) with every "
            "component listed in model_index.json",
        ) from exc
    if not isinstance(getattr(pipe, "transformer", None), WanAnimateTransformer3DModel):
        raise StageError(f"{path} is not a Wan2.2-Animate folder: "
                         "its transformer is not a WanAnimateTransformer3DModel")
    pipe.set_progress_bar_config(disable=True)
    dev = torch.device(device)
    for name in ("text_encoder", "image_encoder", "vae"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.to(dev)
    setattr(pipe, DEVICE_ATTR, str(dev))
    return pipe


def split_loader(mesh: Any, degree: int) -> Callable[..., Any]:
    """A residency loader that loads a model as usual, then splits it ``degree`` ways."""
    from ..runtime.sequence_parallel import enable_split

    def load(kind: str, path: Path, device: str, dtype: str, room: int | None = None) -> Any:
        return enable_split(load_model(kind, path, device, dtype, room), mesh, degree, kind)

    return load
