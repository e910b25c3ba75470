"""Moving a model between the GPU and pinned host RAM at copy speed.

``HostCopy`` keeps one pinned host tensor per parameter and buffer of a model's modules. Moving to
the device allocates device tensors and copies each pinned tensor with ``non_blocking=True`` (one
stream, no synchronisation between tensors), so the move runs at the host-to-device bandwidth.
Moving back is a pointer swap: inference does not write weights, so the pinned copy is still the
model; a tensor that changed on the device since it arrived (its storage or its version counter
differ, e.g. a LoRA was fused into it) is copied back first. The first move to the host pins
every tensor once (``pinned_bytes`` says how much).

``model_nbytes`` counts what a pipeline, module or wrapper holds; ``move_model`` moves it plainly;
``swap_model`` moves it between pinned host RAM and a device through its ``HostCopy``;
``pinned_nbytes`` says how much pinned RAM that copy and any offloaded blocks hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


def _tensors(modules: Iterable[Any]) -> Iterator[tuple[Any, str, Any]]:
    """(owner module, attribute, tensor) of every parameter and buffer, each tensor once."""
    seen: set[int] = set()
    for root in modules:
        for module in root.modules():
            for store in (module._parameters, module._buffers):
                for attr, tensor in store.items():
                    if tensor is None or id(tensor) in seen:
                        continue
                    seen.add(id(tensor))
                    yield module, attr, tensor


@dataclass
class HostCopy:
    modules: list[Any]
    pinned: dict[int, Any] = field(default_factory=dict)          # id(tensor) -> pinned host data
    arrived: dict[int, tuple[int, int]] = field(default_factory=dict)  # id(tensor) -> (data_ptr, version)
    pinned_bytes: int = 0
    copied_back: int = 0
    on_device: bool = False

    def to_host(self) -> None:
        """Leave the device: each tensor points at its pinned host copy (made or refreshed if needed)."""
        import torch

        pin = torch.cuda.is_available()
        for _, _, tensor in _tensors(self.modules):
            data = tensor.data
            host = self.pinned.get(id(tensor))
            if host is not None and data.data_ptr() == host.data_ptr():
                continue
            fresh = self.arrived.get(id(tensor)) == (data.data_ptr(), tensor._version)
            if host is None or not fresh or host.shape != data.shape or host.dtype != data.dtype:
                host = torch.empty(data.shape, dtype=data.dtype, device="cpu", pin_memory=pin)
                host.copy_(data)
                if id(tensor) in self.pinned:
                    self.copied_back += 1
                else:
                    self.pinned_bytes += host.numel() * host.element_size()
                self.pinned[id(tensor)] = host
            tensor.data = host
        self.arrived.clear()
        self.on_device = False

    def to_device(self, device: str) -> None:
        """Copy every tensor from its pinned host copy to ``device`` (asynchronous, then one sync)."""
        import torch

        dev = torch.device(device)
        for _, _, tensor in _tensors(self.modules):
            data = tensor.data
            if data.device == dev:
                continue
            host = self.pinned.get(id(tensor))
            if host is None or host.data_ptr() != data.data_ptr():
                self.pinned[id(tensor)] = data  # a tensor this copy never took to the host
            moved = torch.empty(data.shape, dtype=data.dtype, device=dev)
            moved.copy_(data, non_blocking=True)
            tensor.data = moved
            self.arrived[id(tensor)] = (moved.data_ptr(), tensor._version)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.on_device = True


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
    copy = getattr(obj, _HOST_COPY_ATTR, None)
    if copy is None:
        copy = HostCopy(list(_modules(obj)))
        setattr(obj, _HOST_COPY_ATTR, copy)
    if where == "host":
        copy.to_host()
    else:
        copy.to_device(where)


def pinned_nbytes(obj: Any) -> int:
    """Bytes of pinned host RAM ``obj`` holds: the copies ``swap_model`` made for it (none before
    it first left the device) and its blocks offloaded to stream from RAM (``runtime/memory.py``)."""
    from .memory import offload_pinned_nbytes

    copy = getattr(obj, _HOST_COPY_ATTR, None)
    return (copy.pinned_bytes if copy is not None else 0) + sum(offload_pinned_nbytes(m) for m in _modules(obj))
