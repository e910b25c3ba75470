"""The residency manager on the real tiny models and the real loaders."""

from pathlib import Path

import pytest

from cinesynth_batch.catalog.registry import Registry
from cinesynth_batch.catalog.residency import Residency, parse_size


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
    assert parse_size(" 0 GiB") == 0


@pytest.mark.parametrize("text", ["banana", "GiB", "-5GiB", "nan", "inf", "1x", ""])
def test_what_is_not_a_size_is_refused_by_name(text):
    with pytest.raises(ValueError) as exc:
        parse_size(text)
    assert str(exc.value).startswith(f"{text!r} is not a size: ")


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


class _RecordingMoverFake:
    """Stands in for the pinned host<->GPU copy (no GPU here): records each move."""

    def __init__(self):
        self.moves = []

    def __call__(self, model, where):
        self.moves.append((type(model).__name__, where))


def _alternate(res, n=8):
    for i in range(n):
        res.get("video" if i % 2 == 0 else "image")


def _two_model_sizes(registry):
    probe = Residency(registry, budget=1 << 30)
    probe.get("video")
    probe.get("image")
    return {role: size for role, (_, size) in probe._resident.items()}


def test_alternating_models_budget_holds_both_loads_each_once_fake_mover(registry):
    mover = _RecordingMoverFake()
    res = Residency(registry, budget=1 << 30, host_budget=1 << 30, mover=mover)
    _alternate(res)
    assert dict(res.loads) == {"video": 1, "image": 1}
    assert dict(res.swaps) == {} and mover.moves == []


def test_alternating_models_budget_holds_one_pays_copies_not_loads_fake_mover(registry):
    sizes = _two_model_sizes(registry)
    mover = _RecordingMoverFake()
    res = Residency(registry, budget=max(sizes.values()) + 1, host_budget=1 << 30, mover=mover)
    _alternate(res)
    assert dict(res.loads) == {"video": 1, "image": 1}          # no second read from disk
    assert dict(res.swaps) == {"video": 3, "image": 3}
    assert dict(res.evictions) == {"video": 4, "image": 3}
    assert res.resident() == ["image"] and res.on_host() == ["video"]
    # every eviction went to the host, every return came back to the device
    assert [w for _, w in mover.moves].count("host") == 7
    assert [w for _, w in mover.moves].count("cpu") == 6


def test_eviction_to_host_leaves_freed_memory_to_the_allocator_a_drop_collects_fake_mover(registry, monkeypatch):
    """A model sent to pinned RAM frees its device tensors as the pointers swap: the next model
    reuses those blocks, so the switch costs the copy only (no collection, no empty_cache). A
    dropped model may sit in reference cycles: that eviction collects."""
    sizes = _two_model_sizes(registry)
    collects = []
    monkeypatch.setattr(Residency, "_collect", lambda self: collects.append(self.resident()))
    kept = Residency(registry, budget=max(sizes.values()) + 1, host_budget=1 << 30, mover=_RecordingMoverFake())
    _alternate(kept)
    assert kept.evictions["video"] == 4 and collects == []
    dropping = Residency(registry, budget=max(sizes.values()) + 1, host_budget=0, mover=_RecordingMoverFake())
    _alternate(dropping, 4)
    assert sum(dropping.evictions.values()) == 3 and len(collects) == 3


def test_no_host_budget_reloads_from_disk(registry):
    sizes = _two_model_sizes(registry)
    res = Residency(registry, budget=max(sizes.values()) + 1, host_budget=0, mover=_RecordingMoverFake())
    _alternate(res)
    assert dict(res.loads) == {"video": 4, "image": 4} and dict(res.swaps) == {}


def test_host_budget_keeps_most_recent_models_only(registry):
    sizes = _two_model_sizes(registry)
    res = Residency(registry, budget=1, host_budget=sizes["video"], mover=_RecordingMoverFake())
    res.get("video")
    res.get("image")            # video -> host
    res.get("upscale")          # image -> host only if it fits; video is dropped first when needed
    assert res.host_used <= sizes["video"]
    assert "image" in res.on_host() or sizes["image"] > sizes["video"]


def test_host_copy_round_trip_keeps_values_and_detects_changed_tensors():
    import torch

    from cinesynth_batch.runtime.swap import HostCopy

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = HostCopy([model])
    copy.to_host()
    pinned_once = copy.pinned_bytes
    assert pinned_once == sum(v.numel() * v.element_size() for v in before.values())
    copy.to_device("cpu")            # already there: nothing moves
    copy.to_host()
    assert copy.pinned_bytes == pinned_once and copy.copied_back == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class _HostFake:
    """A model stand-in (no GPU here): ``size`` bytes on the device, ``host`` bytes of host RAM."""

    def __init__(self, kind, size, host):
        self.kind, self.size, self.host = kind, size, host


def test_host_ram_is_made_before_a_model_loads_and_counts_what_resident_models_hold_fake_models(registry):
    """The order that ran a GPU node out of RAM: image, video, lip-sync, then Animate, whose rest copy
    lives in host RAM. Each load first makes room in host RAM for what it will hold there; a model
    leaving the device waits in pinned RAM only where it fits beside that."""
    G = 1 << 30                       # the tiny models' files are far smaller: sizes in GiB
    sizes = {"flux2-klein": 40 * G, "wan-i2v": 70 * G, "wan-s2v": 50 * G, "wan-animate": 45 * G}
    holds = {"flux2-klein": 0, "wan-i2v": 20 * G, "wan-s2v": 20 * G, "wan-animate": 60 * G}   # once loaded
    needs = {("video", ""): 20 * G, ("lipsync", ""): 20 * G, ("animate", ""): 60 * G}
    seen = []

    def loader(kind, path, device, dtype, room):
        seen.append((kind, res.host_held()))
        return _HostFake(kind, sizes[kind], holds[kind])

    def mover(model, where):
        if where == "host":
            model.host = model.size

    res = Residency(registry, device="cpu", budget=100 * G, host_budget=100 * G, loader=loader, sizer=lambda m: m.size,
                    mover=mover, pinned=lambda m: m.host, held=lambda m: m.host,
                    host_needs=needs)
    for role in ("image", "video", "lipsync", "animate"):
        res.get(role)
    # (the tiny files under the fake sizes make the device-room estimate small: a model leaves the
    # device once the next one has loaded; the image goes to pinned RAM then, and leaves it for the video)
    assert seen == [("flux2-klein", 0), ("wan-i2v", 0), ("wan-s2v", 60 * G), ("wan-animate", 20 * G)]
    for (kind, held), role in zip(seen, ("image", "video", "lipsync", "animate")):
        assert held + needs.get((role, ""), 0) <= 100 * G
    assert dict(res.dropped) == {"image": 1, "video": 1}       # the image left for the video, the video for Animate
    assert res.resident() == ["lipsync", "animate"] and res.on_host() == []
    assert res.host_held() == 80 * G

    roomy = Residency(registry, device="cpu", budget=100 * G, host_budget=1000 * G, loader=loader, sizer=lambda m: m.size,
                      mover=mover, pinned=lambda m: m.host, held=lambda m: m.host,
                      host_needs=needs)
    for role in ("image", "video", "lipsync", "animate"):
        roomy.get(role)
    assert roomy.on_host() == ["image", "video"] and not roomy.dropped     # room enough: they wait in RAM
