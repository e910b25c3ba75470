"""LoRAs fused into weights (``runtime/lora_fuse.py``): each weight is rounded once, from an fp32
sum of the weight and every adapter's weighted product, and updated in place."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from cinesynth_batch.runtime.lora_fuse import fuse, fused_loras  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")


def _adapted(names=("a", "b"), scales=(0.7, 1.3)):
    torch.manual_seed(5)
    model = torch.nn.Sequential(OrderedDict(proj=torch.nn.Linear(96, 80), out=torch.nn.Linear(80, 8)))
    for name in names:
        config = peft.LoraConfig(r=4, lora_alpha=4, target_modules=["proj"], init_lora_weights=False)
        peft.inject_adapter_in_model(config, model, adapter_name=name)
    layer = model.proj
    layer.set_adapter(list(names))
    for name, scale in zip(names, scales):
        layer.scaling[name] = scale
    return model.to(torch.bfloat16), layer


def test_fused_weights_are_the_fp32_sum_rounded_once_in_place():
    model, layer = _adapted()
    weight = layer.get_base_layer().weight
    want = weight.float()
    for name in ("a", "b"):
        want = want + (layer.lora_B[name].weight.float() @ layer.lora_A[name].weight.float()) * layer.scaling[name]
    x = torch.randn(16, 96, dtype=torch.bfloat16)
    with torch.no_grad():
        unfused = model(x).float()
    where, version = weight.data_ptr(), weight._version
    pipe = SimpleNamespace(transformer=model, components={"transformer": model}, _merged_adapters=set())
    assert fuse(pipe, {"a": 0.7, "b": 1.3}, ("transformer",)) is True
    assert torch.equal(weight, want.to(torch.bfloat16))           # one rounding, not one per adapter
    assert weight.dtype == torch.bfloat16 and weight.data_ptr() == where
    assert weight._version > version                              # a pinned host copy sees it changed
    assert layer.merged_adapters == ["a", "b"] and pipe._merged_adapters == {"a", "b"}
    assert fused_loras(pipe) == {"a": 0.7, "b": 1.3}
    with torch.no_grad():
        fused = model(x).float()                                  # the base layer alone now
    assert (fused - unfused).abs().max() < 0.05 * unfused.abs().max()
    assert fuse(pipe, {"a": 0.7, "b": 1.3}, ("transformer",)) is False   # already fused: nothing added
    assert torch.equal(weight, want.to(torch.bfloat16))


def test_an_adapter_with_a_variant_merges_through_peft():
    model, layer = _adapted(names=("a",), scales=(1.0,))
    calls = []
    merge = layer.merge
    layer.lora_variant["a"] = object()                            # e.g. DoRA: PEFT's own merge

    def recording(adapter_names=None, **kw):
        calls.append(list(adapter_names))
        layer.lora_variant.pop("a")
        merge(adapter_names=adapter_names, **kw)

    layer.merge = recording
    pipe = SimpleNamespace(transformer=model, components={"transformer": model})
    assert fuse(pipe, {"a": 1.0}, ("transformer",)) is True
    assert calls == [["a"]] and layer.merged_adapters == ["a"]
