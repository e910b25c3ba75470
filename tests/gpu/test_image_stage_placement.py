"""The image stage's placement on CUDA (``runtime/placement.py``), through the production loader
and the tiny FLUX.2-klein pipeline folder (skipped without CUDA): under a budget that holds the
text encoder or the transformer but not both, the loader leaves the text encoder in pinned host
RAM, each run brings it to the GPU only to encode while the transformer waits there, and the
picture equals that of a run with everything resident (where nothing moves); so for the step-distilled folder (no
classifier-free guidance: the prompt alone is encoded, one transformer forward a step) and for the
base folder (guidance 3: the prompt and the negative prompt, two forwards a step). A full-size shapes pipeline loaded under a
24 GiB room never holds the Qwen3-8B text encoder and the 9B transformer on the GPU together."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cinesynth_batch.catalog.loaders import load_model  # noqa: E402
from cinesynth_batch.catalog.shapes import ShapesSource  # noqa: E402
from cinesynth_batch.catalog.tiny.build import _write_flux2_klein  # noqa: E402
from cinesynth_batch.runtime.placement import ONE_TRANSFORMER, component_sizes, least_device_bytes  # noqa: E402
from cinesynth_batch.runtime.swap import model_nbytes  # noqa: E402
from cinesynth_batch.stages import image as image_stage  # noqa: E402
from cinesynth_batch.stages.base import StageContext  # noqa: E402

WATCHED = ("text_encoder", "transformer", "vae")
PARAMS = {"prompt": "a harbour at dusk", "negative_prompt": "fog", "steps": 3, "guidance": 3.0,
          "width": 64, "height": 64, "seed": 5, "loras": []}


class _Models:
    """One pipeline under a VRAM budget, as the residency hands it to a stage (loaded with the
    budget as its room)."""

    def __init__(self, folder, budget):
        self.folder, self.budget, self.pipe = folder, budget, None

    def get(self, role):
        if self.pipe is None:
            self.pipe = load_model("flux2-klein", self.folder, "cuda", "bfloat16", room=self.budget)
        return self.pipe

    @property
    def used(self):
        return model_nbytes(self.pipe) if self.pipe is not None else 0


@pytest.fixture(scope="module", params=[True, False], ids=["distilled", "base"])
def folder(request, tmp_path_factory):
    dst = tmp_path_factory.mktemp("tiny") / ("flux2-klein" if request.param else "flux2-klein-base")
    _write_flux2_klein(dst, distilled=request.param)
    return dst


def _places(pipe):
    return {name: next(getattr(pipe, name).parameters()).device.type for name in WATCHED}


def _render(models, out):
    """Run the stage; returns its facts and, per forward of a watched component, where each was."""
    ctx = StageContext(models=models, resolve_lora=lambda n, f: None, device="cuda", dtype="bfloat16")
    pipe = models.get("image")
    seen, handles = [], []
    for name in ("text_encoder", "transformer"):
        handles.append(getattr(pipe, name).register_forward_pre_hook(
            lambda _m, _a, name=name: seen.append((name, _places(pipe)))))
    handles.append(pipe.vae.decoder.register_forward_pre_hook(lambda _m, _a: seen.append(("vae", _places(pipe)))))
    try:
        facts = image_stage.run(dict(PARAMS), {}, out, ctx)
    finally:
        for h in handles:
            h.remove()
    return facts, seen


def test_the_text_encoder_and_the_transformer_take_turns_and_give_the_resident_picture(folder, tmp_path):
    resident = _Models(folder, budget=1 << 40)
    facts, seen = _render(resident, tmp_path / "resident.png")
    assert facts["placement"]["moves"] == [] and facts["placement"]["bytes_moved"] == 0   # it all fits: nothing moves
    assert seen and all(where == {n: "cuda" for n in WATCHED} for _, where in seen)

    sizes = component_sizes(resident.pipe)
    budget = least_device_bytes(sizes, ONE_TRANSFORMER)
    assert budget < sum(sizes.values())
    tight = _Models(folder, budget=budget)
    pipe = tight.get("image")                         # loaded with its text encoder in pinned RAM
    assert _places(pipe) == {"text_encoder": "cpu", "transformer": "cuda", "vae": "cuda"}
    assert all(p.is_pinned() for p in pipe.text_encoder.parameters())
    distilled = folder.name == "flux2-klein"
    assert pipe.config.is_distilled is distilled and PARAMS["guidance"] > 1
    passes = 1 if distilled else 2                    # the prompt; with CFG then the negative prompt
    for run in (1, 2):                                # the second run starts from where the first left them
        out = tmp_path / f"tight{run}.png"
        facts, seen = _render(tight, out)
        names = [name for name, _ in seen]
        assert names[:passes] == ["text_encoder"] * passes
        assert names[passes:] == ["transformer"] * passes * PARAMS["steps"] + ["vae"]  # a forward per pass a step
        for name, where in seen:
            if name == "text_encoder":
                assert where == {"text_encoder": "cuda", "transformer": "cpu", "vae": "cuda"}
            else:
                assert where == {"text_encoder": "cpu", "transformer": "cuda", "vae": "cuda"}
        placement = facts["placement"]
        assert [(m["component"], m["to"], m["at"]) for m in placement["moves"]] == [
            ("transformer", "host", "encode"), ("text_encoder", "device", "encode"),
            ("text_encoder", "host", "encoded"), ("transformer", "device", 0)]
        assert all(m["bytes"] == sizes[m["component"]] for m in placement["moves"])
        assert placement["bytes_moved"] == 2 * (sizes["text_encoder"] + sizes["transformer"])
        assert out.read_bytes() == (tmp_path / "resident.png").read_bytes()


def test_the_full_size_pipeline_loads_without_its_text_encoder_on_the_gpu():
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    pipe = load_model("flux2-klein", ShapesSource("flux2-klein-9b", "flux2-klein", "r"), "cuda", "bfloat16",
                      room=24 << 30)
    try:
        sizes = component_sizes(pipe)
        assert all(p.device.type == "cpu" and p.is_pinned() for p in pipe.text_encoder.parameters())
        assert next(pipe.transformer.parameters()).device.type == "cuda"
        peak = torch.cuda.max_memory_allocated() - before
        assert peak < sizes["transformer"] + sizes["text_encoder"]      # never both on the GPU
        assert peak < 24 << 30
    finally:
        del pipe
        torch.cuda.empty_cache()
