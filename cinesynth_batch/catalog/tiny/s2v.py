"""Tiny random-weight stand-ins for the non-transformer files of Wan2.2-S2V-14B, in the official formats.

``build_tiny_s2v_components(folder)`` writes::

    folder/
    ├── Wan2.1_VAE.pth                      # tiny Wan2.1 VAE, official key names, float32 tensor dict
    ├── models_t5_umt5-xxl-enc-bf16.pth    # tiny UMT5 encoder, official key names, bfloat16 tensor dict
    ├── google/umt5-xxl/                    # T5 (Unigram) tokenizer: tokenizer.json + tokenizer_config.json
    └── wav2vec2-large-xlsr-53-english/     # tiny Wav2Vec2ForCTC + feature extractor + CTC tokenizer

The files load through the same code as the real ones (``components.load_wan21_vae``,
``components.load_umt5_encoder``, ``audio_features.load_wav2vec2``). What a tiny S2V transformer
has to match:

* VAE: z_dim 16, spatial stride 8, temporal stride 4 (same structure as the real VAE, base_dim 4);
* text states: ``TINY_T5_DIM`` wide (the real UMT5-XXL: 4096);
* audio: ``TINY_W2V_LAYERS + 1`` hidden states of ``TINY_W2V_DIM`` (the real wav2vec2-large: 25 x 1024),
  at the real 50 frames per second (the convolutional front end keeps its real kernels and strides).

Weights come from fixed seeds and the torch files are serialised to memory before being written,
so two builds give byte-identical files (about 1.3 MB in all).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import string
from pathlib import Path
from typing import Any

from ...models.s2v.components import (
    T5_FILE,
    T5_TOKENIZER_DIR,
    VAE_FILE,
    WAV2VEC2_DIR,
    Wan21VAEArch,
    UMT5Arch,
    umt5_config,
    umt5_state_dict_to_official,
    wan21_vae_state_dict_to_official,
)
from ...models.s2v.transformer import S2V_14B_CONFIG

__all__ = [
    "TINY_VAE_ARCH",
    "TINY_T5_ARCH",
    "TINY_T5_DIM",
    "TINY_W2V_DIM",
    "TINY_W2V_LAYERS",
    "build_tiny_s2v_components",
    "tiny_t5_vocab",
]

TINY_VAE_ARCH = Wan21VAEArch(base_dim=4, z_dim=16)
TINY_T5_ARCH = UMT5Arch(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2, num_buckets=32)
TINY_T5_DIM = TINY_T5_ARCH.d_model
TINY_W2V_DIM = 32
TINY_W2V_LAYERS = 2                  # -> 3 hidden states (embeddings output + one per layer)

_SEED_VAE, _SEED_T5, _SEED_W2V = 2101, 2102, 2103

_WORDS = (
    "the a an of and in on with to is are at by his her their from person man woman girl boy "
    "talks sings speaks smiles looks walks camera close up portrait face mouth light room "
    "red blue green white black fox car snowy forest city street night day slowly"
).split()


def tiny_t5_vocab() -> list[tuple[str, float]]:
    """The Unigram vocabulary of the tiny tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, ``▁``, words,
    then single characters (with and without the word-start marker), so any ASCII text tokenizes."""
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    seen = {p for p, _ in vocab}
    for i, w in enumerate(_WORDS):
        piece = "\u2581" + w
        if piece not in seen:
            vocab.append((piece, -6.0 - 0.01 * i))
            seen.add(piece)
    for c in string.ascii_letters + string.digits + string.punctuation:
        for piece, score in ((c, -10.0), ("\u2581" + c, -11.0)):
            if piece not in seen:
                vocab.append((piece, score))
                seen.add(piece)
    return vocab


def _torch_bytes(sd) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _draw(shapes: dict[str, tuple[int, ...]], seed: int, special) -> dict:
    """Weights for every name in order from one seeded generator: ``special(name, shape, gen)`` may
    return a tensor; otherwise norms get ones, biases zeros, the rest N(0, 1/fan_in)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        t = special(name, shape, gen)
        if t is None:
            if name.endswith(".gamma") or "norm" in name.rsplit(".", 2)[-2]:
                t = torch.ones(shape)
            elif name.endswith(".bias"):
                t = torch.zeros(shape)
            else:
                fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
                t = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        out[name] = t.contiguous()
    return out


def _tiny_vae_bytes() -> bytes:
    import torch
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        model = AutoencoderKLWan(**TINY_VAE_ARCH.diffusers_config())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = _draw(shapes, _SEED_VAE, lambda n, s, g: None)
    return _torch_bytes(wan21_vae_state_dict_to_official(sd))


def _tiny_t5_bytes() -> bytes:
    import torch
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(TINY_T5_ARCH))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}

    def special(name, shape, gen):
        if name == "shared.weight":
            return torch.randn(shape, generator=gen)
        if name.endswith("relative_attention_bias.weight"):
            return 0.1 * torch.randn(shape, generator=gen)
        return None

    sd = _draw(shapes, _SEED_T5, special)
    official = {k: v.to(torch.bfloat16) for k, v in umt5_state_dict_to_official(sd).items()}
    return _torch_bytes(official)


def _save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5Tokenizer

    tok = Tokenizer(Unigram(tiny_t5_vocab(), unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)])
    wrapped = T5Tokenizer(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                          extra_ids=0, model_max_length=512)
    folder.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(folder))


def _save_wav2vec2(folder: Path) -> None:
    import torch
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor,
                              Wav2Vec2ForCTC, Wav2Vec2Processor)

    letters = ["<pad>", "<s>", "</s>", "<unk>", "|", "'", "-"] + list(string.ascii_uppercase)
    vocab = {c: i for i, c in enumerate(letters)}
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=TINY_W2V_DIM,
        num_hidden_layers=TINY_W2V_LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        ctc_loss_reduction="mean",
        architectures=["Wav2Vec2ForCTC"],
    )
    from transformers.utils import logging as hf_logging

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED_W2V)
        model = Wav2Vec2ForCTC(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(folder), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    vocab_file = folder / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, indent=2, sort_keys=False) + "\n")
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(str(folder))
    extractor.save_pretrained(str(folder))          # preprocessor_config.json, as in the real folder


def build_tiny_s2v_components(folder: str | Path) -> Path:
    """Write the tiny VAE, UMT5 encoder, T5 tokenizer and wav2vec2 folder into ``folder``.

    Existing files of the same names are replaced. Returns ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / VAE_FILE, _tiny_vae_bytes())
    _write(folder / T5_FILE, _tiny_t5_bytes())
    _save_tokenizer(folder / T5_TOKENIZER_DIR)
    _save_wav2vec2(folder / WAV2VEC2_DIR)
    return folder


def tiny_s2v_config() -> dict[str, Any]:
    """A tiny S2V transformer with the 14B model's structure (FramePack, AdaIN audio injection,
    zero-timestep reference/motion tokens, pose conditioning), for the tiny profile and tests.

    Text width 16 matches the tiny UMT5 of the tiny Wan profile; latent and pose-condition
    channels are 16 (VAE latents); audio features are 2 layers of width 8.
    """
    small = {"audio_dim": 8, "audio_inject_layers": [0, 1], "zero_init": False, "dim": 24,
             "ffn_dim": 32, "freq_dim": 32, "text_dim": 16, "num_heads": 2, "num_layers": 2,
             "num_audio_layers": 2}
    return {**copy.deepcopy(S2V_14B_CONFIG), **small}
