"""Where a video transformer's weights live: fp8 weight storage and block offloading.

The two functions every video model uses (the Wan2.2 I2V experts, S2V, Animate), both built on
diffusers' hooks:

``store_fp8(model, compute_dtype)``
    fp8 *storage*: diffusers' layerwise casting (``apply_layerwise_casting``). The weights of the
    Linear/Conv layers are stored as ``float8_e4m3fn`` (a plain cast, clamped to +-448, no scale)
    and each layer is cast to ``compute_dtype`` just before it runs and back after, so every
    matrix product computes in ``compute_dtype``. The cast is the whole layer (weight and
    bias). Skipped, as ``ModelMixin.enable_layerwise_casting`` skips them: diffusers' default
    patterns (``pos_embed``, ``patch_embed``, ``norm``, ``proj_in``, ``proj_out``), the modules
    the model keeps in fp32 (``_keep_in_fp32_modules``), the model's own
    ``_skip_layerwise_casting_patterns`` and the PEFT adapter layers (LoRA ``lora_A``/``lora_B``
    and their kin). Lossy; halves the weights' memory against bf16.
``offload_blocks(model, device, count=None)``
    The first ``count`` of the model's repeated blocks (``model.blocks``; all when ``None``) live in
    pinned host RAM and are copied to ``device`` one block at a time: block-level group
    offloading with one block per group, built from diffusers' ``ModuleGroup`` /
    ``GroupOffloadingHook``. While block ``i`` runs, block ``i+1`` is copied on a side CUDA stream;
    the transformer's own hook starts the copy of the first offloaded block when its forward
    begins and waits for it, so anything that reads that block's weights before it runs (a
    TeaCache indicator does) sees them complete. Everything else (the other blocks, embeddings,
    heads) is placed on ``device``. A module without a ``blocks`` list (a text encoder, a VAE) is handed
    to diffusers' ``apply_group_offloading`` with the same settings. Exact: the weights are moved,
    never changed.

Both compose: fp8 storage first, then offloading pins the fp8 weights (half the RAM and half the
copy time of bf16). On CUDA the offloaded tensors are first copied into exactly sized pinned
buffers (``runtime/pinned.py``), which diffusers then keeps as its host copies. Animate's runtime
undoes both on its working copy (``drop_fp8_storage``,
``drop_offload``) and puts its rest copy back; the other stages reload a model to change them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import apply_group_offloading, apply_layerwise_casting
from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS   # the layer kinds diffusers casts
from diffusers.hooks.group_offloading import GroupOffloadingConfig, GroupOffloadingHook, ModuleGroup
from diffusers.hooks.hooks import HookRegistry
from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

from .pinned import empty_host_cache, pin_in_place

FP8_MAX = 448.0                                   # float8_e4m3fn's largest finite value
CAST_HOOK = "layerwise_casting"                   # diffusers' hook names (it looks them up by name)
PEFT_CAST_HOOK = "peft_autocast_disable"
#: peft gives a new adapter its base layer's weight dtype, or the layer's ``compute_dtype`` where it
#: has one (as bitsandbytes' 4-bit layers do): set on every fp8-stored layer, so that a LoRA loaded
#: after ``store_fp8`` computes in the compute dtype, not in fp8
ADAPTER_DTYPE_ATTR = "compute_dtype"
GROUP_HOOK = "group_offloading"
IN_FLIGHT = 2            # offloaded blocks on the device at a time: the one computing, the one arriving
_OFFLOAD_ATTR = "_cinesynth_offloaded_blocks"


# --------------------------------------------------------------------------- fp8 storage


def fp8_skip_patterns(model: Any) -> tuple[str, ...]:
    """What ``ModelMixin.enable_layerwise_casting`` leaves alone: diffusers' default patterns, the
    model's fp32 modules and skip patterns, and the PEFT adapter layers."""
    patterns = tuple(DEFAULT_SKIP_MODULES_PATTERN)
    patterns += tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    patterns += tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ())
    try:
        from peft.tuners.loha.layer import LoHaLayer
        from peft.tuners.lokr.layer import LoKrLayer
        from peft.tuners.lora.layer import LoraLayer

        for layer in (LoHaLayer, LoKrLayer, LoraLayer):
            patterns += tuple(layer.adapter_layer_names)
    except ImportError:  # pragma: no cover
        patterns += ("lora_A", "lora_B")
    return tuple(dict.fromkeys(patterns))


def fp8_targets(model: Any) -> list[tuple[str, Any]]:
    """(name, layer) of every layer ``store_fp8`` stores as fp8, found as diffusers finds them: on
    each path from the model down, the first layer of a kind diffusers casts, unless a skip
    pattern matches its name or a parent's."""
    patterns = fp8_skip_patterns(model)
    out: list[tuple[str, Any]] = []

    def walk(module, prefix: str) -> None:
        if any(re.search(p, prefix) for p in patterns):
            return
        if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
            out.append((prefix, module))
            return
        for name, child in module.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name)

    walk(model, "")
    return out


@dataclass
class Fp8Storage:
    layers: int = 0
    bytes_saved: int = 0


def to_fp8(layer: Any) -> None:
    """Cast ``layer``'s own floating tensors to float8_e4m3fn now, where they are (clamped to
    +-448): what ``store_fp8`` does to a layer, done early (on the GPU, before a block is copied
    to host RAM). The source tensors are left as they were."""
    with torch.no_grad():
        for tensor in layer.parameters(recurse=False):
            if tensor.is_floating_point() and tensor.dtype != torch.float8_e4m3fn:
                tensor.data = tensor.data.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def store_fp8(model: Any, compute_dtype: Any) -> Fp8Storage:
    """Store the weights of ``model``'s castable layers as float8_e4m3fn, computing in
    ``compute_dtype`` (diffusers' layerwise casting). Layers already cast (``to_fp8``) are
    kept as they are. Returns how many layers and bytes."""
    report = Fp8Storage()
    computed = torch.empty((), dtype=compute_dtype).element_size()
    with torch.no_grad():
        for _, layer in fp8_targets(model):
            for tensor in layer.parameters(recurse=False):
                if tensor.is_floating_point():
                    size = computed if tensor.dtype == torch.float8_e4m3fn else tensor.element_size()
                    report.bytes_saved += tensor.numel() * (size - 1)
            to_fp8(layer)                  # new tensors: the sources stay
            setattr(layer, ADAPTER_DTYPE_ATTR, compute_dtype)
            report.layers += 1
    apply_layerwise_casting(model, storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype,
                            skip_modules_pattern=fp8_skip_patterns(model), non_blocking=False)
    return report


def fp8_stored(model: Any) -> int:
    """How many of ``model``'s layers carry the fp8 storage hook."""
    return sum(1 for m in model.modules() if _hook(m, CAST_HOOK) is not None)


def drop_fp8_storage(model: Any) -> None:
    """Remove the casting hooks without casting back: diffusers refuses to undo the cast (the
    precision is gone), so this is for a caller that puts the original weights back itself."""
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        hook = registry.get_hook(CAST_HOOK)
        if hook is not None:
            hook.deinitalize_hook = _unchanged      # diffusers' own raises: nothing to restore here
            registry.remove_hook(CAST_HOOK, recurse=False)
            module.__dict__.pop(ADAPTER_DTYPE_ATTR, None)
        registry.remove_hook(PEFT_CAST_HOOK, recurse=False)


def _unchanged(module):
    return module


def _hook(module: Any, name: str):
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(name) if registry is not None else None


# --------------------------------------------------------------------------- block offloading


class FirstBlockPrefetch(GroupOffloadingHook):
    """On the transformer: owns no weights; when the forward starts it copies the first offloaded
    block to the device and waits for that copy."""

    def pre_forward(self, module, *args, **kwargs):
        args, kwargs = super().pre_forward(module, *args, **kwargs)
        nxt = self.next_group
        if nxt is not None and nxt.stream is not None:
            nxt.stream.synchronize()
        return args, kwargs


@dataclass
class Offload:
    """What ``offload_blocks`` did: the offloaded block indices and their groups."""

    device: str = "cpu"
    blocks: list[int] = field(default_factory=list)
    total: int = 0
    groups: list = field(default_factory=list)
    delegated: bool = False
    tensors: frozenset = frozenset()      # ids of the offloaded blocks' tensors, as pinned
    arenas: list = field(default_factory=list)   # the exactly sized pinned buffers they live in (CUDA)

    @property
    def count(self) -> int:
        return len(self.blocks)


def offload_blocks(model: Any, device: str, count: int | None = None) -> Offload:
    """Keep the first ``count`` of ``model.blocks`` (all when ``None``) in pinned host RAM, streamed
    to ``device`` one block at a time with a prefetch stream; everything else goes to ``device``.
    ``count`` 0 only places the model. On a CPU ``device`` the hooks run without a stream (the
    copies are no-ops), which is how the tests exercise them."""
    dev = torch.device(device)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        return _delegate(model, dev)
    blocks = list(blocks)
    n = len(blocks) if count is None else max(0, min(int(count), len(blocks)))
    offloaded = blocks[:n]
    inside = {id(t) for b in offloaded for t in _own_tensors(b)}
    for tensor in _own_tensors(model):
        if id(tensor) not in inside and tensor.device != dev:
            tensor.data = tensor.data.to(dev)
    result = Offload(device=str(dev), total=len(blocks))
    if not n:
        return result

    cpu = torch.device("cpu")
    stream = torch.cuda.Stream(device=dev) if dev.type == "cuda" else None
    streamed = stream is not None
    if streamed:       # pinned once, exactly: diffusers keeps tensors that are pinned already
        result.arenas = pin_in_place([t for b in offloaded for t in _own_tensors(b) if not t.is_pinned()])
    config = GroupOffloadingConfig(
        onload_device=dev, offload_device=cpu, offload_type="block_level", non_blocking=streamed,
        record_stream=streamed, low_cpu_mem_usage=False, num_blocks_per_group=1, stream=stream)
    hooks = []
    for i, block in enumerate(offloaded):
        group = ModuleGroup(modules=[block], offload_device=cpu, onload_device=dev, offload_leader=block,
                            onload_leader=block, non_blocking=streamed, stream=stream, record_stream=streamed,
                            low_cpu_mem_usage=False, onload_self=False, group_id=f"blocks_{i}")
        hook = GroupOffloadingHook(group, config=config)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, GROUP_HOOK)  # moves it to RAM
        hooks.append(hook)
        result.groups.append(group)
        result.blocks.append(i)
        if streamed:
            torch.cuda.empty_cache()
    result.tensors = frozenset(inside)
    starter = ModuleGroup(modules=[], offload_device=cpu, onload_device=dev, offload_leader=model,
                          onload_leader=model, parameters=[], buffers=[], non_blocking=False, stream=None,
                          record_stream=False, onload_self=True, group_id="blocks_start")
    start_hook = FirstBlockPrefetch(starter, config=config)
    start_hook.next_group = hooks[0].group
    for a, b in zip(hooks, hooks[1:]):
        a.next_group = b.group
    HookRegistry.check_if_exists_or_initialize(model).register_hook(start_hook, GROUP_HOOK)
    setattr(model, _OFFLOAD_ATTR, result)
    return result


def _delegate(model: Any, dev) -> Offload:
    """A module without repeated ``blocks``: diffusers' block-level group offloading (its
    ModuleList children one per group, the rest as one group), prefetched on a stream on CUDA."""
    streamed = dev.type == "cuda"
    arenas = pin_in_place(list(_own_tensors(model))) if streamed else []
    apply_group_offloading(model, onload_device=dev, offload_device="cpu", offload_type="block_level",
                           num_blocks_per_group=1, use_stream=streamed, record_stream=streamed,
                           low_cpu_mem_usage=False)
    result = Offload(device=str(dev), delegated=True, arenas=arenas)
    setattr(model, _OFFLOAD_ATTR, result)
    return result


def offloaded(model: Any) -> Offload | None:
    """What ``offload_blocks`` did to ``model`` (None when it did not run)."""
    return getattr(model, _OFFLOAD_ATTR, None)


def offload_pinned_nbytes(model: Any) -> int:
    """Pinned host RAM held by the offloaded parts of ``model`` and its submodules: the streamed
    blocks, or a whole module handed to diffusers' group offloading. Only a CUDA device's copies
    are pinned (on the CPU the hooks move nothing)."""
    total = 0
    for module in model.modules():
        done = offloaded(module)
        if done is None or not str(done.device).startswith("cuda"):
            continue
        parts = [module] if done.delegated else [module.blocks[i] for i in done.blocks]
        total += sum(t.numel() * t.element_size() for part in parts for t in _own_tensors(part))
    return total


def restore_offload(model: Any) -> bool:
    """Re-apply ``offload_blocks``' layout when the offloaded blocks changed under it. A LoRA
    adapter adds tensors that the pinned copies lack: loaded through a diffusers pipeline, diffusers
    re-offloads the model its own way (every block and the rest of the model); loaded into the
    model directly, the new tensors are simply missing from the copies. The blocks' weights stay
    in the pinned buffers they were given (diffusers keeps pinned tensors as they are): only the
    new tensors are copied, so a LoRA load never holds the model's pinned RAM twice. Returns
    whether it did."""
    done = offloaded(model)
    if done is None or done.delegated or not done.blocks:
        return False
    current = frozenset(id(t) for i in done.blocks for t in _own_tensors(model.blocks[i]))
    if isinstance(_hook(model, GROUP_HOOK), FirstBlockPrefetch) and current == done.tensors:
        return False
    drop_offload(model, release=False)          # the blocks' weights stay in their pinned buffers:
    again = offload_blocks(model, done.device, len(done.blocks))   # only new tensors are copied
    again.arenas = [*done.arenas, *again.arenas]
    empty_host_cache()                # diffusers' own pinned copies of what went back to the device
    return True


def drop_offload(model: Any, release: bool = True) -> None:
    """Remove the offloading hooks; the tensors stay where they are (the caller places them).
    ``release``: the pinned buffers of the offloaded blocks are unregistered too (else the caller
    takes them over)."""
    registry = HookRegistry.check_if_exists_or_initialize(model)
    for name in (GROUP_HOOK, "lazy_prefetch_group_offloading", "layer_execution_tracker"):
        registry.remove_hook(name, recurse=True)
    done = offloaded(model)
    for arena in done.arenas if done is not None and release else ():
        arena.release()             # no longer page-locked; freed with the last tensor in it
    if hasattr(model, _OFFLOAD_ATTR):
        delattr(model, _OFFLOAD_ATTR)


def _own_tensors(module: Any):
    """Every parameter and buffer of ``module`` and its children, each once."""
    seen: set[int] = set()
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            for tensor in store.values():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield tensor
