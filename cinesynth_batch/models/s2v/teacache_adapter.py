"""TeaCache on the S2V transformer: where its first block's modulated input comes from.

The S2V blocks are called as ``block(x, temb, split, ...)``: tokens before ``split`` are the
noisy frames (modulated by the step's timestep), the rest are reference and motion tokens
(modulated by timestep 0). Audio is injected between blocks by ``audio_injector(idx, x, ...)``,
which a skipped step hands through with the cached residual.
"""

from __future__ import annotations

import torch

from ...runtime.teacache import TeaCacheAdapter


class S2VTeaCacheAdapter(TeaCacheAdapter):
    def modulated_input(self, block, args, kwargs):
        x, temb, split = args[0], args[1], int(args[2])
        shift, scale = (block.modulation.float().unsqueeze(2) + temb)[:, :2].unbind(1)
        h = block.norm1(x).float()
        return torch.cat([h[:, :split] * (1 + scale[:, :1]) + shift[:, :1],
                          h[:, split:] * (1 + scale[:, 1:]) + shift[:, 1:]], dim=1)

    def indicator(self, kind, model, block, args, kwargs, forward):
        if kind == "timestep_proj":
            return args[1]
        return super().indicator(kind, model, block, args, kwargs, forward)

    def passthrough_modules(self, model):
        return [(model.audio_injector, lambda args, kwargs: args[1])]
