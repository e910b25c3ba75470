"""A LoRA that does not fit its model fails in one line: the tensors that do not fit are counted
and the first is named with its sizes, on both loaders (diffusers pipelines and the S2V
transformer); a render's closing line quotes each failure's first line only."""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from cinesynth_batch.errors import StageError  # noqa: E402
from cinesynth_batch.errors import first_line  # noqa: E402
from cinesynth_batch.execute.render import BRIEF_CHARS  # noqa: E402
from cinesynth_batch.runtime.lora import FAILURE_CHARS, load_failure, quiet_load_log  # noqa: E402


def test_a_size_mismatch_is_counted_and_its_first_tensor_named():
    model = torch.nn.ModuleDict({"q": torch.nn.Linear(8, 8), "k": torch.nn.Linear(8, 8)})
    bigger = {"q.weight": torch.zeros(16, 16), "q.bias": torch.zeros(16), "k.weight": torch.zeros(8, 16),
              "k.bias": torch.zeros(8)}
    with pytest.raises(RuntimeError) as exc:
        model.load_state_dict(bigger)
    assert load_failure(exc.value) == ("3 of its tensors do not fit the model's layers (the first: "
                                       "q.weight is 16x16 in the file, 8x8 in the model)")


def test_an_adapter_name_is_dropped_from_the_tensor_it_names():
    text = ("Error(s) in loading state_dict for M:\n\tsize mismatch for blocks.3.ffn.net.2.lora_B.t1_motion_ab12.weight: "
            "copying a param with shape torch.Size([5120, 64]) from checkpoint, the shape in current model is "
            "torch.Size([24, 64]).")
    assert load_failure(RuntimeError(text)) == ("1 of its tensors does not fit the model's layers (the first: "
                                                "blocks.3.ffn.net.2.lora_B is 5120x64 in the file, 24x64 in the model)")


def test_any_other_failure_keeps_its_first_line_cut_short():
    assert load_failure(KeyError("no such key")) == "KeyError: 'no such key'"
    long = ValueError("x" * (FAILURE_CHARS + 50) + "\nsecond line")
    assert load_failure(long) == "ValueError: " + "x" * FAILURE_CHARS + " ..."


def test_the_diffusers_log_of_a_failed_load_is_held_back_and_then_restored(caplog):
    log = logging.getLogger("diffusers.loaders.peft")
    before = log.level
    with caplog.at_level(logging.DEBUG):
        with quiet_load_log():
            log.error("Loading x was unsuccessful with the following error: ...")
        log.error("after")
    assert [r.getMessage() for r in caplog.records if r.name == log.name] == ["after"]
    assert log.level == before


def test_the_s2v_transformer_names_a_lora_of_other_sizes_in_one_line(tmp_path):
    from cinesynth_batch.catalog.shapes.configs import A14B_EXPERT
    from cinesynth_batch.catalog.shapes.loras import wan_lora_shapes, write_wan_lora
    from cinesynth_batch.catalog.tiny.s2v import tiny_s2v_config
    from cinesynth_batch.models.s2v.lora import PhaseLora, PhaseLoras
    from cinesynth_batch.models.s2v.transformer import WanS2VTransformer3DModel

    model = WanS2VTransformer3DModel(**tiny_s2v_config())
    layers = model.config.num_layers
    big = {**A14B_EXPERT, "num_layers": layers}
    path = write_wan_lora(tmp_path / "talk.safetensors", rank=2, config=big)
    with pytest.raises(StageError) as exc:
        PhaseLoras(model).use([PhaseLora("talk", path, 1.0, 1.0)])
    width = model.config.num_heads * (model.config.dim // model.config.num_heads)
    assert exc.value.message == (
        f"cannot load LoRA 'talk' into the S2V transformer: {layers * len(wan_lora_shapes(big)) * 2} of its "
        f"tensors do not fit the model's layers (the first: blocks.0.self_attn.q.lora_A is 2x5120 in the "
        f"file, 2x{width} in the model)")


def test_the_closing_line_quotes_each_failure_briefly():
    assert first_line("boom", BRIEF_CHARS) == "boom"
    assert first_line("first\nsecond", BRIEF_CHARS) == "first ..."
    assert first_line("y" * (BRIEF_CHARS + 1), BRIEF_CHARS) == "y" * BRIEF_CHARS + " ..."


def _damaged(tmp_path):
    """A LoRA file of random bytes, and one whose header promises more tensor bytes than it has."""
    import json
    import struct

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(bytes(range(256)) * 20)
    header = json.dumps({"blocks.0.self_attn.q.lora_A.weight": {"dtype": "F32", "shape": [100000, 100000],
                                                                "data_offsets": [0, 40_000_000_000]}}).encode()
    short = tmp_path / "short.safetensors"
    short.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    return {junk: "header too large", short: "incomplete metadata, file not fully covered"}


def test_a_damaged_lora_file_is_refused_by_name_before_it_is_loaded(tmp_path):
    from cinesynth_batch.runtime.lora import DAMAGED_HINT, check_lora_file

    for path, why in _damaged(tmp_path).items():
        with pytest.raises(StageError) as exc:
            check_lora_file(path, "style")
        assert exc.value.message == (f"LoRA 'style' ({path}) cannot be read: SafetensorError: Error while "
                                     f"deserializing header: {why}")
        assert exc.value.hint == DAMAGED_HINT


def test_the_s2v_transformer_refuses_a_damaged_lora_file_by_name(tmp_path):
    from cinesynth_batch.catalog.tiny.s2v import tiny_s2v_config
    from cinesynth_batch.models.s2v.lora import PhaseLora, PhaseLoras
    from cinesynth_batch.models.s2v.transformer import WanS2VTransformer3DModel
    from cinesynth_batch.runtime.lora import DAMAGED_HINT

    model = WanS2VTransformer3DModel(**tiny_s2v_config())
    for path, why in _damaged(tmp_path).items():
        with pytest.raises(StageError) as exc:
            PhaseLoras(model).use([PhaseLora("talk", path, 1.0, 1.0)])
        assert exc.value.message == (f"cannot read LoRA 'talk' ({path}): SafetensorError: Error while "
                                     f"deserializing header: {why}")
        assert exc.value.hint == DAMAGED_HINT
