"""Sequence parallelism (Ulysses) for the S2V transformer, over a torch.distributed group.

diffusers' context-parallel hooks split a model's inputs at fixed module boundaries. The S2V
forward needs more than that: its blocks modulate tokens before and after a split index (noisy
video | reference and motion tokens), and its audio injector attends per latent frame over the
video tokens, so each rank must know where its share of the sequence lies and the injector must
see the whole sequence. The model therefore splits itself (``WanS2VTransformer3DModel.
enable_sequence_parallel``): the token sequence and its RoPE table are cut into ``degree``
equal shares after the embeddings, each rank runs the blocks on its share with attention made
whole by two all-to-alls (heads for sequence, then back), the sequence is gathered around each
audio injection and before the head. Works on any backend that has ``all_to_all_single`` (NCCL;
gloo, which lets the CPU tests check it against the unsplit model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class SequenceSplit:
    group: Any            # a torch.distributed process group of ``degree`` ranks
    degree: int
    rank: int             # this process's rank inside ``group``

    @classmethod
    def over(cls, group: Any) -> "SequenceSplit":
        return cls(group=group, degree=dist.get_world_size(group), rank=dist.get_rank(group))

    # -- the token sequence ----------------------------------------------------------------------
    def check(self, length: int) -> None:
        if length % self.degree:
            raise ValueError(f"a sequence of {length} tokens does not split into {self.degree} equal "
                             f"shares (sequence parallel); change the size or frames, or run it whole")

    def share(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's share of ``t`` along ``dim`` (equal, consecutive shares)."""
        return t.chunk(self.degree, dim=dim)[self.rank].contiguous()

    def local_split(self, split: int, length: int) -> int:
        """Where a global split index falls inside this rank's share of ``length`` tokens."""
        size = length // self.degree
        return min(max(0, split - self.rank * size), size)

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(self.degree)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    # -- attention -------------------------------------------------------------------------------
    def _to_heads(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, L/d, H, D]`` (all heads, a share of tokens) -> ``[B, L, H/d, D]``."""
        b, n, h, e = t.shape
        d = self.degree
        send = t.reshape(b, n, d, h // d, e).permute(2, 0, 1, 3, 4).contiguous()
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)
        return recv.permute(1, 0, 2, 3, 4).reshape(b, d * n, h // d, e)

    def _to_tokens(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, L, H/d * D]`` -> ``[B, L/d, H * D]`` (heads in their original order)."""
        b, length, width = t.shape
        d = self.degree
        send = t.reshape(b, d, length // d, width).permute(1, 0, 2, 3).contiguous()
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)
        return recv.permute(1, 2, 0, 3).reshape(b, length // d, d * width)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend_whole) -> torch.Tensor:
        """Full attention over the whole sequence from per-rank shares ``[B, L/d, H, D]``;
        ``attend_whole`` is the unsplit attention (``[B, L, h, D]`` -> ``[B, L, h * D]``)."""
        heads = q.shape[2]
        if heads % self.degree:
            raise ValueError(f"{heads} attention heads do not split over {self.degree} ranks")
        dtype = v.dtype
        out = attend_whole(self._to_heads(q.to(dtype)), self._to_heads(k.to(dtype)), self._to_heads(v))
        return self._to_tokens(out)
