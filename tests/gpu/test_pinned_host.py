"""Exactly sized pinned buffers (``runtime/pinned.py``) on a real CUDA device: page-locked, no
power-of-two rounding, copied to and from the GPU exactly, and what a model moved to pinned RAM
and back holds (skipped without CUDA)."""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")

from cinesynth_batch.runtime.pinned import Arena, pin_in_place  # noqa: E402
from cinesynth_batch.runtime.swap import _HOST_COPY_ATTR, host_nbytes, swap_model  # noqa: E402

FFN = (5120, 13824)          # a Wan2.2 feed-forward weight in bf16: 141.6 MB, pinned by PyTorch as 256 MB


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _round_trip(sources):
    """An arena of ``sources``, compared on the GPU, released: True when every copy was exact."""
    arena, views = Arena.holding(sources)
    exact = all(torch.equal(v.to("cuda", non_blocking=True), s) for s, v in zip(sources, views))
    arena.release()
    del views, arena
    gc.collect()
    return exact


def test_an_arena_pins_exactly_what_it_holds_and_gives_it_back():
    sources = [torch.randn(FFN, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    payload = sum(t.numel() * t.element_size() for t in sources)
    # the first page-locking and the kernels the copies and checks load (lazily, then kept) raise the
    # process's memory once: one round trip of the same tensors first keeps them out of the count
    assert _round_trip(sources)
    torch.cuda.synchronize()
    before = _rss()
    arena, views = Arena.holding(sources)
    grown = _rss() - before
    assert arena.registered and all(v.is_pinned() for v in views)
    assert payload <= grown < payload * 1.05                     # PyTorch's allocator: 1.81x here
    assert all(torch.equal(v.to("cuda", non_blocking=True), s) for s, v in zip(sources, views))
    arena.release()
    del views, arena                  # no name may keep a view: one view holds the whole buffer
    gc.collect()
    assert _rss() - before < payload * 0.05                      # the memory went back


def test_a_model_sent_to_pinned_ram_and_back_is_unchanged_and_counted_once():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(4)]).to("cuda", torch.bfloat16)
    x = torch.randn(8, 2048, device="cuda", dtype=torch.bfloat16)
    expected = model(x)
    swap_model(model, "host")                    # as a residency sends it to pinned RAM
    copy = getattr(model, _HOST_COPY_ATTR)       # the copy host_nbytes counts
    payload = sum(p.numel() * p.element_size() for p in model.parameters())
    assert all(p.device.type == "cpu" and p.is_pinned() for p in model.parameters())
    assert copy.pinned_bytes == payload and payload <= host_nbytes(model) < payload + 4096
    swap_model(model, "cuda")
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert torch.equal(model(x), expected)
    assert host_nbytes(model) == sum(a.nbytes for a in copy.arenas)   # its pinned copy stays


class Blocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(1024, 1024) for _ in range(6))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_offloaded_blocks_stream_from_exact_pinned_buffers():
    from cinesynth_batch.runtime.memory import drop_offload, offload_blocks, offloaded

    torch.manual_seed(1)
    model = Blocks().to("cuda", torch.bfloat16)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    expected = model(x)
    done = offload_blocks(model, "cuda", 4)
    assert done.arenas and all(a.registered for a in done.arenas)
    assert all(p.is_pinned() for b in model.blocks[:4] for p in b.parameters())
    assert torch.equal(model(x), expected)
    arenas = list(offloaded(model).arenas)
    drop_offload(model)
    assert not any(a.registered for a in arenas)


def test_pin_in_place_from_the_gpu_frees_the_device_copy():
    t = torch.nn.Parameter(torch.randn(FFN, device="cuda", dtype=torch.bfloat16))
    expected = t.detach().clone()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    arenas = pin_in_place([t])
    assert t.device.type == "cpu" and t.is_pinned() and len(arenas) == 1
    assert torch.cuda.memory_allocated() <= before - t.numel() * t.element_size()
    assert torch.equal(t.detach().to("cuda"), expected)


def test_a_lora_load_leaves_the_offloaded_weights_in_their_pinned_buffers():
    """A LoRA loaded through a pipeline makes diffusers re-offload the model its own way; putting
    the renderer's layout back copies only the adapter's new tensors, never the blocks again."""
    from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading

    from cinesynth_batch.runtime.memory import offload_blocks, offloaded, restore_offload

    torch.manual_seed(2)
    model = Blocks().to("cuda", torch.bfloat16)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    expected = model(x)
    done = offload_blocks(model, "cuda")
    weights = [p for b in model.blocks for p in b.parameters()]
    where = [p.data_ptr() for p in weights]
    _maybe_remove_and_reapply_group_offloading(model)          # what a pipeline's LoRA load does
    for block in model.blocks:                                 # an adapter's new tensor per block
        block.register_parameter("extra", torch.nn.Parameter(torch.zeros(1024, dtype=torch.bfloat16)))
    assert restore_offload(model) is True
    again = offloaded(model)
    assert [p.data_ptr() for p in weights] == where            # the same pinned bytes
    assert again.arenas[:len(done.arenas)] == done.arenas and all(a.registered for a in again.arenas)
    assert len(again.arenas) == len(done.arenas) + 1           # one more buffer: the new tensors
    assert all(b.extra.is_pinned() for b in model.blocks)
    assert torch.equal(model(x), expected)
