"""Exactly sized pinned buffers (``runtime/pinned.py``) and what a model holds in host RAM."""

import gc

import pytest
import torch

from cinesynth_batch.runtime import pinned
from cinesynth_batch.runtime.pinned import ALIGN, Arena, chunks, pin_in_place
from cinesynth_batch.runtime.swap import (HOST_TENSORS_ATTR, HostCopy, host_nbytes, keep_component_on_host,
                                          swap_component, swap_model)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5120 // 64, 13824 // 64, generator=g).to(torch.bfloat16),   # odd byte counts
            torch.randn(7, generator=g),
            torch.randn(3, 5, generator=g).to(torch.float8_e4m3fn),
            torch.tensor(2.5),
            torch.zeros(0, 4),
            torch.rand(9, generator=g) > 0.5,
            torch.arange(12, dtype=torch.int64).reshape(3, 4).t()]                      # not contiguous


def test_an_arena_is_the_exact_aligned_total_and_holds_equal_copies():
    sources = _tensors()
    arena, views = Arena.holding(sources, pin=False)
    sizes = [t.numel() * t.element_size() for t in sources]
    assert arena.nbytes == sum((n + ALIGN - 1) // ALIGN * ALIGN for n in sizes)
    assert arena.nbytes < sum(sizes) + ALIGN * len(sizes)
    base = arena.buffer.data_ptr()
    offsets = [v.data_ptr() - base for v in views if v.numel()]
    assert all(off % ALIGN == 0 for off in offsets) and offsets == sorted(offsets)
    for src, view in zip(sources, views):
        assert (view.dtype, view.shape) == (src.dtype, src.shape) and view.is_contiguous()
        assert torch.equal(view.view(torch.uint8) if view.dtype == torch.float8_e4m3fn else view,
                           src.view(torch.uint8) if src.dtype == torch.float8_e4m3fn else src)
        assert view.untyped_storage().data_ptr() == base          # one buffer behind every view
    views[1].zero_()
    assert sources[1].abs().sum() > 0                           # copies, not aliases
    assert not arena.registered


def test_pinning_a_module_in_place_keeps_its_output_arena_by_arena():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32))
    x = torch.randn(4, 16)
    before = model(x)
    params = list(model.parameters())                    # 2048, 128, 128, 128 bytes
    assert chunks(params, limit=2048) == [[0], [1, 2, 3]]
    assert chunks(params, limit=1024) == [[0], [1, 2, 3]]   # a tensor over the limit goes alone
    arenas = pin_in_place(params, pin=False, limit=2048)
    assert [a.nbytes for a in arenas] == [2048, 3 * ALIGN]
    assert {p.untyped_storage().data_ptr() for p in params} == {a.buffer.data_ptr() for a in arenas}
    assert torch.equal(model(x), before)
    assert pin_in_place([], pin=False) == []


class _CudaRuntimeFake:
    """Stands in for the CUDA runtime (no GPU here): records page-lock calls."""

    def __init__(self):
        self.calls = []

    def cudaHostRegister(self, ptr, size, flags):
        self.calls.append(("register", ptr, size))
        return 0

    def cudaHostUnregister(self, ptr):
        self.calls.append(("unregister", ptr))
        return 0


def test_an_arena_is_page_locked_once_and_unlocked_once_fake_cuda_runtime(monkeypatch):
    fake = _CudaRuntimeFake()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    arena, views = Arena.holding(_tensors()[:3])
    ptr = arena.buffer.data_ptr()
    assert arena.registered and fake.calls == [("register", ptr, arena.nbytes)]
    arena.release()
    arena.release()
    assert fake.calls == [("register", ptr, arena.nbytes), ("unregister", ptr)]
    assert torch.equal(views[1], _tensors()[1])                 # still valid memory, only not locked

    dropped, _ = Arena.holding(_tensors()[:2])                   # never released: unlocked when collected
    ptr2 = dropped.buffer.data_ptr()
    del dropped
    gc.collect()
    assert fake.calls[-2:] == [("register", ptr2, fake.calls[-2][2]), ("unregister", ptr2)]


def test_a_failed_page_lock_is_an_error(monkeypatch):
    fake = _CudaRuntimeFake()
    fake.cudaHostRegister = lambda ptr, size, flags: 2          # cudaErrorMemoryAllocation
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    with pytest.raises(RuntimeError, match=r"cudaHostRegister of \d+ bytes failed: 2"):
        Arena(1024)


def test_host_bytes_count_each_buffer_once():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    payload = sum(p.numel() * p.element_size() for p in model.parameters())
    assert host_nbytes(model) == payload                         # plain host tensors, one buffer each
    copy = HostCopy([model])
    copy.to_host()                                               # one arena, the module's tensors in it
    assert len(copy.arenas) == 1 and copy.pinned_bytes == payload
    arena = copy.arenas[0].nbytes                                # the payload, each tensor 256-aligned
    assert payload < arena < payload + 4 * ALIGN
    assert host_nbytes(model) == arena                           # once: every tensor is a view of it
    shared = torch.nn.Linear(64, 64)
    shared.weight = model[0].weight                              # a tied weight counts once
    assert host_nbytes(torch.nn.ModuleList([model, shared])) == arena + shared.bias.numel() * 4


def test_tensors_an_object_lists_count_as_held():
    class Pipe:
        def __init__(self):
            self.transformer = torch.nn.Linear(32, 32)
            self.components = {"transformer": self.transformer}

    pipe = Pipe()
    rest = [torch.zeros(1000)]
    setattr(pipe, HOST_TENSORS_ATTR, lambda: rest)
    base = host_nbytes(pipe)
    assert base == (32 * 32 + 32) * 4 + 4000
    swap_component(pipe, "transformer", "host")                  # parked: its copy replaces its data
    arena = 32 * 32 * 4 + ALIGN                                  # the weight, then the bias at 4096
    assert host_nbytes(pipe) == arena + 4000
    rest.clear()
    assert host_nbytes(pipe) == arena


def test_empty_host_cache_is_a_no_op_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = []
    monkeypatch.setattr(torch._C, "_host_emptyCache", lambda: calls.append(1), raising=False)
    pinned.empty_host_cache()
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pinned.empty_host_cache()
    assert calls == [1]


def test_a_component_kept_on_host_stays_there_when_its_pipeline_moves():
    class Pipe:
        def __init__(self):
            self.transformer = torch.nn.Linear(8, 8)
            self.vae = torch.nn.Linear(8, 8)
            self.components = {"transformer": self.transformer, "vae": self.vae}

    pipe = Pipe()
    rest = pipe.transformer.weight.data
    keep_component_on_host(pipe, "transformer")
    swap_model(pipe, "host")
    assert pipe.transformer.weight.data.data_ptr() == rest.data_ptr()      # not copied
    copy = pipe._cinesynth_host_copy
    assert id(pipe.transformer) in copy.parked and copy.pinned_bytes == (8 * 8 + 8) * 4   # the VAE only
    swap_model(pipe, "cpu")
    assert pipe.transformer.weight.data.data_ptr() == rest.data_ptr()



def test_tensor_subclasses_are_left_to_their_own_storage():
    class Wrapped(torch.Tensor):
        pass

    plain_t = torch.nn.Parameter(torch.ones(4))
    sub = torch.nn.Parameter(torch.ones(4).as_subclass(Wrapped))
    assert pinned.plain(plain_t.data) and not pinned.plain(sub.data)
    arenas = pin_in_place([plain_t, sub], pin=False)
    assert len(arenas) == 1 and arenas[0].nbytes == ALIGN
    assert plain_t.untyped_storage().data_ptr() == arenas[0].buffer.data_ptr()
    assert sub.untyped_storage().data_ptr() != arenas[0].buffer.data_ptr()
