"""Demucs (HTDemucs) for vocal separation, loaded from safetensors: no pickle.

A model folder holds a bag definition ``<name>.yaml`` (``models: [sig, ...]``, optional
``weights`` and ``segment``) and one ``<sig>.safetensors`` per model, whose metadata names
the model class and its init arguments (JSON): the layout of the ``adefossez/HTDemucs``
repository that demucs 4.1 reads. Only demucs' own model classes are accepted, and
quantized (diffq) states are refused.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from ..errors import StageError

MODEL_CLASSES = ("demucs.htdemucs.HTDemucs", "demucs.hdemucs.HDemucs", "demucs.demucs.Demucs")
DEFAULT_BAG = "htdemucs"


def encode_args(value: Any) -> Any:
    """Init arguments as JSON (fractions as demucs' export writes them)."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        return {k: encode_args(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_args(v) for v in value]
    return value


def save_demucs(model: Any, folder: Path, sig: str, bag: str = DEFAULT_BAG) -> None:
    """Write ``model`` (a demucs model made with its ``capture_init`` arguments) as a bag of one."""
    from safetensors.torch import save_file

    args, kwargs = model._init_args_kwargs
    klass = f"{type(model).__module__}.{type(model).__name__}"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{sig}.safetensors"
    save_file(state, str(file), metadata={"klass": klass, "args": json.dumps(encode_args(list(args))),
                                          "kwargs": json.dumps(encode_args(kwargs), sort_keys=True)})
    _sort_header(file)
    (folder / f"{bag}.yaml").write_text(yaml.safe_dump({"models": [sig]}, sort_keys=True))


def _sort_header(file: Path) -> None:
    """Rewrite a safetensors header with sorted keys: the writer orders metadata entries
    differently from run to run, and the tiny build must give the same bytes every time."""
    import struct

    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    file.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n:])


def _bag_file(folder: Path) -> Path:
    preferred = folder / f"{DEFAULT_BAG}.yaml"
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*.yaml"))
    if len(found) != 1:
        raise StageError(f"separate: {folder} holds {len(found)} bag files (.yaml), expected one",
                         hint="a demucs folder holds htdemucs.yaml and its .safetensors files "
                              "(huggingface.co/adefossez/HTDemucs)")
    return found[0]


def load_demucs(path: Path, device: str = "cpu") -> Any:
    """A ``BagOfModels`` in eval mode on ``device`` (float32)."""
    from demucs.apply import BagOfModels
    from demucs.hf import load_safetensors_model
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():
        raise StageError(f"separate: model folder {folder} not found",
                         hint="download huggingface.co/adefossez/HTDemucs into it")
    bag_file = _bag_file(folder)
    bag = yaml.safe_load(bag_file.read_text()) or {}
    sigs = bag.get("models") or []
    if not sigs:
        raise StageError(f"separate: {bag_file} lists no models")
    models = []
    for sig in sigs:
        file = folder / f"{sig}.safetensors"
        if not file.is_file():
            legacy = " (legacy .th pickles are not read)" if (folder / f"{sig}.th").exists() else ""
            raise StageError(f"separate: {file.name} missing in {folder}{legacy}",
                             hint="use the safetensors files of huggingface.co/adefossez/HTDemucs")
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("klass") not in MODEL_CLASSES or "structure" in meta:
            raise StageError(f"separate: {file.name} is not a plain demucs model "
                             f"(class {meta.get('klass')!r}{', quantized' if 'structure' in meta else ''})")
        models.append(load_safetensors_model(file))
    model = BagOfModels(models, bag.get("weights"), bag.get("segment"))
    return model.eval().to(device)
