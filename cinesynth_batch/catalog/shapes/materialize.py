"""Seeded random weights made directly on the device that will hold them.

``empty_model(factory)`` constructs a model with its parameters on the ``meta`` device (no memory)
and its buffers real, as ``from_pretrained`` does before it reads a checkpoint
(``accelerate.init_empty_weights(include_buffers=False)``). ``materialize(model, device, dtype,
seed)`` then gives every parameter storage on ``device`` in the dtype ``from_pretrained(dtype=...)``
would give it (the modules the library keeps in float32 stay float32) and fills it from one seeded
generator, parameter by parameter in name order: weights N(0, 1/fan_in), norm scales 1, biases 0.
Nothing is read or written on disk; at no point does the model exist twice.

A model whose home is host RAM while its values are drawn on the GPU (``draw_on``: a component a
pipeline keeps off the device) is filled run by run into exactly sized page-locked arenas
(``runtime/pinned.py``), so the stage that streams it from pinned RAM pins nothing again and the
copies run at pinned speed.

On ``device="meta"`` nothing is allocated: the model keeps its shapes and gets its dtypes, which is
how the tests count parameters and bytes of the 14B models on a CPU machine.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

#: Attribute under which a model built in host RAM keeps the arenas its parameters live in.
ARENAS_ATTR = "_cinesynth_arenas"


@contextmanager
def _default_dtype(dtype) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def empty_model(factory: Callable[[], Any]) -> Any:
    """``factory()`` with parameters on ``meta`` and buffers on the CPU in their own dtypes."""
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False), _default_dtype(torch.float32):
        return factory()


def fp32_modules(model: Any, dtype) -> tuple[str, ...]:
    """Module names ``from_pretrained(dtype=dtype)`` keeps in float32 for this model: diffusers'
    ``_keep_in_fp32_modules``; transformers' ``_keep_in_fp32_modules_strict`` (and, for float16, its
    ``_keep_in_fp32_modules``)."""
    import torch
    from diffusers import ModelMixin

    if dtype == torch.float32:
        return ()
    if isinstance(model, ModelMixin):
        return tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    names = list(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        names += list(getattr(model, "_keep_in_fp32_modules", None) or ())
    return tuple(names)


def _fill(t, name: str, gen) -> None:
    import torch

    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias" or leaf.endswith("_bias"):
        t.zero_()
    elif t.dim() == 1 and (leaf in ("weight", "gamma", "scale") or "norm" in name):
        t.fill_(1.0)
    elif t.dim() >= 2:
        fan_in = math.prod(t.shape[1:])
        t.copy_(torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype).mul_(fan_in ** -0.5))
    else:
        t.copy_(torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype).mul_(0.02))


def _set(model: Any, name: str, value: Any, buffer: bool = False) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    if buffer:
        module._buffers[leaf] = value
    else:
        module._parameters[leaf] = value


def materialize(model: Any, device: str, dtype, seed: int, draw_on: str | None = None) -> Any:
    """Give ``model``'s parameters storage on ``device`` in their load dtypes, filled with seeded
    random values drawn on ``draw_on`` (default: ``device``; a model whose home is host RAM draws on
    the GPU and is copied); move its buffers to ``device``. Tied parameters stay tied."""
    import torch

    dev = torch.device(device)
    keep = fp32_modules(model, dtype)
    by_tensor: dict[int, list[str]] = {}
    tensors: dict[int, Any] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
        tensors[id(param)] = param
    draw = torch.device(draw_on) if draw_on else dev
    gen = None if dev.type == "meta" else torch.Generator(device=draw).manual_seed(seed)
    params = []                    # (names, shape, load dtype) of each tensor, in name order
    for key in sorted(by_tensor, key=lambda k: by_tensor[k][0]):
        names, param = by_tensor[key], tensors[key]
        target = param.dtype
        if param.is_floating_point():
            target = torch.float32 if any(k in names[0].split(".") for k in keep) else dtype
        params.append((names, param.shape, target))
    with torch.no_grad():
        if draw_on is not None and dev.type == "cpu":
            setattr(model, ARENAS_ATTR, _into_arenas(model, params, draw, gen))
        else:
            for names, shape, target in params:
                if dev.type == "meta":
                    value = torch.empty(shape, dtype=target, device=dev)
                else:
                    value = torch.empty(shape, dtype=target, device=draw)
                    _fill(value, names[0], gen)
                    if draw != dev:
                        value = value.to(dev)
                _share(model, names, value)
        for name, buf in list(model.named_buffers()):
            _set(model, name, buf.to(dev), buffer=True)
    return model.eval().requires_grad_(False)


def _share(model: Any, names: list[str], value: Any) -> None:
    """``value`` as the parameter under every one of ``names`` (tied parameters stay tied)."""
    import torch

    new = torch.nn.Parameter(value, requires_grad=False)
    for name in names:
        _set(model, name, new)


def _into_arenas(model: Any, params: list, draw, gen) -> list:
    """Fill ``model``'s parameters in host RAM through arenas (``runtime/pinned.py``; page-locked
    where CUDA is present): each run of at most ``CHUNK`` bytes is drawn on ``draw`` and copied into
    its arena in one pass. Returns the arenas (the model keeps them, so they stay page-locked)."""
    import torch

    from ...runtime.pinned import Arena, chunks

    arenas = []
    for run in chunks([torch.empty(shape, dtype=target, device="meta") for _, shape, target in params]):
        drawn = []
        for i in run:
            names, shape, target = params[i]
            drawn.append(torch.empty(shape, dtype=target, device=draw))
            _fill(drawn[-1], names[0], gen)
        arena, views = Arena.holding(drawn)
        arenas.append(arena)
        del drawn
        for i, view in zip(run, views):
            _share(model, params[i][0], view)
    return arenas


def build_module(factory: Callable[[], Any], device: str, dtype, seed: int, draw_on: str | None = None) -> Any:
    """``materialize(empty_model(factory), ...)``: the module at full size on ``device``."""
    return materialize(empty_model(factory), device, dtype, seed, draw_on)
