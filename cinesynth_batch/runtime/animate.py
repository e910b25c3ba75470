"""Wan2.2-Animate on diffusers ``WanAnimatePipeline``: per-run runtime settings, TeaCache.

Loading
-------
``catalog.loaders.load_animate_pipeline(path, device, dtype)`` reads a ``WanAnimatePipeline`` folder through
``from_pretrained`` (weights in ``dtype``). The text encoder, image encoder and VAE go to ``device``
(on CUDA the stage parks the text encoder in pinned host RAM once the prompts are encoded:
``stages/animate.py``). The transformer's weights stay where they were loaded (host RAM): they are its *rest copy*, which
no run modifies. Each run places a working copy on the device with the settings it asks for.

Runtime settings (``RuntimeSettings``)
--------------------------------------
``precision``
    ``bf16`` / ``fp16`` / ``fp32``: the transformer's compute dtype (modules diffusers keeps in fp32,
    ``WanAnimateTransformer3DModel._keep_in_fp32_modules``, stay fp32). The text encoder, image
    encoder and VAE keep the load dtype.
``quantize``
    ``None`` or ``"fp8_e4m3fn"``: fp8 weight storage, the video models' shared path
    (``runtime/memory.py`` ``store_fp8``: diffusers' layerwise casting). The Linear/Conv layers of the
    transformer are stored as ``float8_e4m3fn`` (plain cast, clamped to +-448, no scale), weight
    and bias, and cast to the compute dtype just before each layer runs. Norms, the patch
    embeddings, the output projection, the modules diffusers keeps in fp32 and LoRA layers keep
    the compute dtype (the skip list of diffusers' ``enable_layerwise_casting``). Runs on any
    device (on a CPU it saves memory, not time). ``"fp8_e4m3fn_scaled"`` needs per-tensor scales
    that a bf16 checkpoint does not have: it is replaced by ``"fp8_e4m3fn"`` with a warning.
``attention``
    ``sdpa`` (diffusers backend ``native``: torch SDPA, which picks its flash/cuDNN/efficient kernel),
    ``cudnn`` / ``fa3`` / ``fa4`` (cuDNN attention, FlashAttention-3 on Hopper, FlashAttention-4 on
    Hopper and Blackwell: see ``runtime/attention.py``),
    ``sageattn`` (``sage``: SageAttention, needs the ``sageattention`` package at the version diffusers
    requires, a CUDA device and bf16/fp16 compute) or ``flash`` (``flash``: the ``flash-attn``
    package, CUDA, bf16/fp16). Set on this transformer's attention processors only; diffusers'
    process-wide active backend is not touched.
``block_swap``
    ``N``: the first ``N`` of the transformer's blocks (``transformer.blocks[0:N]``, each a
    ``WanTransformerBlock``: self-attention, cross-attention, FFN) live in pinned host RAM and are
    copied to the device one block at a time, the video models' shared block offloading
    (``runtime/memory.py`` ``offload_blocks``: diffusers' ``ModuleGroup`` / ``GroupOffloadingHook``,
    one block per group); while block ``i`` runs, block ``i+1`` is copied on a side CUDA stream,
    and block 0 is fetched when the transformer's forward starts. The other blocks and everything
    outside ``blocks`` (embeddings, motion encoder, face encoder, the face adapters, the output
    head) stay on the device. "20 of 40 blocks swapped" is ``block_swap: 20``: blocks 0-19 stream
    in, blocks 20-39 stay resident. The swapped blocks end in pinned host RAM in their run dtype.
    With fp8 storage or fused LoRAs each one is built on the device (its LoRAs added, cast to fp8
    there) and copied straight into an exactly sized pinned buffer (``runtime/pinned.py``);
    otherwise it is placed in host RAM directly.
``rms_norm``
    ``pytorch`` only: the model's RMSNorms are ``torch.nn.RMSNorm``.

``prepare_animate_run(pipe, requested, loras, device)`` resolves what this machine can do, warns once
per setting it cannot honour (``AnimateFallbackWarning``, naming the setting and the reason) and uses
the nearest exact alternative (precision without fp8, the fastest exact attention kernel, no swap).
It then makes the pipeline use exactly those settings and those LoRAs: with ``lora_fuse`` (``auto``:
on CUDA) the active adapters' weighted products are added into the working copy's weights (summed
in fp32, before fp8 storage) and the adapter layers are marked merged, so their forward runs the
base layer alone; the rest copy keeps the adapters apart. The placement is kept while later runs ask for the same
settings; when they differ, or when a LoRA has to be loaded (LoRAs are always loaded into the rest
copy, in its dtype), the working copy is dropped and rebuilt from the rest copy, so nothing one run
chose reaches the next. The returned report says what was actually used.

TeaCache
--------
``WanAnimateTeaCacheAdapter`` lets ``runtime.teacache.apply_teacache`` cache
``WanAnimateTransformer3DModel``: the region is the block loop *and* the face adapters called between
blocks (their output is added to the hidden states, so a skipped step hands back zero). Coefficients:
no fit exists for Wan2.2-Animate; ``TEACACHE_MODEL`` borrows the Wan2.1 I2V-14B-720P set
(``COEFFICIENTS["wan2.1-i2v-14b-720p"]``, indicator ``timestep_embedding``), as
ComfyUI-WanVideoWrapper does for Wan2.2 I2V. Wan-Animate keeps Wan2.1's timestep embedding, which is
the indicator that set was fitted on.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .animate_settings import AnimateFallbackWarning, RuntimeSettings, resolve_runtime
from .attention import BACKENDS, ensure_backend
from .memory import drop_fp8_storage, drop_offload, fp8_targets, offload_blocks, store_fp8, to_fp8
from .pinned import pin_in_place
from .swap import BEFORE_HOST_ATTR, HOST_TENSORS_ATTR, keep_component_on_host
from .teacache import TeaCacheConfig, WanDiffusersAdapter, apply_teacache

__all__ = [
    "AnimateFallbackWarning",
    "AnimateRuntime",
    "RuntimeSettings",
    "TEACACHE_MODEL",
    "WanAnimateTeaCacheAdapter",
    "animate_lora_requests",
    "apply_animate_teacache",
    "prepare_animate_run",
    "release_animate_runtime",
    "resolve_runtime",
]

#: The TeaCache coefficient preset used for Wan2.2-Animate (borrowed: no published Animate fit).
TEACACHE_MODEL = "wan2.1-i2v-14b-720p"
TEACACHE_COEFFICIENTS_NOTE = (
    "borrowed: Wan2.1 I2V-14B-720P polynomial (timestep embedding); no fit published for Wan2.2-Animate"
)

_RUNTIME_ATTR = "_cinesynth_animate_runtime"
DEVICE_ATTR = "_cinesynth_animate_device"


def pipeline_device(pipe: Any, fallback: str = "cpu") -> str:
    """The device the pipeline computes on (where the loader put its encoders and VAE)."""
    dev = getattr(pipe, DEVICE_ATTR, None)
    if dev is not None:
        return dev
    for name in ("vae", "text_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            try:
                return str(next(module.parameters()).device)
            except StopIteration:
                continue
    return fallback


# --------------------------------------------------------------------------- LoRA requests


def animate_lora_requests(loras: Sequence[Mapping[str, Any]] | None, resolver) -> list:
    """``[{name, weight}]`` -> requests on the single ``transformer`` (LoRA family ``"mov"``)."""
    from .lora import single_lora_requests

    return single_lora_requests(loras, resolver, "mov", where="animate: ")


def _needs_lora_load(pipe: Any, requests: Sequence[Any]) -> bool:
    from .lora import adapter_name

    try:
        loaded = set(pipe.get_list_adapters().get("transformer", []))
    except (AttributeError, ValueError):
        loaded = set()
    for req in requests:
        for component, weight in req.weights.items():
            if weight != 0.0 and adapter_name(req.path, component) not in loaded:
                return True
    return False


# --------------------------------------------------------------------------- runtime placement


def _keeps_fp32(model: Any, name: str) -> bool:
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    atoms = name.split(".")
    return any(k in atoms for k in keep)


@dataclass
class _Materialized:
    settings: RuntimeSettings
    device: str
    rest: dict[int, tuple[Any, Any]]            # id(tensor) -> (tensor object, rest data)
    previous_backends: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    fp8_layers: int = 0
    fp8_bytes_saved: int = 0
    swapped: list[int] = field(default_factory=list)
    fused: dict[str, float] = field(default_factory=dict)     # adapter -> weight added into the weights
    merged: list[Any] = field(default_factory=list)           # the adapter layers marked merged
    arenas: list[Any] = field(default_factory=list)           # pinned buffers of the swapped blocks


class AnimateRuntime:
    """The runtime state of one pipeline's transformer: at rest, or a working copy placed with
    one ``RuntimeSettings``. One per pipeline (``AnimateRuntime.of(pipe)``)."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.current: _Materialized | None = None

    @classmethod
    def of(cls, pipe: Any) -> "AnimateRuntime":
        runtime = getattr(pipe, _RUNTIME_ATTR, None)
        if runtime is None:
            runtime = cls(pipe)
            setattr(pipe, _RUNTIME_ATTR, runtime)
            setattr(pipe, HOST_TENSORS_ATTR, runtime.rest_tensors)
            setattr(pipe, BEFORE_HOST_ATTR, runtime.leave_device)
        return runtime

    def rest_tensors(self) -> list[Any]:
        """The rest copy's tensors while a working copy is placed (host RAM the pipeline holds
        beside its modules' tensors)."""
        state = self.current
        return [] if state is None else [data for _, data in state.rest.values()]

    def leave_device(self) -> None:
        """Before the pipeline goes to pinned RAM (``runtime/swap.py``): drop the working copy, and
        keep the rest copy where it is, in host RAM, when the pipeline comes back to the device
        (each run places its own working copy)."""
        self.release()
        keep_component_on_host(self.pipe, "transformer")

    @property
    def transformer(self):
        return self.pipe.transformer

    # ---- tensors

    def _tensors(self) -> list[tuple[str, Any, str, Any]]:
        """(qualified name, owner module, attribute, tensor) for every parameter and buffer, once."""
        seen: set[int] = set()
        out = []
        for mod_name, module in self.transformer.named_modules():
            for store in (module._parameters, module._buffers):
                for attr, tensor in store.items():
                    if tensor is None or id(tensor) in seen:
                        continue
                    seen.add(id(tensor))
                    out.append((f"{mod_name}.{attr}" if mod_name else attr, module, attr, tensor))
        return out

    # ---- apply / release

    def apply(self, settings: RuntimeSettings, device: str, fuse: Mapping[str, float] | None = None) -> _Materialized:
        """Place the working copy with ``settings`` on ``device`` (no capability checks: use
        ``prepare_animate_run`` for that), with the ``fuse`` adapters (active, weighted) added into
        its weights. Keeps the current placement if it already matches."""
        fuse = dict(fuse or {})
        current = self.current
        if (current is not None and current.settings == settings and current.device == str(device)
                and current.fused == fuse):
            self._set_attention(settings.attention)
            return current
        self.release()
        return self._materialize(settings, str(device), fuse)

    def _materialize(self, settings: RuntimeSettings, device: str, fuse: Mapping[str, float]) -> _Materialized:
        model = self.transformer
        dev, cpu = torch.device(device), torch.device("cpu")
        compute = settings.dtype
        if any(t.device.type != "cpu" for t in model.parameters()):
            model.to("cpu")  # the rest copy lives in host RAM; each run places its own device copy
        entries = self._tensors()
        names = {id(t): name for name, _, _, t in entries}
        state = _Materialized(settings=settings, device=device,
                              rest={id(t): (t, t.data) for _, _, _, t in entries})
        self.current = state

        def place(module, where) -> None:
            """Put one module's own tensors on ``where`` in their run dtype."""
            for store in (module._parameters, module._buffers):
                for attr, tensor in store.items():
                    if tensor is None:
                        continue
                    rest = state.rest[id(tensor)][1]
                    want = rest.dtype
                    if rest.is_floating_point():
                        want = torch.float32 if _keeps_fp32(model, names.get(id(tensor), attr)) else compute
                    tensor.data = rest.to(device=where, dtype=want)

        def outside_blocks(module) -> None:
            if module is model.blocks:
                return
            place(module, dev)
            for child in module.children():
                outside_blocks(child)

        fp8 = settings.fp8
        targets = {id(layer) for _, layer in fp8_targets(model)} if fp8 else set()
        try:
            blocks = list(model.blocks)
            swap = min(settings.block_swap, len(blocks))
            outside_blocks(model)
            for i, block in enumerate(blocks):
                swapped = i < swap                     # swapped blocks end in pinned RAM
                on_device = bool(fuse) or fp8 or not swapped
                for sub in block.modules():
                    place(sub, dev if on_device else cpu)
                if fuse:
                    state.merged += fuse_into_weights(block, fuse, dev)
                if fp8:           # cast block by block where it is: one block in the run dtype at a time
                    for sub in block.modules():
                        if id(sub) in targets:
                            to_fp8(sub)
                if swapped and on_device:
                    own = [t for sub in block.modules() for store in (sub._parameters, sub._buffers)
                           for t in store.values() if t is not None]
                    if dev.type == "cuda":             # straight into an exactly sized pinned buffer
                        state.arenas += pin_in_place(own)
                    else:
                        for tensor in own:
                            tensor.data = tensor.data.to(cpu)
            if fuse:
                state.merged += fuse_into_weights(model, fuse, dev, skip=model.blocks)
                state.fused = dict(fuse)
            if fp8:
                stored = store_fp8(model, compute)
                state.fp8_layers, state.fp8_bytes_saved = stored.layers, stored.bytes_saved
            if swap:
                state.swapped = offload_blocks(model, device, swap).blocks
            self._set_attention(settings.attention)
        except Exception:
            self.release()
            raise
        return state

    def _set_attention(self, attention: str) -> None:
        from diffusers.models.attention import AttentionModuleMixin
        from diffusers.models.attention_dispatch import AttentionBackendName

        ensure_backend(attention)
        backend = AttentionBackendName(BACKENDS[attention])
        state = self.current
        for module in self.transformer.modules():
            if not isinstance(module, AttentionModuleMixin):
                continue
            processor = getattr(module, "processor", None)
            if processor is None or not hasattr(processor, "_attention_backend"):
                continue
            if state is not None and id(processor) not in state.previous_backends:
                state.previous_backends[id(processor)] = (processor, processor._attention_backend)
            processor._attention_backend = backend

    def release(self) -> None:
        """Drop the working copy: hooks removed, every tensor back to its rest copy."""
        state = self.current
        if state is None:
            return
        model = self.transformer
        drop_offload(model)
        drop_fp8_storage(model)
        for tensor, rest in state.rest.values():
            tensor.data = rest
        for layer in state.merged:
            layer.merged_adapters = []
        for arena in state.arenas:
            arena.release()
        for processor, backend in state.previous_backends.values():
            processor._attention_backend = backend
        self.current = None
        gc.collect()
        if str(state.device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- report

    def report(self) -> dict[str, Any]:
        state = self.current
        if state is None:
            return {"placed": False}
        s = state.settings
        blocks = len(self.transformer.blocks)
        return {
            "device": state.device,
            "precision": s.precision,
            "quantization": s.quantize,
            "fp8_layers": state.fp8_layers,
            "fp8_bytes_saved": state.fp8_bytes_saved,
            "attention": s.attention,
            "attention_backend": BACKENDS[s.attention],
            "block_swap": len(state.swapped),
            "swapped_blocks": _ranges(state.swapped),
            "loras_fused": len(state.fused),
            "fused_layers": len(state.merged),
            "blocks": blocks,
            "rms_norm": s.rms_norm,
        }


def fuse_into_weights(root: Any, fuse: Mapping[str, float], device: Any, skip: Any = None) -> list[Any]:
    """Add the ``fuse`` adapters' weighted products into the weights of ``root``'s adapter layers
    (working-copy tensors, already placed), summed in fp32 on ``device``, and mark those layers
    merged so that their forward runs the base layer alone. Layers under ``skip`` are left alone.
    Returns the layers marked."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    skipped = {id(m) for m in skip.modules()} if skip is not None else set()
    done = []
    with torch.no_grad():
        for module in root.modules():
            if id(module) in skipped or not isinstance(module, BaseTunerLayer):
                continue
            names = [a for a in module.active_adapters if a in fuse]
            if not names:
                continue
            weight = module.get_base_layer().weight
            total = weight.data.to(device=device, dtype=torch.float32, copy=True)   # never the rest copy
            for name in names:
                total += module.get_delta_weight(name).to(device=device, dtype=torch.float32)
            weight.data = total.to(weight.dtype)
            module.merged_adapters = list(names)
            done.append(module)
    return done


def unfusable(model: Any, names: Sequence[str]) -> str:
    """Why the adapters ``names`` cannot be added into ``model``'s weights ("" when they can)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for name in names:
            if (getattr(module, "use_dora", None) or {}).get(name):
                return f"adapter {name} is a DoRA adapter"
            if (getattr(module, "lora_bias", None) or {}).get(name):
                return f"adapter {name} carries a bias"
    return ""


def fuse_decision(mode: str, device: str, model: Any, active: Mapping[str, float]) -> tuple[bool, str]:
    """Whether a run adds its ``active`` LoRAs into the working copy's weights, and why."""
    if not active:
        return False, "no LoRA"
    if mode == "off":
        return False, "lora_fuse: off"
    if mode == "auto" and not str(device).startswith("cuda"):
        return False, "auto fuses on CUDA only"
    why = unfusable(model, list(active))
    if why:
        return False, why
    return True, "added into the working copy's weights (the rest copy keeps them apart)"


def _ranges(indices: Sequence[int]) -> str:
    if not indices:
        return ""
    out, start, prev = [], indices[0], indices[0]
    for i in list(indices[1:]) + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
        if i is not None:
            start = prev = i
    return ",".join(out)


def prepare_animate_run(pipe: Any, requested: RuntimeSettings, loras: Sequence[Any], device: str | None = None,
                        warn: bool = True, lora_fuse: str = "auto") -> dict[str, Any]:
    """Make ``pipe`` run with what this machine can do of ``requested`` and exactly ``loras``
    (``LoraRequest`` on ``transformer``), fused into the working copy's weights as ``lora_fuse``
    (``auto``: on CUDA) decides. Returns the runtime report (``fallbacks`` included)."""
    from .lora import apply_loras, wanted_adapters

    device = device or pipeline_device(pipe)
    runtime = AnimateRuntime.of(pipe)
    resolved, fallbacks = resolve_runtime(requested, device, num_blocks=len(pipe.transformer.blocks), warn=warn)
    if runtime.current is not None and (_needs_lora_load(pipe, loras) or runtime.current.settings != resolved
                                        or runtime.current.device != str(device)
                                        or runtime.current.fused not in ({}, wanted_adapters(loras))):
        runtime.release()
    active = apply_loras(pipe, loras)
    fusing, why = fuse_decision(lora_fuse, device, pipe.transformer, active)
    runtime.apply(resolved, device, fuse=active if fusing else None)
    report = runtime.report()
    report["lora_fuse"] = {"fused": fusing, "why": why}
    report["requested"] = asdict(requested)
    report["fallbacks"] = [asdict(fb) for fb in fallbacks]
    report["loras"] = [{"name": r.name, "weight": w} for r in loras for w in r.weights.values() if w != 0.0]
    report["lora_adapters_active"] = len(active)
    return report


def release_animate_runtime(pipe: Any) -> None:
    """Put the transformer back at rest (frees the device copy)."""
    runtime = getattr(pipe, _RUNTIME_ATTR, None)
    if runtime is not None:
        runtime.release()


# --------------------------------------------------------------------------- TeaCache


class WanAnimateTeaCacheAdapter(WanDiffusersAdapter):
    """diffusers ``WanAnimateTransformer3DModel``: the Wan blocks plus the face adapters the model
    calls after every ``inject_face_latents_blocks``-th block (``hidden = face_adapter(hidden, motion)
    + hidden``). A skipped step hands back a zero face-adapter output. The residual is taken at the
    last block, so the last block must not be followed by a face adapter (true of the 40-block model,
    whose adapters follow blocks 0, 5, ..., 35)."""

    def blocks(self, model):
        blocks = list(model.blocks)
        every = int(model.config.inject_face_latents_blocks)
        if blocks and (len(blocks) - 1) % every == 0:
            raise ValueError(
                "TeaCache on WanAnimateTransformer3DModel needs the last block without a face adapter "
                f"after it ({len(blocks)} blocks, a face adapter after every {every}th)")
        return blocks

    def passthrough_modules(self, model):
        def zero(args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            return hidden.new_zeros(())

        return [(adapter, zero) for adapter in model.face_adapter]


def apply_animate_teacache(pipe: Any, cache: Mapping[str, Any], num_inference_steps: int):
    """Install TeaCache on ``pipe.transformer`` from the stage's ``cache`` params
    (``{"kind": "teacache", "threshold", "start_step", "coefficients"}``). Returns the handle."""
    config = TeaCacheConfig(
        rel_l1_thresh=float(cache.get("threshold", 0.15)),
        start_step=int(cache.get("start_step", 1)),
        use_coefficients=bool(cache.get("coefficients", True)),
        model=TEACACHE_MODEL,
        num_steps=int(num_inference_steps),
    )
    return apply_teacache(pipe.transformer, config, adapter=WanAnimateTeaCacheAdapter(), name="transformer")
