"""Pieces shared by the tiny-model builders: seeded weights, the offline T5 tokenizer, a tiny
UMT5 text encoder. Every builder draws its weights under a fixed seed so the files are the same
bytes on every machine."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global RNG at ``seed`` inside the block, restored after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def t5_tokenizer():
    """A T5 (Unigram) tokenizer built offline: ``<pad>``=0, ``</s>``=1, ``<unk>``=2."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&"
    pieces += [(c, -3.0) for c in chars]
    pieces += [("▁" + c, -2.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def tiny_umt5(vocab_size: int, d_model: int, seed: int):
    """A 2-layer UMT5 encoder of width ``d_model`` with seeded random weights."""
    from transformers import UMT5Config, UMT5EncoderModel

    with seeded(seed):
        config = UMT5Config(
            vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        return UMT5EncoderModel(config).eval()


def small_draws(model, seed: int, fixed: Callable[[str, Any], float | None], path: str | Path) -> Path:
    """Write seeded small weights for ``model`` (built on the meta device) to the safetensors file
    ``path``, in name order: ``fixed(name, tensor)`` gives a constant for a tensor (None: draw it);
    4-d kernels are drawn N(0, (0.5/sqrt(fan_in))^2) (flows of a few pixels), the rest N(0, 0.01^2);
    float32."""
    import math

    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, p in sorted(model.state_dict().items()):
        value = fixed(name, p)
        if value is not None:
            t = torch.full(tuple(p.shape), float(value))
        elif p.dim() == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            t = torch.randn(tuple(p.shape), generator=gen) * (0.5 / math.sqrt(fan_in))
        else:
            t = torch.randn(tuple(p.shape), generator=gen) * 0.01
        state[name] = t.to(torch.float32).contiguous()
    path = Path(path)
    save_file(state, str(path), metadata={"format": "pt"})
    return path
