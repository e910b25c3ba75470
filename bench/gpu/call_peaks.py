"""Where a render's GPU memory goes: ``cinesynth render`` in this process with every heavy
component's call logged (text and image encoders, VAE encode and decode, each transformer's
forward, the Animate working copy's build), each with what the GPU held before it, the running
peak after it and its seconds.

    python bench/gpu/call_peaks.py specs/examples/nightly_gpu.yaml --vram-budget 24GiB --keep-going
    python bench/gpu/call_peaks.py specs/examples/short.yaml                # any spec; off CUDA: seconds only

The arguments after the spec go to ``cinesynth render``. The peak is PyTorch's
``max_memory_allocated`` as it runs (the renderer resets it at the start of each model stage, so the
column is the stage's peak so far, not the call's alone). Each call is bracketed by a device
synchronize, which the stages' own timings then include. Consecutive calls of one component are one
row. The rows go to ``$OUT/call_peaks.json`` when OUT is set.
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any, Callable

import torch

from _common import Patches, save, table

#: (module, class, method, label): the calls logged, where the module imports.
CALLS = (
    ("transformers", "UMT5EncoderModel", "forward", "UMT5-XXL text encoder"),
    ("transformers", "Qwen3ForCausalLM", "forward", "Qwen3 text encoder"),
    ("transformers", "CLIPVisionModel", "forward", "CLIP image encoder"),
    ("diffusers", "AutoencoderKLWan", "encode", "Wan VAE encode"),
    ("diffusers", "AutoencoderKLWan", "decode", "Wan VAE decode"),
    ("diffusers", "AutoencoderKLFlux2", "decode", "FLUX.2 VAE decode"),
    ("diffusers", "Flux2Transformer2DModel", "forward", "FLUX.2 transformer forward"),
    ("diffusers", "WanTransformer3DModel", "forward", "Wan I2V expert forward"),
    ("diffusers", "WanAnimateTransformer3DModel", "forward", "Animate transformer forward"),
    ("cinesynth_batch.models.s2v.transformer", "WanS2VTransformer3DModel", "forward", "S2V transformer forward"),
    ("cinesynth_batch.runtime.animate", "AnimateRuntime", "apply", "Animate working copy (LoRAs fused, fp8, blocks placed)"),
)


class CallLog(Patches):
    """Wraps the listed methods; each call appends ``{stage, label, before, after, peak, s}`` (bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self.stage = ""
        self.cuda = torch.cuda.is_available()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _held(self) -> int | None:
        return int(torch.cuda.memory_allocated()) if self.cuda else None

    def logged(self, label: str) -> Callable[[Callable], Callable]:
        def make(fn):
            def logged(*args, **kwargs):
                self._sync()
                before, t0 = self._held(), time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._sync()
                    self.calls.append({"stage": self.stage, "label": label, "before": before, "after": self._held(),
                                       "peak": int(torch.cuda.max_memory_allocated()) if self.cuda else None,
                                       "s": time.perf_counter() - t0})
            return logged
        return make

    def staged(self, fn: Callable) -> Callable:
        """Tag each call with the stage that made it (``run_module(plan, st, ...)``)."""
        def run_module(runner, plan, st, *args, **kwargs):
            self.stage = st.node.id
            try:
                return fn(runner, plan, st, *args, **kwargs)
            finally:
                self.stage = ""
        return run_module

    def __enter__(self) -> "CallLog":
        from cinesynth_batch.execute.runner import LocalExecutor

        self.wrap(LocalExecutor, "run_module", self.staged)
        for module, cls, method, label in CALLS:
            try:
                owner = getattr(importlib.import_module(module), cls)
            except (ImportError, AttributeError):
                continue
            self.wrap(owner, method, self.logged(label))
        return self

    def rows(self) -> list[dict[str, Any]]:
        """Runs of consecutive calls of one component in one stage, in order."""
        rows: list[dict[str, Any]] = []
        for call in self.calls:
            if rows and (rows[-1]["stage"], rows[-1]["label"]) == (call["stage"], call["label"]):
                row = rows[-1]
                row["calls"] += 1
                row["s"] += call["s"]
                row["held"].append(call["before"])
                row["peak"] = call["peak"]
            else:
                rows.append({"stage": call["stage"], "label": call["label"], "calls": 1, "s": call["s"], "held": [call["before"]],
                             "peak": call["peak"]})
        return rows


def held_text(values: list[int | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return ""
    low, high = f"{min(known) / 2**30:.2f}", f"{max(known) / 2**30:.2f}"
    return low if low == high else f"{low}–{high}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("render_args", nargs=argparse.REMAINDER, help="passed to cinesynth render")
    args = ap.parse_args()

    from cinesynth_batch.cli import main as cli

    code: Any = 0
    with CallLog() as log:
        try:
            cli(["render", args.spec, *args.render_args])
        except SystemExit as exc:
            code = exc.code
    rows = log.rows()
    shown = [{"stage": r["stage"], "call": r["label"], "calls": r["calls"], "held before, GiB": held_text(r["held"]),
              "running peak after, GiB": "" if r["peak"] is None else f"{r['peak'] / 2**30:.2f}", "s": round(r["s"], 2)}
             for r in rows]
    print(table(shown, ["stage", "call", "calls", "held before, GiB", "running peak after, GiB", "s"]), flush=True)
    save("call_peaks.json", {"spec": args.spec, "render_args": args.render_args, "exit": code,
                             "device": torch.cuda.get_device_name() if log.cuda else "cpu",
                             "calls": log.calls})
    if code not in (0, None):
        raise SystemExit(code)


if __name__ == "__main__":
    main()
