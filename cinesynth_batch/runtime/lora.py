"""LoRA adapters on loaded pipelines that stay loaded between stage runs.

A spec names LoRAs with weights: images ``loras: [{name, weight}]`` (one denoiser, ``transformer``),
videos ``loras: [{name, high, low}]`` where ``high`` weights the high-noise expert (``transformer``)
and ``low`` the low-noise expert (``transformer_2``) of Wan2.2 A14B (the "High/Low Noise MoE").

``apply_loras(pipe, requests)`` makes the pipeline use exactly what one run asks for:

* an adapter is loaded into a component the first time a run gives it a non-zero weight there, under
  a name derived from the component, the file's path and its size/mtime; later runs reuse it;
* every requested adapter with a non-zero weight is activated, with its weight, by ONE
  ``pipe.set_adapters`` call (a second call would deactivate the first call's adapters);
* a run that asks for no LoRA (or only zero weights) disables LoRA, which reproduces the base
  pipeline's output exactly.
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import StageError, first_line

HIGH = "transformer"
LOW = "transformer_2"
_PREFIX = {HIGH: "t1", LOW: "t2"}
LORA_SUFFIX = ".safetensors"
DEFAULT_MAX_LOADED = 16


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA file and its weight per denoiser component (``"transformer"``, ``"transformer_2"``)."""

    name: str
    path: Path
    weights: Mapping[str, float] = field(default_factory=dict)


#: the hint of a LoRA file that is not a safetensors file inside
DAMAGED_HINT = "the file is damaged or is not a safetensors file inside: download or convert it again"


def check_lora_file(path: Path, name: str | None = None) -> Path:
    """Refuse anything but an existing ``.safetensors`` file whose header reads (the header only:
    its size is checked against the file's before anything is read from it)."""
    path = Path(path)
    label = f"LoRA {name!r} ({path})" if name else f"LoRA {path}"
    if path.suffix.lower() != LORA_SUFFIX:
        raise StageError(
            f"{label} is not a .safetensors file",
            hint="only safetensors LoRAs are loaded (pickled .pt/.ckpt/.bin files can run code); "
            "convert it with safetensors.torch.save_file",
        )
    if not path.is_file():
        raise StageError(f"{label} not found", hint="check the LoRA name and the LoRA folder of the profile")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except Exception as exc:  # the library's own error type: a damaged or foreign file
        raise StageError(f"{label} cannot be read: {load_failure(exc)}", hint=DAMAGED_HINT) from exc
    return path


def _weight(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StageError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise StageError(f"{what} must be finite, got {value!r}")
    return value


def _resolve(name: Any, family: str, resolver: Callable[[str, str], Path]) -> Path:
    if not isinstance(name, str) or not name:
        raise StageError(f"LoRA name must be a non-empty string, got {name!r}")
    try:
        path = resolver(name, family)
    except StageError:
        raise
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise StageError(
            f"cannot resolve {family} LoRA {name!r}: {exc}",
            hint=f"put the file under the profile's LoRA folder ({family}/<name>.safetensors)",
        ) from exc
    return check_lora_file(Path(path), name)


def _merge(requests: Iterable[LoraRequest]) -> list[LoraRequest]:
    """Merge entries naming the same file (LoRA weights add: s1*BA + s2*BA = (s1+s2)*BA)."""
    merged: dict[Path, LoraRequest] = {}
    for r in requests:
        key = r.path.resolve()
        if key in merged:
            w = dict(merged[key].weights)
            for comp, val in r.weights.items():
                w[comp] = w.get(comp, 0.0) + val
            merged[key] = LoraRequest(merged[key].name, merged[key].path, w)
        else:
            merged[key] = LoraRequest(r.name, r.path, dict(r.weights))
    return list(merged.values())


def single_lora_requests(loras: Sequence[Mapping[str, Any]] | None, resolver: Callable[[str, str], Path],
                         family: str, where: str = "") -> list[LoraRequest]:
    """``[{name, weight}]`` -> requests on a pipeline's one ``transformer`` (LoRA ``family``);
    ``where`` prefixes the error messages (e.g. ``"animate: "``)."""
    out = []
    for i, entry in enumerate(loras or []):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise StageError(f"{where}loras[{i}] must be a mapping with 'name' and 'weight', got {entry!r}")
        weight = _weight(entry.get("weight", 1.0), f"{where}loras[{i}].weight")
        path = _resolve(entry["name"], family, resolver)
        out.append(LoraRequest(entry["name"], path, {HIGH: weight}))
    return _merge(out)


def image_lora_requests(loras: Sequence[Mapping[str, Any]] | None, resolver: Callable[[str, str], Path]) -> list[LoraRequest]:
    """``[{name, weight}]`` -> requests on ``transformer`` (family ``"img"``)."""
    return single_lora_requests(loras, resolver, "img")


def video_lora_requests(loras: Sequence[Mapping[str, Any]] | None, resolver: Callable[[str, str], Path]) -> list[LoraRequest]:
    """``[{name, high, low}]`` -> requests on ``transformer`` (high) and ``transformer_2`` (low), family ``"mov"``."""
    out = []
    for i, entry in enumerate(loras or []):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise StageError(f"loras[{i}] must be a mapping with 'name', 'high' and 'low', got {entry!r}")
        high = _weight(entry.get("high", 1.0), f"loras[{i}].high")
        low = _weight(entry.get("low", 1.0), f"loras[{i}].low")
        path = _resolve(entry["name"], "mov", resolver)
        out.append(LoraRequest(entry["name"], path, {HIGH: high, LOW: low}))
    return _merge(out)


def _path_tag(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]


def _state_tag(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:8]


def adapter_name(path: Path, component: str) -> str:
    """The adapter name of ``path`` in ``component``: stable while the file is unchanged."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).stem)[:32]
    return f"{_PREFIX.get(component, component)}_{stem}_{_path_tag(path)}_{_state_tag(path)}"


def _loaded(pipe: Any) -> dict[str, list[str]]:
    try:
        return {k: list(v) for k, v in pipe.get_list_adapters().items()}
    except (AttributeError, ValueError):
        return {}


_MISMATCH = re.compile(r"size mismatch for (\S+?): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) "
                       r"from checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)")
_ADAPTER_KEY = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")
#: what a load failure that is not a size mismatch keeps of its message
FAILURE_CHARS = 300


def load_failure(exc: BaseException) -> str:
    """A failed LoRA load in one line. A LoRA made for a model of other sizes fails with one line
    per tensor that does not fit (hundreds for a 14B model): those are counted and the first is
    named, with its size in the file and in the model; any other error keeps its first line."""
    text = str(exc)
    found = _MISMATCH.findall(text)
    if found:
        name, theirs, ours = found[0]

        def dims(shape: str) -> str:
            return "x".join(d.strip() for d in shape.split(","))

        key = _ADAPTER_KEY.sub(r".\1", name)
        verb = "does" if len(found) == 1 else "do"
        return (f"{len(found)} of its tensors {verb} not fit the model's layers (the first: "
                f"{key} is {dims(theirs)} in the file, {dims(ours)} in the model)")
    return f"{type(exc).__name__}: {first_line(text, FAILURE_CHARS)}"


@contextmanager
def quiet_load_log():
    """diffusers logs a failed adapter load's whole error before it raises it; the stage reports
    the failure itself, once and in short (``load_failure``)."""
    log = logging.getLogger("diffusers.loaders.peft")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _load_into(pipe: Any, path: Path, component: str, name: str, label: str) -> None:
    if getattr(pipe, component, None) is None:
        raise StageError(f"LoRA {label}: the pipeline has no {component}")
    kwargs = {"load_into_transformer_2": True} if component == LOW else {}
    try:
        with warnings.catch_warnings(), quiet_load_log():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            pipe.load_lora_weights(str(path), adapter_name=name, **kwargs)
    except StageError:
        raise
    except Exception as exc:
        if name in _loaded(pipe).get(component, []):
            pipe.delete_adapters([name])
        raise StageError(
            f"cannot load LoRA {label} into {component}: {load_failure(exc)}",
            hint="check that the LoRA was trained for this model (same architecture and sizes) "
                 "and that the profile is the one it was made for",
        ) from exc
    if name not in _loaded(pipe).get(component, []):
        raise StageError(
            f"LoRA {label} matched no layer of {component}",
            hint="check that the LoRA was trained for this model",
        )


def _evict(pipe: Any, keep: set[str], max_loaded: int) -> None:
    loaded = _loaded(pipe)
    victims: list[str] = []
    for names in loaded.values():
        stale = [n for n in names if n not in keep]
        excess = len(names) - max_loaded
        if excess > 0:
            victims.extend(stale[:excess])
    if victims:
        pipe.delete_adapters(victims)


def _drop_stale_versions(pipe: Any, path: Path, component: str, current: str) -> None:
    prefix = current.rsplit("_", 1)[0] + "_"
    stale = [n for n in _loaded(pipe).get(component, []) if n.startswith(prefix) and n != current]
    if stale:
        pipe.delete_adapters(stale)


def wanted_adapters(requests: Sequence[LoraRequest]) -> dict[str, float]:
    """``{adapter_name: weight}`` that ``apply_loras`` makes active for ``requests``."""
    wanted: dict[str, float] = {}
    for req in requests:
        for component, weight in req.weights.items():
            if weight != 0.0:
                name = adapter_name(req.path, component)
                wanted[name] = wanted.get(name, 0.0) + weight
    return wanted


def apply_loras(pipe: Any, requests: Sequence[LoraRequest], max_loaded: int = DEFAULT_MAX_LOADED) -> dict[str, float]:
    """Make ``pipe`` use exactly ``requests``; returns ``{adapter_name: weight}`` now active."""
    active: dict[str, float] = {}
    for req in requests:
        path = check_lora_file(req.path, req.name)
        for component, weight in req.weights.items():
            if weight == 0.0:
                continue
            name = adapter_name(path, component)
            if name in active:
                active[name] += weight
                continue
            if name not in _loaded(pipe).get(component, []):
                _drop_stale_versions(pipe, path, component, name)
                _load_into(pipe, path, component, name, f"{req.name!r} ({path})")
            active[name] = weight

    if not _loaded(pipe):
        return active
    if not active:
        pipe.disable_lora()
        return active
    pipe.enable_lora()
    names = list(active)
    pipe.set_adapters(names, adapter_weights=[active[n] for n in names])
    _evict(pipe, set(names), max_loaded)
    _restore_offload(pipe)
    return active


def _restore_offload(pipe: Any) -> None:
    """Loading and deleting adapters makes diffusers re-offload a block-offloaded transformer its
    own way; put the renderer's layout (``runtime/memory.py``) back."""
    from .memory import restore_offload

    for name in ("transformer", "transformer_2"):
        model = getattr(pipe, name, None)
        if model is not None:
            restore_offload(model)
