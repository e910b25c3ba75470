"""Moving a model between the GPU and pinned host RAM at copy speed.

``HostCopy`` keeps one pinned host tensor per parameter and buffer of a model's modules. Moving to
the device allocates device tensors and copies each pinned tensor with ``non_blocking=True`` (one
stream, no synchronisation between tensors), so the move runs at the host-to-device bandwidth.
Moving back is a pointer swap: inference does not write weights, so the pinned copy is still the
model; a tensor that changed on the device since it arrived (its storage or its version counter
differ, e.g. a LoRA was fused into it) is copied back first. The first move to the host pins
every tensor once (``pinned_bytes`` says how much), into exactly sized arenas of at most 1 GiB
(``runtime/pinned.py``: PyTorch's own pinned allocator would round each weight up to a power of
two); a tensor that is in pinned host RAM already is its own copy.

``model_nbytes`` counts what a pipeline, module or wrapper holds; ``move_model`` moves it plainly;
``swap_model`` moves it between pinned host RAM and a device through its ``HostCopy``;
``swap_component`` moves one component of a pipeline through the same copy;
``pinned_nbytes`` says how much pinned RAM that copy and any offloaded blocks hold;
``host_nbytes`` how much host RAM a model holds in all (pinned copies, weights resting in RAM).
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
    parked: set[int] = field(default_factory=set)   # id() of modules sent to the host on their own
    arenas: list[Any] = field(default_factory=list)  # the pinned buffers the copies live in
    owned: set[int] = field(default_factory=set)     # id(tensor) whose host copy is in an arena

    def _chosen(self, modules: Iterable[Any] | None, skip_parked: bool = False) -> list[Any]:
        if modules is None:
            return [m for m in self.modules if not (skip_parked and id(m) in self.parked)]
        chosen = list(modules)
        known = {id(m) for m in self.modules}
        self.modules.extend(m for m in chosen if id(m) not in known)
        return chosen

    def to_host(self, modules: Iterable[Any] | None = None) -> int:
        """Leave the device: each tensor points at its pinned host copy (made or refreshed if needed).
        ``modules``: only these (they stay on the host when the whole copy goes back to the device).
        Returns the bytes that left the device."""
        import torch

        from .pinned import Arena, chunks, plain

        chosen = self._chosen(modules)
        left = 0
        fresh_copies: list[Any] = []
        for _, _, tensor in _tensors(chosen):
            data = tensor.data
            host = self.pinned.get(id(tensor))
            arrived = self.arrived.pop(id(tensor), None)
            if host is not None and data.data_ptr() == host.data_ptr():
                continue
            if data.device.type != "cpu":
                left += data.numel() * data.element_size()
            fresh = arrived == (data.data_ptr(), tensor._version)
            same = host is not None and host.shape == data.shape and host.dtype == data.dtype
            if same and fresh:
                tensor.data = host
            elif same and id(tensor) in self.owned:   # changed on the device: refreshed in place
                host.copy_(data)
                self.copied_back += 1
                tensor.data = host
            elif host is None and plain(data) and data.device.type == "cpu" and data.is_pinned():
                self.pinned[id(tensor)] = data        # pinned where it was made: it is its own copy
                self.owned.add(id(tensor))
                self.pinned_bytes += data.numel() * data.element_size()
            elif plain(data):                         # no copy yet, or one this copy does not own
                fresh_copies.append(tensor)
            else:                                     # a tensor subclass: pinned on its own
                host = data.to("cpu")
                if torch.cuda.is_available():
                    try:
                        host = host.pin_memory()
                    except (RuntimeError, NotImplementedError):    # kept unpinned: copied slower
                        pass
                self.pinned[id(tensor)] = host
                self.owned.discard(id(tensor))
                self.pinned_bytes += data.numel() * data.element_size()
                tensor.data = host
        for run in chunks([t.data for t in fresh_copies]):     # arena by arena: a host source is freed
            arena, views = Arena.holding([fresh_copies[i].data for i in run])   # before the next is taken
            self.arenas.append(arena)
            self.pinned_bytes += sum(v.numel() * v.element_size() for v in views)
            for i, host in zip(run, views):
                tensor = fresh_copies[i]
                if id(tensor) in self.pinned:
                    self.copied_back += 1
                self.pinned[id(tensor)] = host
                self.owned.add(id(tensor))
                tensor.data = host
        if modules is None:
            self.arrived.clear()
            self.on_device = False
        else:
            self.parked.update(id(m) for m in chosen)
        return left

    def keep_on_host(self, modules: Iterable[Any]) -> None:
        """Leave ``modules`` where they are, in host RAM, when the whole copy goes to the device
        (their tensors count as their own host copies; nothing is copied or pinned)."""
        chosen = self._chosen(modules)
        for _, _, tensor in _tensors(chosen):
            if tensor.data.device.type == "cpu":
                self.pinned[id(tensor)] = tensor.data
                self.owned.discard(id(tensor))
                self.arrived.pop(id(tensor), None)
        self.parked.update(id(m) for m in chosen)

    def to_device(self, device: str, modules: Iterable[Any] | None = None) -> int:
        """Copy every tensor from its pinned host copy to ``device`` (asynchronous, then one sync).
        ``modules``: only these; without, every module but those sent to the host on their own.
        Returns the bytes copied."""
        import torch

        dev = torch.device(device)
        chosen = self._chosen(modules, skip_parked=True)
        copied = 0
        for _, _, tensor in _tensors(chosen):
            data = tensor.data
            if data.device == dev:
                continue
            host = self.pinned.get(id(tensor))
            if host is None or host.data_ptr() != data.data_ptr():
                self.pinned[id(tensor)] = data  # a tensor this copy never took to the host
                self.owned.discard(id(tensor))
            moved = torch.empty(data.shape, dtype=data.dtype, device=dev)
            moved.copy_(data, non_blocking=True)
            tensor.data = moved
            self.arrived[id(tensor)] = (moved.data_ptr(), tensor._version)
            copied += data.numel() * data.element_size()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if modules is None:
            self.on_device = True
        else:
            self.parked.difference_update(id(m) for m in chosen)
        return copied


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
    """Move ``obj``'s modules to pinned host RAM (``"host"``) or to a device, at copy speed. An
    object may name a step to take first when it leaves the device (``BEFORE_HOST_ATTR``)."""
    copy = getattr(obj, _HOST_COPY_ATTR, None)
    if copy is None:
        copy = HostCopy(list(_modules(obj)))
        setattr(obj, _HOST_COPY_ATTR, copy)
    if where == "host":
        before = getattr(obj, BEFORE_HOST_ATTR, None)
        if callable(before):
            before()
        copy.to_host()
    else:
        copy.to_device(where)


def swap_component(obj: Any, name: str, where: str) -> int:
    """Move one component of a pipeline (``obj.<name>``) to pinned host RAM (``"host"``) or to a
    device, through the pipeline's ``HostCopy`` (the one ``swap_model`` uses, so its pinned copy is
    shared and counted once). A component sent to the host stays there when the whole pipeline
    comes back to the device, until it is moved back by name. Returns the bytes moved."""
    module = getattr(obj, name)
    copy = getattr(obj, _HOST_COPY_ATTR, None)
    if copy is None:
        copy = HostCopy(list(_modules(obj)))
        setattr(obj, _HOST_COPY_ATTR, copy)
    return copy.to_host([module]) if where == "host" else copy.to_device(where, [module])


def keep_component_on_host(obj: Any, name: str) -> None:
    """``obj.<name>`` stays in host RAM, where it is, when the pipeline moves to the device through
    ``swap_model`` (a component its stage places itself)."""
    copy = getattr(obj, _HOST_COPY_ATTR, None)
    if copy is None:
        copy = HostCopy(list(_modules(obj)))
        setattr(obj, _HOST_COPY_ATTR, copy)
    copy.keep_on_host([getattr(obj, name)])


def pinned_nbytes(obj: Any) -> int:
    """Bytes of pinned host RAM ``obj`` holds: the copies ``swap_model`` made for it (none before
    it first left the device) and its blocks offloaded to stream from RAM (``runtime/memory.py``)."""
    from .memory import offload_pinned_nbytes

    copy = getattr(obj, _HOST_COPY_ATTR, None)
    return (copy.pinned_bytes if copy is not None else 0) + sum(offload_pinned_nbytes(m) for m in _modules(obj))


#: Attribute under which an object names a step to take before it leaves the device for pinned RAM.
BEFORE_HOST_ATTR = "_cinesynth_before_host"
#: Attribute under which an object lists tensors it keeps in host RAM beside its modules' own
#: (Animate's rest copy while a working copy is placed: ``runtime/animate.py``).
HOST_TENSORS_ATTR = "_cinesynth_host_tensors"


def host_nbytes(obj: Any) -> int:
    """Bytes of host RAM ``obj`` holds: every host buffer behind its modules' tensors (pinned
    copies, offloaded blocks, weights resting in RAM), the pinned copies its ``HostCopy`` keeps for
    tensors now on the device, and the tensors it lists under ``HOST_TENSORS_ATTR``; each buffer
    once."""
    from .pinned import plain

    buffers: dict[int, int] = {}

    def add(tensor: Any) -> None:
        if tensor is None or tensor.device.type != "cpu":
            return
        if not plain(tensor):            # a subclass (torchao weights): counted by its size
            buffers[-id(tensor)] = tensor.numel() * tensor.element_size()
            return
        storage = tensor.untyped_storage()
        buffers[storage.data_ptr()] = storage.nbytes()

    for module in _modules(obj):
        for _, _, tensor in _tensors([module]):
            add(tensor.data)
    copy = getattr(obj, _HOST_COPY_ATTR, None)
    if copy is not None:
        for arena in copy.arenas:
            add(arena.buffer)
        for host in copy.pinned.values():
            add(host)
    listed = getattr(obj, HOST_TENSORS_ATTR, None)
    for tensor in (listed() if callable(listed) else ()):
        add(tensor)
    return sum(buffers.values())

