"""A tiny random HTDemucs (no transformer layers) in the safetensors layout of
``adefossez/HTDemucs``, for the tiny profile's ``separate`` role."""

from __future__ import annotations

from pathlib import Path

from .parts import seeded

TINY_DEMUCS = "htdemucs"
TINY_SIG = "tiny0001"


def build_tiny_demucs(dst: Path) -> None:
    import torch
    from demucs.htdemucs import HTDemucs

    from ...models.separation import save_demucs

    with seeded(5001):
        model = HTDemucs(sources=["drums", "bass", "other", "vocals"], audio_channels=2, channels=4,
                         growth=2, nfft=512, depth=2, t_layers=0, segment=4, samplerate=16000,
                         dconv_mode=0, bottom_channels=0, rewrite=True)
        gen = torch.Generator().manual_seed(5002)
        with torch.no_grad():
            for _, param in sorted(model.named_parameters()):
                param.copy_(torch.randn(param.shape, generator=gen) * (0.3 if param.dim() > 1 else 0.05))
    save_demucs(model.eval(), Path(dst), TINY_SIG)
