"""LoRAs on the single S2V transformer, with high-noise and low-noise weights.

Wan2.2-S2V is one model, not two experts, yet the product's "High/Low Noise MoE" strategy
still applies: each LoRA has a ``high`` weight for the steps above the boundary timestep
(structure, pose) and a ``low`` weight for the steps after it (detail). ``PhaseLoras`` loads
each file once as a PEFT adapter and switches the adapter weights when the sampler crosses
the boundary.

Accepted files (safetensors only):

* Wan/diffusers names: ``diffusion_model.blocks.0.self_attn.q.lora_A.weight`` (prefixes
  ``diffusion_model.``, ``transformer.``, ``base_model.model.`` and PEFT's ``.default`` are
  removed), ``lora_down``/``lora_up`` pairs with an optional ``.alpha`` (the alpha/rank scale
  is folded into ``lora_B``);
* the product's own S2V fine-tune checkpoint: a folder holding ``lora_weights.safetensors``
  (rank 128, alpha 64: effective scale = weight x alpha / rank) and ``projector_weights.pt``
  (full weights of the audio projector/injector and patch embedding, read with
  ``torch.load(weights_only=True)``). Projector weights replace the transformer's own while
  the LoRA is active and are restored when a later run does not use it.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import StageError
from ...runtime.lora import DAMAGED_HINT, load_failure, quiet_load_log

PREFIXES = ("diffusion_model.", "transformer.", "base_model.model.", "model.")
SEED_LORA_FILE = "lora_weights.safetensors"
SEED_PROJECTOR_FILE = "projector_weights.pt"


@dataclass(frozen=True)
class PhaseLora:
    name: str
    path: Path            # a .safetensors file, or a folder in the fine-tune checkpoint layout
    high: float
    low: float


def normalize_lora_state_dict(sd: dict[str, Any], alpha: float | None = None) -> dict[str, Any]:
    """Keys -> ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` with scales folded in."""
    import torch

    plain: dict[str, Any] = {}
    alphas: dict[str, float] = {}
    for key, value in sd.items():
        k = key
        for prefix in PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        k = k.replace(".default.", ".").replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B.")
        if k.endswith(".alpha"):
            alphas[k[: -len(".alpha")]] = float(value)
            continue
        if ".lora_A." not in k and ".lora_B." not in k:
            raise StageError(f"LoRA key '{key}' is neither lora_A/lora_B nor alpha",
                             hint="S2V LoRAs must use Wan module names (blocks.N.self_attn.q, ...)")
        plain[k] = value
    out: dict[str, Any] = {}
    for k, value in plain.items():
        module = k.split(".lora_")[0]
        if ".lora_B." in k:
            down = plain.get(f"{module}.lora_A.weight")
            rank = down.shape[0] if down is not None else value.shape[1]
            a = alphas.get(module, alpha)
            if a is not None:
                value = value.to(torch.float32) * (a / rank)
        out[k] = value
    return out


def read_lora(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(LoRA tensors, projector tensors or None) from a file or a fine-tune folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path.is_dir():
        lora_file = path / SEED_LORA_FILE
        if not lora_file.is_file():
            raise StageError(f"LoRA folder {path} has no {SEED_LORA_FILE}")
        alpha = _alpha_of(path, lora_file)
        sd = normalize_lora_state_dict(load_file(str(lora_file)), alpha)
        projector = None
        proj_file = path / SEED_PROJECTOR_FILE
        if proj_file.is_file():
            import torch

            try:
                projector = torch.load(proj_file, map_location="cpu", weights_only=True)
            except Exception as exc:  # unpickling refused or damaged file
                raise StageError(f"cannot read {proj_file} as plain tensors: {exc}",
                                 hint="projector weights are read with weights_only=True") from exc
            if isinstance(projector, dict) and "state_dict" in projector:
                projector = projector["state_dict"]
            projector = {_strip(k): v for k, v in projector.items()}
        return sd, projector
    if path.suffix != ".safetensors":
        raise StageError(f"LoRA {path} is not a .safetensors file",
                         hint="only safetensors LoRAs are loaded")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    alpha = float(meta["lora_alpha"]) if "lora_alpha" in meta else None
    return normalize_lora_state_dict(load_file(str(path)), alpha), None


def _alpha_of(folder: Path, lora_file: Path) -> float | None:
    from safetensors import safe_open

    with safe_open(str(lora_file), framework="pt") as f:
        meta = f.metadata() or {}
    if "lora_alpha" in meta:
        return float(meta["lora_alpha"])
    cfg = folder / "adapter_config.json"
    if cfg.is_file():
        return float(json.loads(cfg.read_text()).get("lora_alpha", 0)) or None
    return None


def _strip(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def adapter_name(path: Path) -> str:
    """Stable while the file is unchanged; a new name after an edit (the adapter reloads)."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", path.stem if path.is_file() else path.name)[:32]
    st = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"s2v_{stem}_{tag}"


@dataclass
class PhaseLoras:
    """The LoRA state of one S2V transformer across runs."""

    transformer: Any
    loaded: dict[str, str] = field(default_factory=dict)           # adapter -> path
    projectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    originals: dict[str, Any] = field(default_factory=dict)         # param name -> saved tensor
    active: list[PhaseLora] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def use(self, loras: list[PhaseLora]) -> None:
        """Make the next run use exactly ``loras`` (loading files not seen before)."""
        self._restore_projectors()
        self.active, self.names = [], []
        for lora in loras:
            name = adapter_name(lora.path)
            if name not in self.loaded:
                try:
                    sd, projector = read_lora(lora.path)
                except StageError:
                    raise
                except Exception as exc:  # the file's own reader failed: damaged or foreign
                    raise StageError(f"cannot read LoRA '{lora.name}' ({lora.path}): {load_failure(exc)}",
                                     hint=DAMAGED_HINT) from exc
                try:
                    with warnings.catch_warnings(), quiet_load_log():
                        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                        self.transformer.load_lora_adapter(sd, adapter_name=name, prefix=None)
                except Exception as exc:
                    raise StageError(f"cannot load LoRA '{lora.name}' into the S2V transformer: {load_failure(exc)}",
                                     hint="check that it was trained for Wan2.2-S2V") from exc
                self.loaded[name] = str(lora.path)
                if projector:
                    self.projectors[name] = projector
            if name in self.projectors:
                self._swap_in(self.projectors[name], lora.name)
            self.active.append(lora)
            self.names.append(name)

    def set_phase(self, phase: str) -> None:
        """``"high"`` before the boundary timestep, ``"low"`` after it."""
        if not self.loaded:
            return
        weights = [lo.high if phase == "high" else lo.low for lo in self.active]
        if not self.names or all(w == 0.0 for w in weights):
            self.transformer.disable_lora()
            return
        self.transformer.enable_lora()
        self.transformer.set_adapters(self.names, weights)

    def _swap_in(self, projector: dict[str, Any], label: str) -> None:
        import torch

        params = dict(self.transformer.named_parameters())
        for key, value in projector.items():
            if key not in params:
                raise StageError(f"projector weight '{key}' of LoRA '{label}' matches no S2V parameter")
            target = params[key]
            if tuple(target.shape) != tuple(value.shape):
                raise StageError(f"projector weight '{key}' of LoRA '{label}' has shape "
                                 f"{tuple(value.shape)}, the model has {tuple(target.shape)}")
            if key not in self.originals:
                self.originals[key] = target.detach().clone()
            with torch.no_grad():
                target.copy_(value.to(target.dtype))

    def _restore_projectors(self) -> None:
        import torch

        if not self.originals:
            return
        params = dict(self.transformer.named_parameters())
        with torch.no_grad():
            for key, value in self.originals.items():
                params[key].copy_(value)
        self.originals.clear()
