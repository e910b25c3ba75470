"""Pinned host RAM of exactly the size asked for.

PyTorch's pinned allocator (``pin_memory()``, ``torch.empty(..., pin_memory=True)``) rounds every
allocation up to a power of two and keeps freed blocks for later pinned allocations, not for the
rest of the machine. A Wan2.2 feed-forward weight (5120 x 13824 bf16, 141.6 MB) takes 256 MB:
on an H100 node with torch 2.11, eight of them raised the process's resident memory by 2048 MB
for 1080 MB of weights, and freeing them gave none of it back. A 14B model's pinned copy would
need about 1.4x its size, which no budget saw.

An ``Arena`` allocates one ordinary host buffer of the exact total (each tensor at a 256-byte
aligned offset; ``pin_in_place`` fills arenas of at most 1 GiB, one after the other), page-locks it with ``cudaHostRegister`` when CUDA is present, and hands out one
view per tensor. Copies between those views and a GPU run at pinned speed (54 GB/s on that H100,
as with PyTorch's own pinned memory, against 8 GB/s from pageable memory), ``Tensor.is_pinned()``
is true for them, and ``pin_memory()`` returns them unchanged, so diffusers' group offloading
keeps them as they are. ``release()`` unregisters the buffer; the memory goes back to the system
when the last view of it is gone (a view still in use after ``release()`` stays valid, only no
longer page-locked). An arena dropped without ``release()`` unregisters when it is collected.
Without CUDA an arena is plain host memory with the same layout.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch

ALIGN = 256          # bytes: every view starts at a multiple (any dtype's alignment)
CHUNK = 1 << 30      # bytes per arena: a copy from host RAM never holds more than this twice


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _unregister(ptr: int) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()              # no copy may still be reading the buffer
        torch.cuda.cudart().cudaHostUnregister(ptr)


class Arena:
    """One exactly sized host buffer holding copies of several tensors (see the module's doc)."""

    def __init__(self, nbytes: int, pin: bool | None = None):
        self.nbytes = int(nbytes)
        self.buffer = torch.empty(self.nbytes, dtype=torch.uint8)
        pin = torch.cuda.is_available() if pin is None else pin
        self.registered = False
        self._finalizer = None
        if pin and self.nbytes:
            ptr = self.buffer.data_ptr()
            rc = torch.cuda.cudart().cudaHostRegister(ptr, self.nbytes, 0)
            if int(rc) != 0:
                raise RuntimeError(f"cudaHostRegister of {self.nbytes} bytes failed: {rc}")
            self.registered = True
            self._finalizer = weakref.finalize(self, _unregister, ptr)

    @classmethod
    def holding(cls, tensors: Sequence[Any], pin: bool | None = None) -> tuple["Arena", list[Any]]:
        """An arena with a copy of each tensor (from any device); returns it and the copies, each
        with its tensor's shape and dtype, in order."""
        sizes = [t.numel() * t.element_size() for t in tensors]
        offsets, total = [], 0
        for size in sizes:
            offsets.append(total)
            total += _aligned(size)
        arena = cls(total, pin=pin)
        views = [arena.view(off, t.dtype, t.shape) for off, t in zip(offsets, tensors)]
        streamed = False
        for view, t in zip(views, tensors):
            device = t.device.type != "cpu"
            view.copy_(t, non_blocking=device and arena.registered)
            streamed = streamed or device
        if streamed and arena.registered:
            torch.cuda.synchronize()
        return arena, views

    def view(self, offset: int, dtype: Any, shape: Sequence[int]) -> Any:
        """The arena's bytes from ``offset`` as a contiguous tensor of ``dtype`` and ``shape``."""
        count = 1
        for d in shape:
            count *= int(d)
        size = count * torch.empty((), dtype=dtype).element_size()
        return self.buffer[offset:offset + size].view(dtype).view(tuple(shape))

    def release(self) -> None:
        """Unregister the buffer (the memory is freed with its last view)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.registered = False


def chunks(tensors: Sequence[Any], limit: int = CHUNK) -> list[list[int]]:
    """Indices of ``tensors`` in runs of at most ``limit`` bytes (a larger tensor alone)."""
    runs: list[list[int]] = []
    size = 0
    for i, t in enumerate(tensors):
        n = _aligned(t.numel() * t.element_size())
        if not runs or size + n > limit:
            runs.append([])
            size = 0
        runs[-1].append(i)
        size += n
    return runs


def plain(tensor: Any) -> bool:
    """A plain tensor (not a subclass such as torchao's quantized weights, which keep their own
    storage and which diffusers moves its own way)."""
    return type(tensor) is torch.Tensor or type(tensor) is torch.nn.Parameter


def pin_in_place(tensors: Sequence[Any], pin: bool | None = None, limit: int = CHUNK) -> list[Arena]:
    """Move each plain tensor's data into new arenas of at most ``limit`` bytes each
    (``tensor.data`` becomes its copy there), one arena after the other, so that a source in host
    RAM is freed before the next arena is taken; returns the arenas. Tensor subclasses, and
    tensors pinned already, are left as they are."""
    tensors = [t for t in tensors if plain(t.data) and not t.data.is_pinned()]
    arenas = []
    for run in chunks([t.data for t in tensors], limit):
        arena, views = Arena.holding([tensors[i].data for i in run], pin=pin)
        for i, view in zip(run, views):
            tensors[i].data = view
        arenas.append(arena)
    return arenas


def empty_host_cache() -> None:
    """Give the blocks cached by PyTorch's own pinned allocator back to the system (where this
    torch can: ``torch._C._host_emptyCache`` on torch 2.11)."""
    if not torch.cuda.is_available():
        return
    for name in ("_host_emptyCache", "_accelerator_emptyHostCache"):
        fn = getattr(torch._C, name, None)
        if fn is not None:
            try:
                fn()
            except RuntimeError:      # pragma: no cover - a build without that allocator
                continue
            return
