"""The residency manager on the real tiny models and the real loaders."""

from pathlib import Path

import pytest

from cinesynth_batch.models.registry import Registry
from cinesynth_batch.models.residency import Residency, parse_size


@pytest.fixture(scope="module")
def registry():
    reg = Registry.load("tiny", Path.cwd(), Path.cwd())
    reg.ensure_tiny()
    return reg


def test_parse_size():
    assert parse_size("24GiB") == 24 * 2**30
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("8GB") == 8 * 10**9
    assert parse_size("1.5g") == int(1.5 * 2**30)
    assert parse_size("1000") == 1000


def test_everything_fits_each_model_loads_once(registry):
    res = Residency(registry, budget=1 << 30)
    first = res.get("video")
    res.get("image")
    assert res.get("video") is first
    assert dict(res.loads) == {"video": 1, "image": 1}
    assert res.resident() == ["image", "video"]


def test_small_budget_evicts_least_recently_used(registry):
    sizes = {}
    probe = Residency(registry, budget=1 << 30)
    for role in ("video", "image", "upscale"):
        probe.get(role)
    for role, (_, size) in probe._resident.items():
        sizes[role] = size
    # room for the video model and the upscaler, not for video and image together
    budget = sizes["video"] + sizes["upscale"] + sizes["image"] // 2
    assert sizes["image"] > sizes["upscale"]
    res = Residency(registry, budget=budget)
    res.get("video")
    res.get("upscale")
    assert res.resident() == ["video", "upscale"]
    res.get("image")                       # evicts video (least recently used), keeps upscale
    assert "video" not in res.resident() and res.used <= budget
    res.get("video")
    assert res.loads["video"] == 2 and res.evictions["video"] == 1
