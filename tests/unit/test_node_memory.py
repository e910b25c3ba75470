"""Memory on one node: budgets split between local ranks, models refused before they run when
they cannot fit, and the memory each rank used in the manifest and the report."""

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cinesynth_batch.catalog.budget import MemoryRequest, Placement, RankBudget, human, rank_budget
from cinesynth_batch.catalog.registry import Registry
from cinesynth_batch.catalog.residency import Residency, _disk_size
from cinesynth_batch.catalog.shapes import ShapesSource, shapes_nbytes
from cinesynth_batch.cli import app
from cinesynth_batch.execute.fit import (ModelFitError, Need, check_fit, component_sizes_of, host_need, model_blocks,
                                         placed)

GiB = 1 << 30
RAM = 512 * GiB


# --------------------------------------------------------------------------- budgets per rank

def cpu_rank(n: int, i: int = 0) -> Placement:
    return Placement(rank=i, local_rank=i, local_ranks=n, sharing=n)       # CPU ranks share the RAM


def gpu_rank(n: int, i: int = 0) -> Placement:
    return Placement(rank=i, local_rank=i, local_ranks=n, sharing=1)       # one GPU each


@pytest.mark.parametrize("n", [1, 2, 4])
def test_default_budgets_are_shares_of_the_node(n):
    cpu = rank_budget("cpu", cpu_rank(n), ram_bytes=RAM)
    assert (cpu.budget, cpu.host_budget) == (int(RAM * 0.6) // n, 0)
    gpu = rank_budget(f"cuda:{n - 1}", gpu_rank(n, n - 1), ram_bytes=RAM, device_bytes=80 * GiB)
    assert gpu.budget == int(80 * GiB * 0.9)                  # its own GPU, not split
    assert gpu.host_budget == RAM // 2 // n                   # the one RAM: pinned copies split
    assert n * gpu.host_budget <= RAM // 2                    # all ranks together pin at most half
    assert gpu.owner == f"rank {n - 1} on cuda:{n - 1}"


@pytest.mark.parametrize("n", [1, 2, 4])
def test_an_explicit_budget_is_for_the_node_and_split_the_same_way(n):
    asked = MemoryRequest(vram=24 * GiB, host=64 * GiB)
    for device, placement in (("cpu", cpu_rank(n)), ("cuda:0", gpu_rank(n))):
        b = rank_budget(device, placement, asked, ram_bytes=RAM, device_bytes=80 * GiB)
        assert (b.budget, b.host_budget) == (24 * GiB // n, 64 * GiB // n)


def test_ranks_sharing_one_gpu_share_its_budget():
    shared = Placement(rank=1, local_rank=1, local_ranks=2, sharing=2)
    b = rank_budget("cuda:0", shared, ram_bytes=RAM, device_bytes=80 * GiB)
    assert b.budget == int(80 * GiB * 0.9) // 2 and b.host_budget == RAM // 4


def test_a_placement_cannot_share_with_more_ranks_than_the_node_has():
    with pytest.raises(ValueError):
        Placement(local_ranks=2, sharing=3)


def test_human_sizes():
    assert (human(int(64.2 * GiB)), human(3 << 20), human(12 << 10), human(512)) == \
        ("64.2 GiB", "3.0 MiB", "12.0 KiB", "512 B")


# --------------------------------------------------------------------------- residency counters

@pytest.fixture(scope="module")
def registry():
    reg = Registry.load("tiny", Path.cwd(), Path.cwd())
    reg.ensure_tiny()
    return reg


def test_residency_counts_bytes_moved_and_the_most_pinned_ram(registry):
    """Loads and swaps bring bytes onto the device; the pinned copies held at once are recorded."""
    copies = {}

    def mover(model, where):
        if where == "host":
            copies[id(model)] = 1000 + len(copies)

    probe = Residency(registry, budget=1 << 30, host_budget=0)
    sizes = {role: probe.sizer(probe.get(role)) for role in ("video", "image")}
    res = Residency(registry, budget=max(sizes.values()) + 1, host_budget=1 << 30, mover=mover,
                    pinned=lambda m: copies.get(id(m), 0))
    res.get("video")
    res.get("image")          # video leaves to the host (pinned 1000)
    res.get("video")          # swapped back; image leaves (pinned 1001): both copies held
    assert (dict(res.loads), dict(res.swaps)) == ({"video": 1, "image": 1}, {"video": 1})
    assert dict(res.moved) == {"video": 2 * sizes["video"], "image": sizes["image"]}
    assert res.pinned_peak == 2001 and res.pinned_bytes() == 2001


# --------------------------------------------------------------------------- fit, before anything runs

def tiny_need(registry, role):
    spec = registry.spec(role)
    return Need(role, spec.label, spec.kind, registry.local_path(role))


def test_a_model_over_the_cpu_budget_is_refused_naming_it(registry):
    need = tiny_need(registry, "video")
    size = _disk_size(need.source, "float32")
    budget = RankBudget("cpu", size - 1, 0, cpu_rank(2, 1))
    with pytest.raises(ModelFitError) as exc:
        check_fit([need], budget, "float32")
    assert exc.value.message == (f"video: tiny/wan2.2-i2v needs {human(size)}, the budget of rank 1 on "
                                 f"cpu is {human(size - 1)}")
    assert exc.value.exit_code == 3
    check_fit([need], RankBudget("cpu", size, 0), "float32")          # exactly the size: fits


def test_the_blocks_read_from_the_files_are_the_loaded_models_blocks(registry):
    from cinesynth_batch.catalog.loaders import load_model

    source = registry.local_path("video")
    blocks = model_blocks(source, "float32")
    pipe = load_model("wan-i2v", source, "cpu", "float32")
    sizes = [sum(t.numel() * t.element_size() for t in b.parameters())
             for name in ("transformer", "transformer_2") for b in getattr(pipe, name).blocks]
    assert blocks.total == sum(sizes) and blocks.largest == max(sizes) and len(sizes) >= 2


def test_on_cuda_an_offloadable_pipeline_fits_by_its_blocks(registry):
    """Over the budget, the video pipeline's blocks are offloaded: what stays plus two blocks
    must fit the device budget, the blocks the pinned RAM budget. No GPU is touched."""
    need = tiny_need(registry, "video")
    size = _disk_size(need.source, "bfloat16")
    blocks = model_blocks(need.source, "bfloat16")
    resident = size - blocks.total + 2 * blocks.largest
    assert resident < size
    check_fit([need], RankBudget("cuda:0", resident, blocks.total), "bfloat16")
    with pytest.raises(ModelFitError) as exc:
        check_fit([need], RankBudget("cuda:0", resident - 1, blocks.total), "bfloat16")
    assert exc.value.message == (f"video: tiny/wan2.2-i2v needs {human(size)} ({human(resident)} with its "
                                 f"transformer blocks offloaded), the budget of rank 0 on cuda:0 is "
                                 f"{human(resident - 1)}")
    with pytest.raises(ModelFitError) as exc:
        check_fit([need], RankBudget("cuda:0", resident, blocks.total - 1), "bfloat16")
    assert exc.value.message == (f"video: tiny/wan2.2-i2v needs {human(size)} ({human(resident)} with its "
                                 f"transformer blocks offloaded, fitting the budget of rank 0 on cuda:0), its "
                                 f"streamed blocks need {human(blocks.total)} of pinned RAM, the host budget "
                                 f"of rank 0 on cuda:0 is {human(blocks.total - 1)}")
    fp8 = Need("video", need.label, need.kind, need.source, fp8=True)   # fp8 blocks: 1 byte, not 2
    check_fit([fp8], RankBudget("cuda:0", resident, blocks.total // 2), "bfloat16")
    with pytest.raises(ModelFitError, match="streamed blocks need"):
        check_fit([fp8], RankBudget("cuda:0", resident, blocks.total // 2 - 1), "bfloat16")


def test_on_cuda_the_image_pipeline_fits_by_its_text_encoder_and_transformer_in_turn(registry):
    """Over the budget, FLUX.2-klein's text encoder and transformer take turns on the device
    (``runtime/placement.py``): the larger of them plus the VAE must fit the device budget, both
    the pinned RAM budget (each keeps its pinned copy). On the CPU the whole pipeline must fit."""
    image = tiny_need(registry, "image")
    sizes = component_sizes_of(image.source, "bfloat16")
    size = _disk_size(image.source, "bfloat16")
    assert sum(sizes.values()) == size and sizes["vae"] > 0
    pinned = sizes["text_encoder"] + sizes["transformer"]
    least = size - pinned + max(sizes["text_encoder"], sizes["transformer"])
    assert least < size
    check_fit([image], RankBudget("cuda:0", least, pinned), "bfloat16")
    with pytest.raises(ModelFitError) as exc:
        check_fit([image], RankBudget("cuda:0", least - 1, 1 << 40), "bfloat16")
    assert exc.value.message == (f"image: tiny/flux2-klein needs {human(size)} ({human(least)} with its text "
                                 f"encoder and its transformer waiting in pinned RAM when idle), the budget of "
                                 f"rank 0 on cuda:0 is {human(least - 1)}")
    with pytest.raises(ModelFitError) as exc:
        check_fit([image], RankBudget("cuda:0", least, pinned - 1), "bfloat16")
    assert exc.value.message == (f"image: tiny/flux2-klein needs {human(size)} ({human(least)} with its text "
                                 f"encoder and its transformer waiting in pinned RAM when idle, fitting the budget "
                                 f"of rank 0 on cuda:0), its text encoder and its transformer need "
                                 f"{human(pinned)} of pinned RAM, the host budget of rank 0 on cuda:0 is "
                                 f"{human(pinned - 1)}")
    with pytest.raises(ModelFitError, match=r"^image: tiny/flux2-klein needs [^(]*, the budget of rank 0 on cpu is"):
        check_fit([image], RankBudget("cpu", least, pinned), "float32")
    # loaded with its text encoder in pinned RAM: the card must hold the rest, not the whole pipeline
    loaded = size - sizes["text_encoder"]
    card = rank_budget("cuda:0", gpu_rank(1), MemoryRequest(vram=least), ram_bytes=RAM, device_bytes=loaded)
    check_fit([image], card, "bfloat16")
    small = rank_budget("cuda:0", gpu_rank(1), MemoryRequest(vram=least), ram_bytes=RAM, device_bytes=loaded - 1)
    with pytest.raises(ModelFitError) as exc:
        check_fit([image], small, "bfloat16")
    assert exc.value.message == (f"image: tiny/flux2-klein needs {human(size)} ({human(loaded)} on cuda:0 while it "
                                 f"loads, its text encoder in pinned RAM), and cuda:0 holds {human(loaded - 1)}")


def test_the_full_size_image_pipeline_fits_a_24_gib_budget_by_taking_turns():
    source = ShapesSource("flux2-klein-9b", "flux2-klein", "r")
    need = Need("image", source.label, "flux2-klein", source)
    sizes = component_sizes_of(source, "bfloat16")
    assert sum(sizes.values()) == shapes_nbytes("flux2-klein-9b")
    fit = placed(sizes, 24 * GiB)
    assert fit.waiting == ("text_encoder", "transformer")
    assert (human(fit.device), human(fit.pinned), human(fit.loaded)) == ("17.1 GiB", "32.2 GiB", "17.1 GiB")
    node = rank_budget("cuda:0", Placement(), MemoryRequest(vram=24 * GiB), ram_bytes=RAM, device_bytes=80 * GiB)
    check_fit([need], node, "bfloat16")
    consumer = rank_budget("cuda:0", Placement(), ram_bytes=128 * GiB, device_bytes=24 * GiB)   # a 24 GiB card
    assert consumer.budget < 24 * GiB and consumer.capacity == 24 * GiB
    check_fit([need], consumer, "bfloat16")


def test_on_cuda_a_model_must_fit_the_card_while_it_loads(registry):
    """A pipeline is loaded whole before its blocks are offloaded: the budget cannot make a model
    larger than the GPU loadable."""
    need = tiny_need(registry, "video")
    size = _disk_size(need.source, "bfloat16")
    blocks = model_blocks(need.source, "bfloat16")
    resident = size - blocks.total + 2 * blocks.largest
    fits = rank_budget("cuda:0", gpu_rank(1), MemoryRequest(vram=resident), ram_bytes=RAM, device_bytes=size)
    check_fit([need], fits, "bfloat16")
    card = rank_budget("cuda:0", gpu_rank(1), MemoryRequest(vram=size), ram_bytes=RAM, device_bytes=size - 1)
    with pytest.raises(ModelFitError) as exc:            # within the budget asked, but not the card
        check_fit([need], card, "bfloat16")
    assert exc.value.message == (f"video: tiny/wan2.2-i2v needs {human(size)} on cuda:0 while it loads (it is "
                                 f"loaded whole, its blocks are offloaded after), and cuda:0 holds "
                                 f"{human(size - 1)}")
    shared = rank_budget("cuda:0", Placement(local_ranks=2, sharing=2), MemoryRequest(vram=2 * size),
                         ram_bytes=RAM, device_bytes=2 * size - 2)
    assert (shared.budget, shared.capacity) == (size, size - 1)
    with pytest.raises(ModelFitError, match=f"and cuda:0 holds {human(size - 1)} for each of its 2 ranks$"):
        check_fit([need], shared, "bfloat16")


def test_animate_counts_the_blocks_it_streams_and_its_fp8_storage():
    """Wan2.2-Animate at full size, the Change Character settings (fp8 storage, 20 of 40 blocks
    streamed) against 24 GiB: its transformer rests in host RAM, its working copy is what counts."""
    source = ShapesSource("wan2.2-animate-14b", "wan-animate", "r")
    blocks = model_blocks(source, "bfloat16")
    assert blocks.count == 40 and blocks.total == 40 * blocks.largest
    node = rank_budget("cuda:0", Placement(), MemoryRequest(vram=24 * GiB), ram_bytes=RAM, device_bytes=80 * GiB)
    preset = Need("animate", source.label, "wan-animate", source, block_swap=20, fp8=True)
    check_fit([preset], node, "bfloat16")
    size = shapes_nbytes("wan2.2-animate-14b")
    kept = blocks.total // 2 - blocks.total // 4             # fp8 halves the blocks, half of them stream
    resident = size - blocks.total + kept + blocks.largest   # plus two fp8 blocks in flight
    with pytest.raises(ModelFitError) as exc:
        check_fit([preset], RankBudget("cuda:0", resident - 1, RAM), "bfloat16")
    assert exc.value.message == (f"animate: shapes/wan2.2-animate-14b needs 44.2 GiB ({human(resident)} with 20 "
                                 f"of its 40 blocks streamed), the budget of rank 0 on cuda:0 is "
                                 f"{human(resident - 1)}")
    with pytest.raises(ModelFitError, match=r"needs 44\.2 GiB, the budget of rank 0 on cuda:0 is 24\.0 GiB$"):
        check_fit([Need("animate", source.label, "wan-animate", source)], node, "bfloat16")     # bf16, resident


def test_animate_holds_its_rest_copy_and_streamed_blocks_in_host_ram():
    """The Change Character settings on an H100 node (80 GiB card, 128 GiB RAM, one rank): in host
    RAM the transformer's rest copy plus its 20 streamed blocks (in bf16 while they are placed)
    and UMT5-XXL (parked after encoding), 57.9 GiB of the 64 GiB host budget; a host budget below
    that refuses the render up front."""
    source = ShapesSource("wan2.2-animate-14b", "wan-animate", "r")
    blocks = model_blocks(source, "bfloat16")
    sizes = component_sizes_of(source, "bfloat16")
    rest, encoder = sizes["transformer"], sizes["text_encoder"]
    preset = Need("animate", source.label, "wan-animate", source, block_swap=20, fp8=True)
    node = rank_budget("cuda:0", Placement(), ram_bytes=128 * GiB, device_bytes=80 * GiB)
    held = host_need(preset, node, "bfloat16")
    assert held == rest + blocks.total // 2 + encoder and human(held) == "57.9 GiB"
    assert host_need(Need("animate", source.label, "wan-animate", source), node, "bfloat16") == rest + encoder
    assert host_need(preset, RankBudget("cpu", 1 << 40, 0), "bfloat16") == 0     # on the CPU: none
    check_fit([preset], node, "bfloat16")
    small = rank_budget("cuda:0", Placement(), MemoryRequest(host=held - 1), ram_bytes=128 * GiB,
                        device_bytes=80 * GiB)
    with pytest.raises(ModelFitError) as exc:
        check_fit([preset], small, "bfloat16")
    assert exc.value.message == (f"animate: shapes/wan2.2-animate-14b needs 44.2 GiB, its rest copy, streamed "
                                 f"blocks and parked text encoder need 57.9 GiB of host RAM, the host budget of "
                                 f"rank 0 on cuda:0 is "
                                 f"{human(held - 1)}")


def test_the_video_pipelines_hold_their_text_encoder_or_their_blocks_in_host_ram():
    i2v = ShapesSource("wan2.2-i2v-a14b", "wan-i2v", "r")
    sizes = component_sizes_of(i2v, "bfloat16")
    video = Need("video", i2v.label, "wan-i2v", i2v)
    whole = rank_budget("cuda:0", Placement(), ram_bytes=128 * GiB, device_bytes=80 * GiB)       # both experts fit
    assert host_need(video, whole, "bfloat16") == sizes["text_encoder"]
    one = RankBudget("cuda:0", sum(sizes.values()) - sizes["text_encoder"] - 1, 64 * GiB)     # one expert at a time
    assert host_need(video, one, "bfloat16") == sizes["text_encoder"] + sizes["transformer_2"]
    small = rank_budget("cuda:0", Placement(), MemoryRequest(vram=24 * GiB), ram_bytes=128 * GiB, device_bytes=80 * GiB)
    blocks = model_blocks(i2v, "bfloat16")
    assert host_need(video, small, "bfloat16") == blocks.total + sizes["text_encoder"]    # every block streamed
    fp8 = Need("video", i2v.label, "wan-i2v", i2v, fp8=True)
    assert host_need(fp8, small, "bfloat16") == blocks.total // 2 + sizes["text_encoder"]
    flux = ShapesSource("flux2-klein-9b", "flux2-klein", "r")
    image = Need("image", flux.label, "flux2-klein", flux)
    assert host_need(image, whole, "bfloat16") == 0
    assert host_need(image, small, "bfloat16") == placed(component_sizes_of(flux, "bfloat16"), small.budget).pinned


def test_the_full_size_i2v_pipeline_fits_a_24_gib_card_offloaded():
    source = ShapesSource("wan2.2-i2v-a14b", "wan-i2v", "r")
    need = Need("video", source.label, "wan-i2v", source)
    blocks = model_blocks(source, "bfloat16")
    assert 40 * 2 * blocks.largest == blocks.total                   # 40 equal blocks per expert
    assert shapes_nbytes("wan2.2-i2v-a14b") - blocks.total < 12 * GiB
    node = rank_budget("cuda:0", Placement(), MemoryRequest(vram=24 * GiB), ram_bytes=RAM, device_bytes=80 * GiB)
    check_fit([need], node, "bfloat16")
    with pytest.raises(ModelFitError) as exc:            # 8 ranks share a 24 GiB node budget: 3 GiB each
        check_fit([need], rank_budget("cuda:0", gpu_rank(8), MemoryRequest(vram=24 * GiB), ram_bytes=RAM,
                                      device_bytes=80 * GiB), "bfloat16")
    assert exc.value.message.startswith("video: shapes/wan2.2-i2v-a14b needs 64.2 GiB (")
    assert exc.value.message.endswith("with its transformer blocks offloaded), the budget of rank 0 on "
                                      "cuda:0 is 3.0 GiB")


IMAGE_ONLY = """
project: fit
defaults: {resolution: 64x64, seed: 3}
scenes:
  - id: a
    image: {prompt: "a cat", steps: 2}
"""


def test_a_render_over_its_budget_is_refused_before_any_stage_runs(project, registry):
    spec = project / "s.yaml"
    spec.write_text(textwrap.dedent(IMAGE_ONLY))
    size = _disk_size(registry.local_path("image"), "float32")
    events = project / "events.jsonl"
    result = CliRunner().invoke(app, ["render", str(spec), "--device", "cpu", "--vram-budget", str(size - 1),
                                      "--no-progress", "--events", str(events)])
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"image: tiny/flux2-klein needs {human(size)}, the budget of rank 0 on cpu is {human(size - 1)} "
        "(pass a larger "
        "--vram-budget / --host-budget (budgets are per node, split between its ranks), start fewer ranks, "
        "or use block_swap / a smaller dtype)")
    assert "Traceback" not in result.output
    assert not any(json.loads(e)["event"].startswith("stage_") for e in events.read_text().splitlines())
    cache = project / ".cinesynth" / "cache"
    assert not [p for p in cache.rglob("*") if p.is_file() and "objects" in p.parts]
    assert not (project / "outputs").exists()


def test_a_render_within_its_budget_records_its_memory_in_the_manifest_and_report(project, registry):
    spec = project / "s.yaml"
    spec.write_text(textwrap.dedent(IMAGE_ONLY))
    size = _disk_size(registry.local_path("image"), "float32")
    result = CliRunner().invoke(app, ["render", str(spec), "--device", "cpu", "--vram-budget", str(size),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    out = project / "outputs" / "fit"
    memory = json.loads((out / "manifest.json").read_text())["memory"]
    (rank,) = memory["ranks"]
    assert rank["rank"] == 0 and rank["device"] == "cpu" and rank["peak_gpu_bytes"] is None
    assert (rank["loads"], rank["swaps"], rank["pinned_bytes"]) == (1, 0, 0)
    assert rank["bytes_moved"] > 0
    assert {k: memory[k] for k in ("loads", "swaps", "bytes_moved")} == \
        {"loads": 1, "swaps": 0, "bytes_moved": rank["bytes_moved"]}
    report = (out / "report.html").read_text()
    assert "1 model load(s), 0 swap(s)" in report and "moved onto the devices" in report
    image = next(r for r in json.loads((out / "manifest.json").read_text())["stages"] if r["kind"] == "image")
    timing = image["facts"]["timing"]                      # the image stage's 2 steps, timed
    assert timing["steps"] == 2 and timing["load_s"] >= 0 and timing["denoise_s"] > 0
    assert (f"load {timing['load_s']} s; 2 steps: first {timing['first_step_s']} s, "
            f"then {timing['step_s']} s each") in report


# --------------------------------------------------------------------------- pinned RAM of offloaded blocks

def test_offloaded_blocks_count_as_pinned_ram_only_when_streamed_to_a_gpu(registry):
    """On the CPU the offloading hooks move nothing (0 pinned); the same layout on a CUDA device
    pins exactly the offloaded blocks (the layout's device is set by hand: no GPU here)."""
    import torch

    from cinesynth_batch.catalog.loaders import load_model
    from cinesynth_batch.runtime.memory import offload_blocks, offload_pinned_nbytes, offloaded
    from cinesynth_batch.runtime.swap import pinned_nbytes

    pipe = load_model("wan-i2v", registry.local_path("video"), "cpu", "float32")
    model = pipe.transformer
    offload_blocks(model, "cpu", 2)
    encoder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ModuleList([torch.nn.Linear(4, 4)]))
    offload_blocks(encoder, "cpu")                      # handed whole to diffusers' group offloading
    assert offload_pinned_nbytes(model) == pinned_nbytes(pipe) == 0
    offloaded(model).device = offloaded(encoder).device = "cuda:0"
    two = sum(t.numel() * t.element_size() for b in model.blocks[:2] for t in (*b.parameters(), *b.buffers()))
    assert 0 < two < model_bytes(model)
    assert offload_pinned_nbytes(model) == pinned_nbytes(pipe) == two
    assert offload_pinned_nbytes(encoder) == model_bytes(encoder) == 2 * (16 + 4) * 4


def model_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
