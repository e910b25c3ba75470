"""The video stage's placement on CUDA (``runtime/placement.py``), through the production loader and
the tiny I2V pipeline folder (skipped without CUDA): under a budget that holds one expert at a time,
the text encoder is on the GPU only while it encodes and the idle expert waits in pinned host RAM,
and the frames equal those of a run with everything resident."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from cinesynth_batch.catalog.loaders import load_model  # noqa: E402
from cinesynth_batch.catalog.tiny.build import _write_wan_i2v  # noqa: E402
from cinesynth_batch.media.video_io import read_frames  # noqa: E402
from cinesynth_batch.runtime.placement import component_sizes, least_device_bytes  # noqa: E402
from cinesynth_batch.runtime.swap import model_nbytes  # noqa: E402
from cinesynth_batch.stages import video as video_stage  # noqa: E402
from cinesynth_batch.stages.base import StageContext  # noqa: E402

WATCHED = ("text_encoder", "transformer", "transformer_2")
PARAMS = {"prompt": "waves roll onto the beach", "negative_prompt": "static, blurry", "frames": 9, "steps": 6,
          "guidance": 3.0, "guidance_2": 2.0, "shift": 5.0, "boundary": 0.9, "scheduler": "unipc", "width": 64,
          "height": 48, "fps": 8, "seed": 5, "loras": [], "attention": "sdpa", "compile": "off"}


class _Models:
    """One pipeline under a VRAM budget, as the residency hands it to a stage."""

    def __init__(self, folder, budget):
        self.folder, self.budget, self.pipe = folder, budget, None

    def get(self, role):
        if self.pipe is None:
            self.pipe = load_model("wan-i2v", self.folder, "cuda", "bfloat16")
        return self.pipe

    @property
    def used(self):
        return model_nbytes(self.pipe) if self.pipe is not None else 0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    dst = tmp_path_factory.mktemp("tiny") / "wan-i2v"
    _write_wan_i2v(dst)
    return dst


@pytest.fixture(scope="module")
def still(tmp_path_factory):
    path = tmp_path_factory.mktemp("still") / "still.png"
    Image.new("RGB", (64, 48), (100, 50, 20)).save(path)
    return path


def _places(pipe):
    return {name: next(getattr(pipe, name).parameters()).device.type for name in WATCHED}


def _render(models, still, out):
    """Run the stage; returns its facts and, per forward of a watched component, where each was."""
    ctx = StageContext(models=models, resolve_lora=lambda n, f: None, device="cuda", dtype="bfloat16")
    pipe = models.get("video")
    seen, handles = [], []
    for name in WATCHED:
        handles.append(getattr(pipe, name).register_forward_pre_hook(
            lambda _m, _a, name=name: seen.append((name, _places(pipe)))))
    try:
        facts = video_stage.run(dict(PARAMS), {"image": str(still)}, out, ctx)
    finally:
        for h in handles:
            h.remove()
    return facts, seen


def test_one_expert_at_a_time_and_the_encoder_away_give_the_resident_frames(folder, still, tmp_path):
    resident = _Models(folder, budget=1 << 40)
    facts, seen = _render(resident, still, tmp_path / "resident.mp4")
    assert facts["placement"]["swap_experts"] is False
    assert [(m["component"], m["to"]) for m in facts["placement"]["moves"]] == [("text_encoder", "host")]
    assert all(where == {"text_encoder": "cuda", "transformer": "cuda", "transformer_2": "cuda"}
               for name, where in seen if name == "text_encoder")
    assert all(where["text_encoder"] == "cpu" and where["transformer"] == where["transformer_2"] == "cuda"
               for name, where in seen if name != "text_encoder")
    te = resident.pipe.text_encoder
    assert all(p.device.type == "cpu" and p.is_pinned() for p in te.parameters())   # waits in pinned RAM

    sizes = component_sizes(resident.pipe)
    tight = _Models(folder, budget=least_device_bytes(sizes))
    assert tight.budget < sum(size for name, size in sizes.items() if name != "text_encoder")
    for run in (1, 2):                        # the second run starts from where the first left them
        out = tmp_path / f"tight{run}.mp4"
        facts, seen = _render(tight, still, out)
        assert facts["speed"]["offload"] is None              # placement, not block offload
        placement = facts["placement"]
        assert placement["swap_experts"] is True
        names = [name for name, _ in seen]
        assert names[:2] == ["text_encoder", "text_encoder"]   # the prompt, then the negative prompt
        names = names[2:]
        assert "transformer" in names and "transformer_2" in names
        for name, where in seen:
            others = {n: ("cuda" if n == name else "cpu") for n in WATCHED}
            assert where == others, (name, where)             # only the component computing is on the GPU
        boundary = names.index("transformer_2")
        assert set(names[:boundary]) == {"transformer"} and set(names[boundary:]) == {"transformer_2"}
        moves = [(m["component"], m["to"]) for m in placement["moves"]]
        first = [("transformer", "host"), ("transformer_2", "host")] if run == 1 else \
            [("transformer_2", "host"), ("text_encoder", "device")]
        assert moves == first + [("text_encoder", "host"), ("transformer", "device"),
                                 ("transformer", "host"), ("transformer_2", "device")]
        assert all(m["bytes"] == sizes[m["component"]] for m in placement["moves"])
        assert placement["bytes_moved"] == sum(m["bytes"] for m in placement["moves"])
        assert (read_frames(out) == read_frames(tmp_path / "resident.mp4")).all()
        assert out.read_bytes() == (tmp_path / "resident.mp4").read_bytes()
