"""Shared pieces of the GPU benchmarks: CUDA-event timing, random-weight model construction on the
device, the bf16 matmul ceiling and the Wan2.2 A14B expert's shape and FLOP count."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: diffusers ``WanTransformer3DModel`` arguments of one Wan2.2-I2V-A14B expert (the catalog's, the
#: configuration profile ``shapes`` builds).
from cinesynth_batch.catalog.shapes.configs import A14B_EXPERT  # noqa: E402

SIZES = {"480p": (480, 832, 81), "720p": (720, 1280, 81)}
TEXT_LEN = 512


def timed(fn, reps: int, warm: int = 1) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after ``warm`` untimed ones (CUDA events)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    return sorted(times)[len(times) // 2]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_on(fn, device: torch.device, reps: int, warm: int):
    """(median seconds, last output) of ``fn``: CUDA events on a GPU, a wall clock on the CPU."""
    for _ in range(warm):
        fn()
    sync(device)
    times, result = [], None
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            result = fn()
            b.record()
            torch.cuda.synchronize(device)
            times.append(a.elapsed_time(b) / 1000)
        else:
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], result


def build(factory, device: str = "cuda", dtype=torch.bfloat16):
    """A model built directly on ``device`` in ``dtype`` with seeded random weights; (model, seconds)."""
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    t0 = time.time()
    try:
        with torch.device(device):
            model = factory().eval()
    finally:
        torch.set_default_dtype(torch.float32)
    return model, time.time() - t0


def matmul_peak() -> float:
    """Measured bf16 matmul FLOP/s (8192^3), the ceiling the FLOP floors are taken against."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: a @ b, 20, 5)
    del a, b
    return 2 * n**3 / t


def wan_tokens(h: int, w: int, f: int) -> int:
    return ((f - 1) // 4 + 1) * (h // 16) * (w // 16)


def wan_flops(tokens: int, d: int = 5120, ffn: int = 13824, layers: int = 40, txt: int = TEXT_LEN) -> float:
    """FLOPs of one Wan DiT forward: projections, FFN, self-attention, text cross-attention."""
    n = tokens
    return layers * (8 * n * d * d + 4 * n * d * d + 4 * n * d * ffn + 4 * n * n * d + 4 * txt * d * d
                     + 4 * n * txt * d)


def wan_inputs(h: int, w: int, f: int, batch: int = 1, seed: int = 1):
    """Random (latents, timestep, text context) of a Wan I2V forward at ``h``x``w``x``f``."""
    g = torch.Generator("cuda").manual_seed(seed)
    lf, lh, lw = (f - 1) // 4 + 1, h // 8, w // 8
    x = torch.randn(batch, 36, lf, lh, lw, device="cuda", dtype=torch.bfloat16, generator=g)
    ctx = torch.randn(batch, TEXT_LEN, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    t = torch.full((batch,), 500.0, device="cuda")
    return x, t, ctx


def gib(n: int) -> float:
    return round(n / 2**30, 1)


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.float(), ref.float()
    return float((a - ref).norm() / ref.norm())


def save(name: str, data: dict) -> None:
    print(json.dumps(data, indent=1), flush=True)
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"], name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


class Patches:
    """Attributes replaced by wrappers until ``restore`` (``with``: at the end of the block), the
    originals put back in reverse order. The benchmarks that watch a render in their own process
    time its calls this way."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, make: Callable[[Any], Callable]) -> bool:
        """Set ``owner.name`` (a class or a module) to ``make(original)``; False where ``owner``
        does not define ``name`` itself."""
        fn = vars(owner).get(name)
        if fn is None:
            return False
        setattr(owner, name, functools.wraps(fn)(make(fn)))
        self._undo.append((owner, name, fn))
        return True

    def restore(self) -> None:
        while self._undo:
            owner, name, fn = self._undo.pop()
            setattr(owner, name, fn)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
