"""The non-transformer parts of an official Wan2.2-S2V-14B folder: the Wan2.1 VAE and the UMT5 encoder.

The official folder ships both in the Wan team's own (non-diffusers) layout:

* ``Wan2.1_VAE.pth``: a plain ``{name: tensor}`` dict in the official ``WanVAE_`` naming
  (``encoder.downsamples.N.residual.2.weight`` ...). :func:`load_wan21_vae` renames it to
  diffusers' :class:`~diffusers.AutoencoderKLWan` and loads it strictly.
* ``models_t5_umt5-xxl-enc-bf16.pth``: the UMT5-XXL encoder in the official ``T5Encoder`` naming
  (``blocks.N.attn.q.weight`` ...). :func:`load_umt5_encoder` renames it to transformers'
  :class:`~transformers.UMT5EncoderModel` and loads it strictly, with the tokenizer of
  ``google/umt5-xxl/``.

Both loaders infer the architecture from the tensors, so the tiny files written by
``tiny_components.build_tiny_s2v_components`` load through the same code as the real ones.

Key mapping, VAE (official -> diffusers), per residual block ``R``::

    R.residual.0.gamma -> R.norm1.gamma        R.residual.2.{weight,bias} -> R.conv1.*
    R.residual.3.gamma -> R.norm2.gamma        R.residual.6.{weight,bias} -> R.conv2.*
    R.shortcut.*       -> R.conv_shortcut.*

and per model part::

    encoder.conv1 / decoder.conv1             -> encoder.conv_in / decoder.conv_in
    encoder.head.0 / .head.2 (same in decoder) -> encoder.norm_out / encoder.conv_out
    {encoder,decoder}.middle.0 / .1 / .2      -> mid_block.resnets.0 / attentions.0 / resnets.1
    encoder.downsamples.N                      -> encoder.down_blocks.N   (same flat index)
    decoder.upsamples.N (flat list)            -> decoder.up_blocks.i.resnets.j | up_blocks.i.upsamplers.0
    conv1 / conv2 (top level)                  -> quant_conv / post_quant_conv

Resample (``resample.1``, ``time_conv``) and attention (``norm``, ``to_qkv``, ``proj``) sub-keys keep
their names. The decoder's flat list holds ``num_res_blocks + 1`` residual blocks per stage followed by
one resample, except after the last stage.

Key mapping, UMT5 (official -> transformers), per block ``i`` (``B = encoder.block.i``)::

    token_embedding.weight               -> shared.weight (+ tied encoder.embed_tokens.weight)
    blocks.i.norm1.weight                -> B.layer.0.layer_norm.weight
    blocks.i.attn.{q,k,v,o}.weight       -> B.layer.0.SelfAttention.{q,k,v,o}.weight
    blocks.i.pos_embedding.embedding.weight -> B.layer.0.SelfAttention.relative_attention_bias.weight
    blocks.i.norm2.weight                -> B.layer.1.layer_norm.weight
    blocks.i.ffn.gate.0.weight           -> B.layer.1.DenseReluDense.wi_0.weight   (the GELU branch)
    blocks.i.ffn.fc1.weight              -> B.layer.1.DenseReluDense.wi_1.weight   (the linear branch)
    blocks.i.ffn.fc2.weight              -> B.layer.1.DenseReluDense.wo.weight
    norm.weight                          -> encoder.final_layer_norm.weight

The official encoder is UMT5-style (a relative position bias in every block, ``shared_pos=False``),
unscaled attention, tanh-GELU gated FFN (``gated-gelu`` = ``gelu_new``), RMS norms with eps 1e-6,
32 buckets and max distance 128: the same maths as ``UMT5EncoderModel``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ...errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

__all__ = [
    "VAE_FILE",
    "T5_FILE",
    "T5_TOKENIZER_DIR",
    "WAV2VEC2_DIR",
    "TEXT_LEN",
    "Wan21VAEArch",
    "UMT5Arch",
    "read_state_dict",
    "infer_wan21_vae_arch",
    "wan21_vae_key_pairs",
    "wan21_vae_state_dict_to_diffusers",
    "wan21_vae_state_dict_to_official",
    "load_wan21_vae",
    "infer_umt5_arch",
    "umt5_config",
    "umt5_state_dict_to_hf",
    "umt5_state_dict_to_official",
    "load_umt5_encoder",
    "clean_prompt",
    "encode_prompts",
]

# File names inside the official Wan2.2-S2V-14B folder (wan/configs/wan_s2v_14B.py).
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"
WAV2VEC2_DIR = "wav2vec2-large-xlsr-53-english"
TEXT_LEN = 512                      # the official text_len: prompts are padded/truncated to 512 tokens


# --------------------------------------------------------------------------------------------------
# Reading checkpoint files
# --------------------------------------------------------------------------------------------------

def read_state_dict(path: str | Path) -> dict[str, "torch.Tensor"]:
    """A flat ``{name: tensor}`` dict from a ``.safetensors`` file or a torch ``.pth``/``.pt``/``.bin``.

    Torch files are read with ``weights_only=True`` (memory-mapped when the file allows it).
    Raises :class:`ModelError` for a missing file or one that is not a dict of tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                # Files in the legacy (non-zip) torch format cannot be memory-mapped.
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is "unreadable checkpoint"
        raise ModelError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} is not a plain state dict of tensors",
                         hint="expected the official file, saved as {name: tensor}")
    return dict(obj)


def _cast(sd: Mapping[str, "torch.Tensor"], dtype) -> dict[str, "torch.Tensor"]:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in sd.items()}


def _load_strict(model, sd: Mapping[str, "torch.Tensor"], what: str) -> None:
    """``load_state_dict(strict=True, assign=True)`` with a readable error listing the first mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sd) if tuple(expected[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shapes (e.g. {k}: {tuple(sd[k].shape)} "
                         f"vs {tuple(expected[k].shape)})")
        raise ModelError(f"{what}: state dict does not match the model: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ModelError(f"{what}: tensors left uninitialised after loading: {left[:5]}")


# --------------------------------------------------------------------------------------------------
# Wan2.1 VAE
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Wan21VAEArch:
    """The shape of a Wan2.1 VAE (defaults: the released Wan2.1 VAE)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    decoder_base_dim: int | None = None

    def diffusers_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = dict(
            base_dim=self.base_dim,
            z_dim=self.z_dim,
            dim_mult=list(self.dim_mult),
            num_res_blocks=self.num_res_blocks,
            attn_scales=[],
            temperal_downsample=list(self.temperal_downsample),
            dropout=0.0,
        )
        if self.decoder_base_dim not in (None, self.base_dim):
            cfg["decoder_base_dim"] = self.decoder_base_dim
        if self.z_dim != 16:
            # The latent statistics in diffusers' defaults are the 16 channels of the real VAE.
            cfg["latents_mean"] = [0.0] * self.z_dim
            cfg["latents_std"] = [1.0] * self.z_dim
        return cfg


# Official residual-block sub-keys -> diffusers (bidirectional, suffixes after the block prefix).
_VAE_RES = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_VAE_ATTN = {k: k for k in ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias")}
_VAE_RESAMPLE = {k: k for k in ("resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias")}
_VAE_HEAD = {"head.0.gamma": "norm_out.gamma", "head.2.weight": "conv_out.weight", "head.2.bias": "conv_out.bias"}


def _block_indices(keys, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def infer_wan21_vae_arch(sd: Mapping[str, Any]) -> Wan21VAEArch:
    """Read the architecture off a Wan2.1 VAE state dict in either naming (official or diffusers).

    Only shapes are used, so meta tensors work. Raises :class:`ModelError` when the dict is not a
    Wan2.1-style VAE (e.g. attention inside the down/up stages, or a Wan2.2 residual VAE).
    """
    official = "encoder.conv1.weight" in sd
    if not official and "encoder.conv_in.weight" not in sd:
        raise ModelError("not a Wan2.1 VAE state dict (no encoder.conv1.weight / encoder.conv_in.weight)")
    if official:
        blocks, res_w, pq = "encoder.downsamples.", "residual.2.weight", "conv2.weight"
        dec_in = "decoder.conv1.weight"
    else:
        blocks, res_w, pq = "encoder.down_blocks.", "conv1.weight", "post_quant_conv.weight"
        dec_in = "decoder.conv_in.weight"
    try:
        base_dim = int(sd["encoder.conv1.weight" if official else "encoder.conv_in.weight"].shape[0])
        z_dim = int(sd[pq].shape[0])
        stages: list[list[int]] = [[]]          # out channels of each residual block, per stage
        temporal: list[bool] = []
        for n in _block_indices(sd.keys(), blocks):
            p = f"{blocks}{n}."
            if p + res_w in sd:
                stages[-1].append(int(sd[p + res_w].shape[0]))
            elif p + "resample.1.weight" in sd:
                temporal.append(p + "time_conv.weight" in sd)
                stages.append([])
            else:
                kinds = sorted(k[len(p):] for k in sd if k.startswith(p))
                raise ModelError(f"unsupported VAE block {p[:-1]} ({kinds[:4]})",
                                 hint="only Wan2.1 VAEs without stage attention are supported")
        if any(not s for s in stages):
            raise ModelError("VAE encoder has an empty stage")
        nrb = len(stages[0])
        if any(len(s) != nrb for s in stages):
            raise ModelError(f"VAE stages have different residual block counts: {[len(s) for s in stages]}")
        outs = [s[-1] for s in stages]
        if any(o % base_dim for o in outs):
            raise ModelError(f"VAE stage widths {outs} are not multiples of base_dim {base_dim}")
        dim_mult = tuple(o // base_dim for o in outs)
        dec_dim = int(sd[dec_in].shape[0]) // dim_mult[-1]
    except KeyError as exc:
        raise ModelError(f"incomplete Wan2.1 VAE state dict: no {exc.args[0]}") from exc
    return Wan21VAEArch(base_dim=base_dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=nrb,
                        temperal_downsample=tuple(temporal),
                        decoder_base_dim=None if dec_dim == base_dim else dec_dim)


def wan21_vae_key_pairs(arch: Wan21VAEArch) -> list[tuple[str, str]]:
    """Every ``(official, diffusers)`` name pair a VAE of this shape can have.

    Shortcut convolutions and ``time_conv`` are listed for every block that may carry them; a real
    state dict holds a subset. Renaming goes through this table, the strict load checks the rest.
    """
    pairs: list[tuple[str, str]] = []

    def add(src: str, dst: str, table: Mapping[str, str]) -> None:
        pairs.extend((f"{src}.{a}", f"{dst}.{b}") for a, b in table.items())

    wb = {"weight": "weight", "bias": "bias"}
    stages = len(arch.dim_mult)
    nrb = arch.num_res_blocks
    for part in ("encoder", "decoder"):
        add(f"{part}.conv1", f"{part}.conv_in", wb)
        add(f"{part}.middle.0", f"{part}.mid_block.resnets.0", _VAE_RES)
        add(f"{part}.middle.1", f"{part}.mid_block.attentions.0", _VAE_ATTN)
        add(f"{part}.middle.2", f"{part}.mid_block.resnets.1", _VAE_RES)
        pairs.extend((f"{part}.{a}", f"{part}.{b}") for a, b in _VAE_HEAD.items())
    # Encoder: a flat list in both namings.
    n = 0
    for i in range(stages):
        for _ in range(nrb):
            add(f"encoder.downsamples.{n}", f"encoder.down_blocks.{n}", _VAE_RES)
            n += 1
        if i != stages - 1:
            add(f"encoder.downsamples.{n}", f"encoder.down_blocks.{n}", _VAE_RESAMPLE)
            n += 1
    # Decoder: a flat list officially, nested stages in diffusers.
    n = 0
    for i in range(stages):
        for j in range(nrb + 1):
            add(f"decoder.upsamples.{n}", f"decoder.up_blocks.{i}.resnets.{j}", _VAE_RES)
            n += 1
        if i != stages - 1:
            add(f"decoder.upsamples.{n}", f"decoder.up_blocks.{i}.upsamplers.0", _VAE_RESAMPLE)
            n += 1
    add("conv1", "quant_conv", wb)
    add("conv2", "post_quant_conv", wb)
    return pairs


def _rename(sd: Mapping[str, Any], table: Mapping[str, str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unknown = [k for k in sd if k not in table]
    if unknown:
        raise ModelError(f"{what}: {len(unknown)} key(s) with no mapping (e.g. {sorted(unknown)[:3]})")
    for k, v in sd.items():
        out[table[k]] = v
    return out


def wan21_vae_state_dict_to_diffusers(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Official ``WanVAE_`` names -> ``AutoencoderKLWan`` names (tensors are not copied)."""
    table = dict(wan21_vae_key_pairs(infer_wan21_vae_arch(sd)))
    return _rename(sd, table, "Wan2.1 VAE (official -> diffusers)")


def wan21_vae_state_dict_to_official(sd: Mapping[str, Any]) -> dict[str, Any]:
    """``AutoencoderKLWan`` names -> official ``WanVAE_`` names (the inverse of the above)."""
    table = {d: o for o, d in wan21_vae_key_pairs(infer_wan21_vae_arch(sd))}
    return _rename(sd, table, "Wan2.1 VAE (diffusers -> official)")


def load_wan21_vae(path: str | Path, dtype=None) -> "AutoencoderKLWan":
    """Load an official ``Wan2.1_VAE.pth`` (or ``.safetensors``) as a diffusers ``AutoencoderKLWan``.

    The architecture is read from the tensors (the released file gives the default config: base_dim
    96, z_dim 16, dim_mult [1, 2, 4, 4], 2 residual blocks, temporal downsampling [False, True, True]).
    A file already in diffusers naming is accepted as well. Loading is strict: every model tensor must
    come from the file and every file tensor must be used. ``dtype`` defaults to float32 (the official
    code runs the VAE in float32). Returns the model in eval mode without gradients, on CPU.
    """
    import torch
    from diffusers import AutoencoderKLWan

    sd = read_state_dict(path)
    if "encoder.conv1.weight" in sd:
        sd = wan21_vae_state_dict_to_diffusers(sd)
    arch = infer_wan21_vae_arch(sd)
    with torch.device("meta"):
        model = AutoencoderKLWan(**arch.diffusers_config())
    _load_strict(model, _cast(sd, dtype or torch.float32), f"Wan2.1 VAE {path}")
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# UMT5 encoder
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UMT5Arch:
    """The shape of a UMT5 encoder (defaults: UMT5-XXL as used by Wan)."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32


def infer_umt5_arch(sd: Mapping[str, Any]) -> UMT5Arch:
    """Read the encoder's shape off an official-named (``blocks.N...``) or HF-named state dict."""
    if "token_embedding.weight" in sd:
        emb, prefix = "token_embedding.weight", "blocks."
        q, ff, rel = "attn.q.weight", "ffn.fc1.weight", "pos_embedding.embedding.weight"
        if "pos_embedding.embedding.weight" in sd:
            raise ModelError("T5 encoder with a shared position bias (shared_pos=True) is not UMT5",
                             hint="expected models_t5_umt5-xxl-enc-bf16.pth")
    elif "shared.weight" in sd or "encoder.embed_tokens.weight" in sd:
        emb = "shared.weight" if "shared.weight" in sd else "encoder.embed_tokens.weight"
        prefix = "encoder.block."
        q, ff = "layer.0.SelfAttention.q.weight", "layer.1.DenseReluDense.wi_1.weight"
        rel = "layer.0.SelfAttention.relative_attention_bias.weight"
    else:
        raise ModelError("not a T5 encoder state dict (no token_embedding.weight / shared.weight)")
    layers = _block_indices(sd.keys(), prefix)
    if not layers or layers != list(range(len(layers))):
        raise ModelError(f"T5 encoder blocks are missing or not numbered 0..N-1: {layers[:5]}")
    try:
        vocab, d_model = (int(s) for s in sd[emb].shape)
        buckets, heads = (int(s) for s in sd[f"{prefix}0.{rel}"].shape)
        dim_attn = int(sd[f"{prefix}0.{q}"].shape[0])
        d_ff = int(sd[f"{prefix}0.{ff}"].shape[0])
    except KeyError as exc:
        raise ModelError(f"incomplete T5 encoder state dict: no {exc.args[0]}",
                         hint="UMT5 needs a relative position bias in every block") from exc
    if dim_attn % heads:
        raise ModelError(f"T5 attention width {dim_attn} is not a multiple of {heads} heads")
    return UMT5Arch(vocab_size=vocab, d_model=d_model, d_kv=dim_attn // heads, d_ff=d_ff,
                    num_heads=heads, num_layers=len(layers), num_buckets=buckets)


def umt5_config(arch: UMT5Arch):
    """A ``UMT5Config`` for the encoder (gated-gelu = tanh GELU, eps 1e-6, max distance 128)."""
    from transformers import UMT5Config

    return UMT5Config(
        vocab_size=arch.vocab_size,
        d_model=arch.d_model,
        d_kv=arch.d_kv,
        d_ff=arch.d_ff,
        num_layers=arch.num_layers,
        num_decoder_layers=arch.num_layers,
        num_heads=arch.num_heads,
        relative_attention_num_buckets=arch.num_buckets,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


_T5_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def _umt5_pairs(num_layers: int) -> list[tuple[str, str]]:
    pairs = [("token_embedding.weight", "shared.weight"), ("norm.weight", "encoder.final_layer_norm.weight")]
    for i in range(num_layers):
        pairs.extend((f"blocks.{i}.{a}", f"encoder.block.{i}.{b}") for a, b in _T5_BLOCK.items())
    return pairs


def umt5_state_dict_to_hf(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Official ``T5Encoder`` names -> ``UMT5EncoderModel`` names.

    The token embedding appears twice in the result (``shared.weight`` and the tied
    ``encoder.embed_tokens.weight``, the same tensor), as in the model's own state dict.
    """
    arch = infer_umt5_arch(sd)
    out = _rename(sd, dict(_umt5_pairs(arch.num_layers)), "UMT5 (official -> transformers)")
    if "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def umt5_state_dict_to_official(sd: Mapping[str, Any]) -> dict[str, Any]:
    """``UMT5EncoderModel`` names -> official ``T5Encoder`` names (the inverse; the tied copy is dropped)."""
    sd = dict(sd)
    emb = sd.pop("encoder.embed_tokens.weight", None)
    if "shared.weight" not in sd and emb is not None:
        sd["shared.weight"] = emb
    arch = infer_umt5_arch(sd)
    table = {h: o for o, h in _umt5_pairs(arch.num_layers)}
    return _rename(sd, table, "UMT5 (transformers -> official)")


def load_umt5_encoder(pth: str | Path, tokenizer_dir: str | Path, dtype=None) -> tuple["UMT5EncoderModel", Any]:
    """Load ``models_t5_umt5-xxl-enc-bf16.pth`` as ``UMT5EncoderModel`` plus the tokenizer folder.

    The config is read from the tensors (UMT5-XXL: d_model 4096, d_ff 10240, 64 heads, 24 layers,
    vocab 256384, gated-gelu). Strict load; ``dtype`` defaults to bfloat16 (the official t5_dtype).
    Returns ``(model, tokenizer)``: the model in eval mode without gradients, on CPU, with
    ``encoder.embed_tokens`` tied to ``shared``; the tokenizer from ``AutoTokenizer.from_pretrained``.
    """
    import torch
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise ModelError(f"T5 tokenizer folder not found: {tokenizer_dir}")
    sd = read_state_dict(pth)
    if "token_embedding.weight" in sd:
        sd = umt5_state_dict_to_hf(sd)
    elif "encoder.embed_tokens.weight" not in sd and "shared.weight" in sd:
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    arch = infer_umt5_arch(sd)
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(arch))
    _load_strict(model, _cast(sd, dtype or torch.bfloat16), f"UMT5 encoder {pth}")
    model.set_input_embeddings(model.shared)            # one embedding tensor, not two copies
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the T5 tokenizer from {tokenizer_dir}: {exc}") from exc
    if len(tokenizer) > arch.vocab_size:
        raise ModelError(f"tokenizer has {len(tokenizer)} tokens, the encoder only {arch.vocab_size}")
    return model.eval().requires_grad_(False), tokenizer


def clean_prompt(text: str) -> str:
    """The official prompt cleaning (``clean='whitespace'``): ftfy, HTML unescape twice, collapse spaces."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # pragma: no cover - ftfy is a render dependency
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def encode_prompts(model, tokenizer, prompts: str | list[str], max_length: int = TEXT_LEN,
                   device=None) -> list["torch.Tensor"]:
    """Encode prompts the official way: clean, pad/truncate to ``max_length`` with ``</s>``, run the
    encoder with the attention mask, and return each prompt's states cut to its own length:
    a list of ``[L_i, d_model]`` tensors (``L_i`` counts the ``</s>``; at most ``max_length``)."""
    import torch

    if isinstance(prompts, str):
        prompts = [prompts]
    device = device or next(model.parameters()).device
    batch = tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                      max_length=max_length, add_special_tokens=True, return_tensors="pt")
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    with torch.inference_mode():
        states = model(input_ids=ids, attention_mask=mask).last_hidden_state
    lens = mask.gt(0).sum(dim=1).tolist()
    return [s[:n] for s, n in zip(states, lens)]
