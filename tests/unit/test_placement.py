"""Which pipeline components move between the GPU and pinned host RAM, and when
(``runtime/placement.py``): decided from sizes and budgets alone."""

from __future__ import annotations

from cinesynth_batch.runtime.placement import (ONE_TRANSFORMER, Move, MoveLog, PlacementPlan, device_need,
                                                experts_fit, host_at_load, least_device_bytes, loaded_to_stream,
                                                place_loaded, plan_placement, step_experts, stream_at_load,
                                                streamed_components)

GIB = 1 << 30
# Wan2.2-I2V-A14B in bf16, roughly: two 14B experts, UMT5-XXL, the VAE
SIZES = {"text_encoder": 11 * GIB, "transformer": 28 * GIB, "transformer_2": 28 * GIB, "vae": GIB // 4}
ALL_ON = {name: "device" for name in SIZES}
STEPS = ["transformer"] * 3 + ["transformer_2"] * 5


def test_step_experts_follow_the_boundary_like_the_pipeline():
    assert step_experts([999, 950, 900, 899.5, 500], 900.0) == ["transformer"] * 3 + ["transformer_2"] * 2
    assert step_experts([999, 10], None) == ["transformer", "transformer"]
    assert step_experts([800, 10], 900.0) == ["transformer_2", "transformer_2"]


def test_on_the_cpu_nothing_moves_and_the_plan_says_why():
    plan = plan_placement(cuda=False, sizes=SIZES, where=ALL_ON, available=GIB, steps=STEPS)
    assert plan.moves == () and not plan.swap_experts
    assert plan.reasons == ("on the CPU every component is in RAM already",)


def test_both_experts_fit_only_the_text_encoder_moves():
    plan = plan_placement(cuda=True, sizes=SIZES, where=ALL_ON, available=72 * GIB, steps=STEPS)
    assert not plan.swap_experts
    assert plan.moves == (Move("encoded", "text_encoder", "host"),)
    assert plan.reasons == ("both experts fit the device budget: they stay on the device",)


def test_the_text_encoder_comes_back_for_the_next_run_and_leaves_again():
    where = {**ALL_ON, "text_encoder": "host"}
    plan = plan_placement(cuda=True, sizes=SIZES, where=where, available=72 * GIB, steps=STEPS)
    assert plan.moves == (Move("encode", "text_encoder", "device"), Move("encoded", "text_encoder", "host"))


def test_experts_over_the_budget_the_idle_one_waits_on_the_host():
    assert not experts_fit(SIZES, 40 * GIB)
    plan = plan_placement(cuda=True, sizes=SIZES, where=ALL_ON, available=40 * GIB, steps=STEPS)
    assert plan.swap_experts
    assert plan.moves == (
        Move("encode", "transformer_2", "host"),      # idle until the boundary: out before the encoder runs
        Move("encoded", "text_encoder", "host"),
        Move(3, "transformer", "host"),               # the boundary step: the experts trade places
        Move(3, "transformer_2", "device"),
    )
    assert [m.component for m in plan.at(3)] == ["transformer", "transformer_2"]
    assert plan.at(0) == [] and plan.at(1) == []


def test_when_the_first_expert_and_the_encoder_do_not_fit_together_both_experts_wait():
    plan = plan_placement(cuda=True, sizes=SIZES, where=ALL_ON, available=30 * GIB, steps=STEPS)
    assert plan.moves == (
        Move("encode", "transformer", "host"),
        Move("encode", "transformer_2", "host"),
        Move("encoded", "text_encoder", "host"),
        Move(0, "transformer", "device"),
        Move(3, "transformer", "host"),
        Move(3, "transformer_2", "device"),
    )


def test_a_second_run_over_the_budget_starts_from_where_the_first_left_things():
    where = {"text_encoder": "host", "transformer": "host", "transformer_2": "device", "vae": "device"}
    plan = plan_placement(cuda=True, sizes=SIZES, where=where, available=40 * GIB, steps=STEPS)
    assert plan.moves == (
        Move("encode", "transformer_2", "host"),
        Move("encode", "text_encoder", "device"),
        Move("encoded", "text_encoder", "host"),
        Move(0, "transformer", "device"),
        Move(3, "transformer", "host"),
        Move(3, "transformer_2", "device"),
    )


def test_a_run_of_low_noise_steps_only_parks_the_high_noise_expert():
    plan = plan_placement(cuda=True, sizes=SIZES, where=ALL_ON, available=40 * GIB, steps=["transformer_2"] * 4)
    assert plan.moves == (Move("encode", "transformer", "host"), Move("encoded", "text_encoder", "host"))


def test_under_a_larger_budget_a_parked_expert_comes_back_before_the_first_step():
    where = {**ALL_ON, "transformer": "host", "text_encoder": "host"}
    plan = plan_placement(cuda=True, sizes=SIZES, where=where, available=72 * GIB, steps=STEPS)
    assert not plan.swap_experts
    assert plan.moves == (Move("encode", "text_encoder", "device"), Move("encoded", "text_encoder", "host"),
                          Move(0, "transformer", "device"))


def test_block_offload_moves_neither_the_experts_nor_an_offloaded_encoder():
    plan = plan_placement(cuda=True, sizes=SIZES, where=ALL_ON, available=20 * GIB, steps=STEPS,
                          encoder_offloaded=True, experts_streamed=True)
    assert plan.moves == () and not plan.swap_experts
    assert plan.reasons == ("the experts' blocks stream from pinned RAM already (block offload)",
                            "the text encoder streams from pinned RAM already (block offload)")
    swapped = plan_placement(cuda=True, sizes=SIZES, where=ALL_ON, available=20 * GIB, steps=STEPS,
                             experts_streamed=True)      # a block swap of the experts: the encoder still leaves
    assert swapped.moves == (Move("encoded", "text_encoder", "host"),)


def test_no_budget_means_the_experts_fit():
    plan = plan_placement(cuda=True, sizes=SIZES, where=ALL_ON, available=None, steps=STEPS)
    assert not plan.swap_experts and plan.moves == (Move("encoded", "text_encoder", "host"),)


def test_a_single_transformer_pipeline_moves_only_its_text_encoder():
    sizes = {"text_encoder": 11 * GIB, "transformer": 32 * GIB, "vae": GIB, "audio_model": GIB}
    plan = plan_placement(cuda=True, sizes=sizes, where={n: "device" for n in sizes}, available=GIB,
                          experts=())
    assert plan.moves == (Move("encoded", "text_encoder", "host"),) and plan.reasons == ()


# FLUX.2-klein-9B in bf16, roughly: the transformer, Qwen3-8B, the VAE
FLUX = {"text_encoder": 15 * GIB, "transformer": 17 * GIB, "vae": GIB // 8}


def test_a_flux_pipeline_within_its_budget_moves_nothing():
    """A still's few steps are short beside the text encoder's trip back for the next prompt: when
    the whole pipeline fits, the text encoder stays too."""
    plan = plan_placement(cuda=True, sizes=FLUX, where={n: "device" for n in FLUX}, available=40 * GIB,
                          experts=ONE_TRANSFORMER)
    assert plan.moves == () and not plan.swap_experts
    assert plan.reasons == ("the transformer and the text encoder fit the device budget together: they stay on "
                            "the device",)
    assert plan_placement(cuda=True, sizes=FLUX, where={n: "device" for n in FLUX}, available=None,
                          experts=ONE_TRANSFORMER).moves == ()
    parked = {"text_encoder": "host", "transformer": "device", "vae": "device"}   # loaded under a tighter budget
    assert plan_placement(cuda=True, sizes=FLUX, where=parked, available=40 * GIB, experts=ONE_TRANSFORMER).moves == (
        Move("encode", "text_encoder", "device"),)
    over = plan_placement(cuda=True, sizes=FLUX, where={n: "device" for n in FLUX}, available=32 * GIB,
                          experts=ONE_TRANSFORMER)      # 1/8 GiB short: the encoder leaves again
    assert Move("encoded", "text_encoder", "host") in over.moves


def test_a_flux_pipeline_over_its_budget_takes_turns_from_the_load_on():
    """Loaded with its text encoder in pinned RAM (``host_at_load``), every run parks the
    transformer while the prompts are encoded and brings it back before the first step."""
    loaded = {"text_encoder": "host", "transformer": "device", "vae": "device"}
    plan = plan_placement(cuda=True, sizes=FLUX, where=loaded, available=24 * GIB, experts=ONE_TRANSFORMER)
    assert plan.moves == (Move("encode", "transformer", "host"), Move("encode", "text_encoder", "device"),
                          Move("encoded", "text_encoder", "host"), Move(0, "transformer", "device"))
    assert plan.reasons == ()
    assert least_device_bytes(FLUX, ONE_TRANSFORMER) == 17 * GIB + GIB // 8 <= 24 * GIB
    again = plan_placement(cuda=True, sizes=FLUX, where=loaded, available=24 * GIB, experts=ONE_TRANSFORMER)
    assert again == plan                            # a run ends where the load left things
    whole = plan_placement(cuda=True, sizes=FLUX, where={n: "device" for n in FLUX}, available=24 * GIB,
                           experts=ONE_TRANSFORMER)
    assert whole.moves == (Move("encode", "transformer", "host"), Move("encoded", "text_encoder", "host"),
                           Move(0, "transformer", "device"))
    exact = sum(FLUX.values())                      # exactly the whole size: the encoder comes and stays
    assert plan_placement(cuda=True, sizes=FLUX, where=loaded, available=exact, experts=ONE_TRANSFORMER).moves == (
        Move("encode", "text_encoder", "device"),)


def test_the_text_encoder_loads_into_pinned_ram_only_on_cuda_over_the_budget():
    assert host_at_load(FLUX, 24 * GIB, cuda=True) == ("text_encoder",)
    assert host_at_load(FLUX, sum(FLUX.values()), cuda=True) == ()
    assert host_at_load(FLUX, 24 * GIB, cuda=False) == ()
    assert host_at_load(FLUX, None, cuda=True) == ()
    assert host_at_load({"transformer": 40 * GIB}, 24 * GIB, cuda=True) == ()


def test_least_device_bytes_is_the_rest_plus_the_largest_mover():
    assert least_device_bytes(SIZES) == GIB // 4 + 28 * GIB
    assert least_device_bytes({**SIZES, "text_encoder": 30 * GIB}) == GIB // 4 + 30 * GIB
    assert least_device_bytes({"text_encoder": 5, "transformer": 32, "vae": 1}, experts=()) == 32 + 1 + 5
    assert experts_fit(SIZES, 28 * 2 * GIB + GIB // 4) and not experts_fit(SIZES, 28 * 2 * GIB)


def test_the_move_log_sums_the_bytes_for_the_facts():
    log = MoveLog()
    log.add(Move("encoded", "text_encoder", "host"), 11)
    log.add(Move(3, "transformer_2", "device"), 28)
    plan = PlacementPlan(moves=(), swap_experts=True, reasons=("why",))
    assert log.facts(plan) == {"moves": [{"component": "text_encoder", "to": "host", "bytes": 11, "at": "encoded"},
                                         {"component": "transformer_2", "to": "device", "bytes": 28, "at": 3}],
                               "swap_experts": True, "bytes_moved": 39, "kept": ["why"]}


def test_the_moves_stages_made_inside_their_pipelines_reach_the_memory_totals():
    from types import SimpleNamespace

    from cinesynth_batch.execute.publish import memory_table
    from cinesynth_batch.execute.runner import rank_memory

    residency = SimpleNamespace(loads={"video": 1}, swaps={}, moved={"video": 100},
                                pinned_high_water=lambda: 40)
    row = rank_memory(0, "cpu", [residency])
    assert row == {"rank": 0, "device": "cpu", "peak_gpu_bytes": None, "pinned_bytes": 40, "loads": 1,
                   "swaps": 0, "bytes_moved": 100}
    facts = [{"placement": {"moves": [{"component": "text_encoder", "to": "host", "bytes": 11, "at": "encoded"},
                                      {"component": "transformer_2", "to": "device", "bytes": 28, "at": 3}]}},
             {"placement": {"moves": [{"component": "text_encoder", "to": "host", "bytes": 5, "at": "encoded"}]}},
             {"frames": 81}]
    table = memory_table([row, {**row, "rank": 1}], facts)
    assert (table["moves"], table["moved_in_pipelines"], table["loads"], table["bytes_moved"]) == (3, 44, 2, 200)


S2V = {"transformer": 32 * GIB, "text_encoder": 11 * GIB, "vae": GIB // 4, "audio_model": GIB}


def test_a_video_or_lipsync_pipeline_over_its_budget_is_loaded_to_stream_on_cuda_only():
    # the video stage moves its encoder and experts in turn: it needs the VAE and one 28 GiB expert
    assert device_need("wan-i2v", SIZES) == 28 * GIB + GIB // 4
    assert device_need("wan-s2v", S2V) == sum(S2V.values())
    assert stream_at_load("wan-i2v", SIZES, 24 * GIB, cuda=True)
    assert not stream_at_load("wan-i2v", SIZES, 29 * GIB, cuda=True)       # experts take turns instead
    assert stream_at_load("wan-s2v", S2V, 40 * GIB, cuda=True)
    assert not stream_at_load("wan-s2v", S2V, 45 * GIB, cuda=True)
    assert not stream_at_load("wan-i2v", SIZES, 24 * GIB, cuda=False)
    assert not stream_at_load("wan-i2v", SIZES, None, cuda=True)
    assert not stream_at_load("flux2-klein", {"transformer": 40 * GIB}, 24 * GIB, cuda=True)


def test_what_a_streamed_pipeline_leaves_in_host_ram_and_what_waits_pinned():
    assert streamed_components("wan-i2v", list(SIZES)) == (tuple(SIZES), ())
    assert streamed_components("wan-s2v", list(S2V)) == (("transformer",), ("text_encoder",))


def test_a_pipeline_placed_to_stream_keeps_those_components_where_they_are_and_says_so():
    import torch

    pipe = type("Pipe", (), {})()
    pipe.components = {"transformer": torch.nn.Linear(4, 4), "vae": torch.nn.Linear(4, 4)}
    assert not loaded_to_stream(pipe)
    place_loaded(pipe, "meta", stay=("transformer",))     # "meta": a device that is not the host
    assert loaded_to_stream(pipe)
    assert pipe.components["transformer"].weight.device.type == "cpu"
    assert pipe.components["vae"].weight.device.type == "meta"
