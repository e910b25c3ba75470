"""A stage's time split into model loading and denoising steps (``execute/timing.py``)."""

from __future__ import annotations

from cinesynth_batch.execute import timing
from cinesynth_batch.execute.timing import StepClock, timing_text


def test_steps_are_timed_between_progress_calls_and_each_segment_restarts_the_clock(monkeypatch):
    now = iter([0.0, 10.0, 12.0, 14.5, 100.0, 103.0, 105.0])   # segment 1: 3 steps; segment 2: 2
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(now))
    clock = StepClock()
    for step in (0, 1, 2, 3, 0, 1, 2):
        clock.tick(step)
    assert clock.steps == [10.0, 2.0, 2.5, 3.0, 2.0]
    facts = clock.facts(load_seconds=41.23456)
    assert facts == {"load_s": 41.235, "steps": 5, "first_step_s": 10.0, "step_s": 2.25, "denoise_s": 19.5}
    assert timing_text(facts) == " (load 41.2s; 5 steps: first 10.00s, then 2.25s each)"


def test_a_segment_that_starts_mid_count_restarts_the_clock(monkeypatch):
    now = iter([0.0, 5.0, 7.0, 30.0, 36.0])         # decoding between the segments is no step
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(now))
    clock = StepClock()
    for step, seg_step in ((0, 0), (1, 1), (2, 2), (2, 0), (3, 1)):
        clock.tick(step, seg_step)
    assert clock.steps == [5.0, 2.0, 6.0]


def test_setup_and_finish_are_the_times_before_the_first_and_after_the_last_progress_call(monkeypatch):
    now = iter([20.0, 30.0, 32.0])                   # step 0 at 20 s, steps 1 and 2 end at 30 and 32 s
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(now))
    clock = StepClock()
    for step in (0, 1, 2):
        clock.tick(step)
    facts = clock.facts(load_seconds=12.0, started=3.0, ended=39.5)
    assert (facts["setup_s"], facts["denoise_s"], facts["finish_s"]) == (5.0, 12.0, 7.5)
    assert StepClock().facts(1.0, started=0.0, ended=2.0) == {"load_s": 1.0}


def test_a_stage_without_steps_reports_its_load_only():
    assert StepClock().facts(0.5) == {"load_s": 0.5}
    assert timing_text({"load_s": 0.5}) == " (load 0.5s)" and timing_text(None) == ""


def test_a_stage_peak_is_said_and_off_cuda_there_is_none():
    from types import SimpleNamespace

    from cinesynth_batch.execute.timing import DevicePeak

    assert timing_text({"load_s": 0.5, "peak_gpu_bytes": 23 * (1 << 30) + (1 << 29)}) == \
        " (load 0.5s; GPU peak 23.5 GiB)"
    holder = SimpleNamespace(gpu_peak=7)
    assert DevicePeak("cpu", holder).bytes() is None and holder.gpu_peak == 7
