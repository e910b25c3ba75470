"""Where a stage's time went: model loading, and each denoising step (the first one apart, since
it pays for compiling), read off the progress calls a stage makes (``ctx.progress(step, total)``:
step 0 when a segment's denoising starts, step k when its k-th step ends)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Callable


@dataclass
class StepClock:
    """Timestamps of the progress calls of one stage run. On CUDA each one waits for the device
    first (``sync``), so a step's time is the device's, not the time to queue it."""

    sync: Callable[[], None] | None = None
    steps: list[float] = field(default_factory=list)
    _first: float | None = None
    _last: float | None = None

    def tick(self, step: int, segment_step: int | None = None) -> None:
        """Step ``step`` ended (0, or a segment's step 0: its denoising starts)."""
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        if self._first is None:
            self._first = now
        if step > 0 and segment_step != 0 and self._last is not None:
            self.steps.append(now - self._last)
        self._last = now

    def facts(self, load_seconds: float, started: float | None = None, ended: float | None = None) -> dict[str, Any]:
        """``{"load_s", "steps", "first_step_s", "step_s", "denoise_s", "setup_s", "finish_s"}``
        (steps only when some ran): ``step_s`` is the median of the steps after the first;
        given the run's ``started`` and ``ended`` clock readings, ``setup_s`` is the time before
        the first progress call less the load (inputs, LoRAs, placing weights) and ``finish_s``
        the time after the last one (decoding, writing and muxing the clip)."""
        out: dict[str, Any] = {"load_s": round(load_seconds, 3)}
        if self.steps:
            rest = self.steps[1:] or self.steps
            out.update(steps=len(self.steps), first_step_s=round(self.steps[0], 3),
                       step_s=round(median(rest), 3), denoise_s=round(sum(self.steps), 3))
        if started is not None and self._first is not None:
            out["setup_s"] = round(max(0.0, self._first - started - load_seconds), 3)
        if ended is not None and self._last is not None:
            out["finish_s"] = round(ended - self._last, 3)
        return out


@dataclass
class DevicePeak:
    """The most device memory allocated during one stage run (CUDA only: None elsewhere). The
    device's peak counter is reset when the run starts; the highest value it held before is kept
    on ``holder.gpu_peak`` (the rank's residency), so that the rank's peak stays the render's
    (``runner.rank_memory``)."""

    device: str
    holder: Any = None

    def __post_init__(self) -> None:
        if self._cuda():
            import torch

            dev = torch.device(self.device)
            self._keep(int(torch.cuda.max_memory_allocated(dev)))
            torch.cuda.reset_peak_memory_stats(dev)

    def _cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def _keep(self, value: int) -> None:
        if self.holder is not None and hasattr(self.holder, "gpu_peak"):
            self.holder.gpu_peak = max(self.holder.gpu_peak, value)

    def bytes(self) -> int | None:
        if not self._cuda():
            return None
        import torch

        value = int(torch.cuda.max_memory_allocated(torch.device(self.device)))
        self._keep(value)
        return value


def device_sync(device: str) -> Callable[[], None] | None:
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.synchronize


def timing_text(timing: dict[str, Any] | None) -> str:
    """`` (load 40.1s; 4 steps: first 12.3s, then 5.1s each; GPU peak 22.4 GiB)``, or "" when there
    is nothing to say."""
    if not timing:
        return ""
    parts = []
    if timing.get("load_s"):
        parts.append(f"load {timing['load_s']:.1f}s")
    if timing.get("steps"):
        n = timing["steps"]
        parts.append(f"{n} step{'s' if n != 1 else ''}: first {timing['first_step_s']:.2f}s"
                     + (f", then {timing['step_s']:.2f}s each" if n > 1 else ""))
    if timing.get("peak_gpu_bytes"):
        parts.append(f"GPU peak {timing['peak_gpu_bytes'] / (1 << 30):.1f} GiB")
    return f" ({'; '.join(parts)})" if parts else ""
