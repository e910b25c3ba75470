"""One accounting of memory across the ranks of a node.

A node has one RAM and one memory per GPU. Each rank of a render gets a share:

* **device budget** (what its models may hold on its device): by default 90 % of its GPU's
  memory, or 60 % of the node's RAM on the CPU, divided between the local ranks that use that
  device (CPU ranks all share the RAM; ranks on ``cuda`` each have their own GPU);
* **host budget** (pinned host RAM for models off the GPU): by default half of the node's RAM on
  a GPU node (none on the CPU), divided between every local rank, since they all pin from the
  same RAM.

A budget given on the command line (``--vram-budget``, ``--host-budget``) is for the whole node
and is divided between the local ranks the same way: ``--nproc 4 --vram-budget 96GiB`` gives each
rank 24 GiB.

``rank_budget`` takes the machine's sizes as arguments (``ram_bytes``, ``device_bytes``), read
from the system only when not given. Imports no torch (a CUDA device's size is read lazily).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEVICE_SHARE = 0.9      # of a GPU's memory
CPU_SHARE = 0.6         # of the RAM, for models on the CPU
PINNED_SHARE = 0.5      # of the RAM, for pinned copies on a GPU node


@dataclass(frozen=True)
class Placement:
    """Where one rank sits on its node: ``local_ranks`` ranks on this node, ``sharing`` of them
    (this one included) on this rank's device."""

    rank: int = 0
    local_rank: int = 0
    local_ranks: int = 1
    sharing: int = 1

    def __post_init__(self) -> None:
        if self.local_ranks < 1 or not 1 <= self.sharing <= self.local_ranks:
            raise ValueError(f"a rank placement needs 1 <= sharing <= local_ranks, got {self}")


@dataclass(frozen=True)
class MemoryRequest:
    """What the command line asked for the whole node (None: the defaults)."""

    vram: int | None = None
    host: int | None = None


@dataclass(frozen=True)
class RankBudget:
    """What one rank's models may hold: ``budget`` bytes on ``device`` and ``host_budget`` bytes
    of pinned host RAM. ``capacity``: the rank's share of what its GPU physically holds (None
    off CUDA), which a model must fit while it loads whatever the budget says."""

    device: str
    budget: int
    host_budget: int
    placement: Placement = Placement()
    capacity: int | None = None

    @property
    def owner(self) -> str:
        """``rank 0 on cuda:0``."""
        return f"rank {self.placement.rank} on {self.device}"


def host_ram() -> int:
    """This machine's RAM in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 16 << 30


def device_memory(device: str) -> int:
    """Total memory of a CUDA device in bytes."""
    import torch

    _, total = torch.cuda.mem_get_info(torch.device(device))
    return int(total)


def rank_budget(device: str, placement: Placement = Placement(), request: MemoryRequest = MemoryRequest(),
                *, ram_bytes: int | None = None, device_bytes: int | None = None) -> RankBudget:
    """This rank's share of the node's memory (see the module's doc)."""
    cuda = device.startswith("cuda")
    capacity = None
    if cuda:
        total = device_bytes if device_bytes is not None else device_memory(device)
        capacity = total // placement.sharing
    if request.vram is not None:
        budget = request.vram // placement.local_ranks
    elif cuda:
        budget = int(total * DEVICE_SHARE) // placement.sharing
    else:
        ram = ram_bytes if ram_bytes is not None else host_ram()
        budget = int(ram * CPU_SHARE) // placement.sharing
    if request.host is not None:
        host = request.host // placement.local_ranks
    elif cuda:
        ram = ram_bytes if ram_bytes is not None else host_ram()
        host = int(ram * PINNED_SHARE) // placement.local_ranks
    else:
        host = 0
    return RankBudget(device, budget, host, placement, capacity)


def human(nbytes: int) -> str:
    """``64.2 GiB``, ``3.5 MiB``, ``12.0 KiB``, ``512 B``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"
