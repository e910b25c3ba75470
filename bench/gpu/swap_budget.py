"""Model swapping and small-VRAM runs of a full-size Wan2.2 A14B expert (random bf16 weights).

1. Swap: the expert (28.6 GB) host->device and back through ``runtime/swap.py`` (pinned host
   copies), against the copy floor measured in the same run (one pinned buffer of the same size,
   one ``copy_``), and against plain ``model.to()`` from pageable RAM.
2. Residency: 8 scenes alternating two experts through ``catalog/residency.py``: with a budget
   that holds both, and with one that holds one (the other waits in pinned RAM).
3. Budget: the 720p CFG step with the expert's blocks offloaded (block-level group offloading
   with a prefetch stream, ``runtime/memory.py``) against the same step fully resident, with the
   peak memory of each.

    python bench/gpu/swap_budget.py [swap,residency,budget]   # $OUT/swap_budget.json when OUT is set
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from _common import A14B_EXPERT, SIZES, build, gib, save, table, timed, wan_inputs
from cinesynth_batch.runtime.accel import compile_blocks
from cinesynth_batch.runtime.attention import set_attention
from cinesynth_batch.runtime.memory import offload_blocks
from cinesynth_batch.catalog.residency import Residency
from cinesynth_batch.runtime.swap import HostCopy
from wan_step import cfg_sequential


def expert():
    from diffusers import WanTransformer3DModel

    return build(lambda: WanTransformer3DModel(**A14B_EXPERT))[0]


def wall(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def swap_section(out: dict) -> None:
    model = expert()
    nbytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    copy = HostCopy([model])
    pin_s = wall(copy.to_host)
    torch.cuda.empty_cache()
    ups, downs = [], []
    for _ in range(3):
        ups.append(wall(lambda: copy.to_device("cuda")))
        downs.append(wall(copy.to_host))
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    flat_pin_s = time.perf_counter() - t0
    pageable = torch.ones(nbytes, dtype=torch.uint8)          # pages touched: only the pinning is timed
    t0 = time.perf_counter()
    registered = torch.cuda.cudart().cudaHostRegister(pageable.data_ptr(), nbytes, 0)
    register_s = time.perf_counter() - t0
    torch.cuda.cudart().cudaHostUnregister(pageable.data_ptr())
    del pageable
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    floor_up = timed(lambda: dev.copy_(host, non_blocking=True), 3)
    floor_down = timed(lambda: host.copy_(dev, non_blocking=True), 3)
    del host, dev
    torch.cuda.empty_cache()
    pageable = {k: v.clone() for k, v in model.state_dict().items()}   # plain RAM copy of the weights
    model.load_state_dict(pageable)
    del pageable
    naive_up = wall(lambda: model.to("cuda"))
    naive_down = wall(lambda: model.to("cpu"))
    up, down = sorted(ups)[1], sorted(downs)[1]
    out["swap"] = {
        "bytes_gb": round(nbytes / 1e9, 2), "pin_once_s": round(pin_s, 2),
        "one_pinned_buffer_s": round(flat_pin_s, 2),
        "register_pageable_s": round(register_s, 2), "register_status": int(registered),
        "floor_h2d_s": round(floor_up, 3), "floor_h2d_gbps": round(nbytes / floor_up / 1e9, 1),
        "floor_d2h_s": round(floor_down, 3),
        "ours_h2d_s": round(up, 3), "ours_d2h_s": round(down, 4),
        "ours_round_trip_vs_floor_h2d": round((up + down) / floor_up, 3),
        "naive_to_cuda_s": round(naive_up, 2), "naive_to_cpu_s": round(naive_down, 2),
    }
    print("swap", out["swap"], flush=True)
    del model, copy
    gc.collect()
    torch.cuda.empty_cache()


class _TwoExperts:
    """A registry of two model roles whose 'load' builds a random expert on the GPU."""

    def __init__(self):
        self._specs = {r: SimpleNamespace(kind="wan-expert", label=r) for r in ("high", "low")}

    def spec(self, role, name=None):
        return self._specs[role]

    def local_path(self, role, name=None):
        return Path("/nonexistent")


def residency_section(out: dict) -> None:
    rows = []
    for label, budget in (("budget holds both", 70 << 30), ("budget holds one", 32 << 30)):
        build_s = []

        def loader(kind, path, device, dtype, room):
            t0 = time.perf_counter()
            m = expert()
            build_s.append(time.perf_counter() - t0)
            return m

        res = Residency(_TwoExperts(), device="cuda", budget=budget, host_budget=80 << 30, loader=loader)
        times = []
        for i in range(8):
            times.append(wall(lambda: res.get("high" if i % 2 == 0 else "low")))
        rows.append({"case": label, "loads": dict(res.loads), "swaps": dict(res.swaps),
                     "first_two_gets_s": round(sum(times[:2]), 2),
                     "later_gets_s": [round(t, 2) for t in times[2:]],
                     "peak_gib": gib(torch.cuda.max_memory_allocated())})
        print("residency", rows[-1], flush=True)
        res.clear()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out["residency"] = rows


def budget_section(out: dict, size: str = "720p") -> None:
    h, w, f = SIZES[size]
    x, t, ctx_c = wan_inputs(h, w, f, seed=1)
    _, _, ctx_u = wan_inputs(h, w, f, seed=2)
    model = expert()
    rows = []

    def run(label, fullgraph):
        if fullgraph is not None:
            compile_blocks(model, fullgraph=fullgraph)
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            first = wall(lambda: cfg_sequential(model, x, t, ctx_c, ctx_u))
            sec = timed(lambda: cfg_sequential(model, x, t, ctx_c, ctx_u), 1, warm=0)
        rows.append({"path": label, "step_s": round(sec, 3), "first_call_s": round(first, 1),
                     "peak_gib": gib(torch.cuda.max_memory_allocated())})
        print("budget", rows[-1], flush=True)

    set_attention(model, "fa3")
    run("resident fa3+compile", True)
    model.to("cpu")
    gc.collect()
    torch.cuda.empty_cache()
    offload_blocks(model, "cuda")     # wraps the compiled block forwards: the copies stay eager
    run("offloaded blocks fa3+compile", None)
    base = rows[0]["step_s"]
    for r in rows:
        r["x_resident"] = round(r["step_s"] / base, 3)
    out["budget"] = {"size": size, "rows": rows}


def main() -> None:
    import sys

    sections = sys.argv[1].split(",") if len(sys.argv) > 1 else ["swap", "residency", "budget"]
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name in sections:
        globals()[f"{name}_section"](out)
    if "budget" in out:
        print(table(out["budget"]["rows"], ["path", "step_s", "x_resident", "peak_gib", "first_call_s"]))
    save("swap_budget.json", out)


if __name__ == "__main__":
    main()
