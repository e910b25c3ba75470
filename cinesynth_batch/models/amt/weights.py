"""AMT weights: safetensors only, with the configuration read off the tensors.

The official checkpoints (``amt-s.pth``, ``amt-l.pth``, ``amt-g.pth``, ``gopro_amt-s.pth``) hold
``{"state_dict": {...}}``. ``convert_checkpoint`` reads one with ``torch.load(weights_only=True)``
(tensors and plain containers only, no code), drops a ``module.`` prefix, checks that every tensor
lands on a parameter of the network its shapes describe, and writes safetensors:

    python -m cinesynth_batch.models.amt amt-g.pth weights/amt-g.safetensors
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ...errors import StageError
from .blocks import FEATURE_STAGES
from .network import AMT, AmtConfig, variant_name

_HINT = "convert the official checkpoint with `python -m cinesynth_batch.models.amt amt-g.pth out.safetensors`"


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> AmtConfig:
    """The configuration a state dict (official key names) was made with. The correlation radius
    is in no tensor's shape: it is 3 in every released model; the levels follow from the first
    correlation convolution's input width, ``2 * levels * (2r+1)^2`` (4 in every released model)."""
    try:
        bottleneck = "feat_encoder.layer1.0.conv3.weight" in sd
        last = "conv3" if bottleneck else "conv2"
        stages = [name for name, _ in FEATURE_STAGES if f"feat_encoder.{name}.0.conv1.weight" in sd]
        corr2 = sd.get("update4.convc2.weight")
        config = AmtConfig(
            channels=tuple(int(sd[f"encoder.pyramid{i}.0.0.weight"].shape[0]) for i in range(1, 5)),
            skip=int(sd["decoder4.convblock.1.conv2.0.weight"].shape[0]),
            flows=int(sd["decoder1.convblock.2.weight"].shape[1]) // 8,
            wide_stem=int(sd["encoder.pyramid1.0.0.weight"].shape[-1]) == 7,
            feat_widths=(int(sd["feat_encoder.conv1.weight"].shape[0]),)
            + tuple(int(sd[f"feat_encoder.{name}.0.{last}.weight"].shape[0]) for name in stages),
            feat_dim=int(sd["feat_encoder.conv2.weight"].shape[0]),
            bottleneck=bottleneck,
            hidden=int(sd["update4.gru.0.weight"].shape[0]),
            flow_dim=int(sd["update4.convf2.weight"].shape[0]),
            corr_dim=int(sd["update4.convc1.weight"].shape[0]),
            corr_dim2=None if corr2 is None else int(corr2.shape[0]),
            fc_dim=int(sd["update4.conv.weight"].shape[0]),
            comb_kernel=int(sd["comb_block.0.weight"].shape[-1]),
            refine_full="update3_high.gru.0.weight" in sd,
        )
        planes = int(sd["update4.convc1.weight"].shape[1])
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise StageError(f"not an AMT checkpoint: {type(exc).__name__}: {exc}", hint=_HINT) from None
    per_level = 2 * (2 * config.radius + 1) ** 2
    if planes % per_level or planes < per_level:
        raise StageError(f"AMT checkpoint with {planes} correlation channels: not a whole number of levels "
                         f"of radius {config.radius} ({per_level} channels each)", hint=_HINT)
    return replace(config, levels=planes // per_level)


def network_for(sd: dict[str, torch.Tensor], what: str) -> AMT:
    """The network ``sd`` describes, its weights loaded; every tensor must land on a parameter."""
    net = AMT(config_from_state_dict(sd))
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as exc:        # a shape that does not fit
        raise StageError(f"AMT weights {what} do not fit the network: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise StageError(f"AMT weights {what} do not fit the network: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}", hint=_HINT)
    return net.eval()


def load_amt_net(path: str | Path) -> AMT:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise StageError(f"AMT weights must be a .safetensors file, not {path.name}", hint=_HINT)
    try:
        sd = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise StageError(f"cannot read AMT weights {path}: {exc}") from exc
    return network_for(sd, str(path))


def convert_checkpoint(src: str | Path, dst: str | Path) -> tuple[Path, str]:
    """The official ``.pth`` as safetensors; returns the file and the variant it holds."""
    from safetensors.torch import save_file

    ckpt = torch.load(str(src), map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise StageError(f"{src} does not hold a state dict")
    out = {k.removeprefix("module."): v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    variant = variant_name(network_for(out, str(src)).config)
    dst = Path(dst)
    save_file(out, str(dst), metadata={"format": "pt"})   # one key: safetensors orders several at random
    return dst, variant
