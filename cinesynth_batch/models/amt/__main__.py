"""``python -m cinesynth_batch.models.amt CHECKPOINT.pth OUT.safetensors``: convert an official AMT
checkpoint (``torch.load(weights_only=True)``: no pickled code runs)."""

from __future__ import annotations

import sys

from .weights import convert_checkpoint


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m cinesynth_batch.models.amt AMT.pth OUT.safetensors", file=sys.stderr)
        return 2
    out, variant = convert_checkpoint(argv[0], argv[1])
    print(f"wrote {out} ({variant})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
