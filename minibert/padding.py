"""Remove padding once at the encoder's entrance and put it back once at the exit.

A padded batch (b, t, ...) with a 0/1 attention mask becomes one packed tensor (n, ...) of its n real tokens,
row after row, and a `Packing` that says where each sequence starts and how to scatter the tokens back:

    mask = [[1, 1, 1, 0],        indices    = [0, 1, 2, 4, 5]    (flat positions b·t + j of the real tokens)
            [1, 1, 0, 0]]   ->   cu_seqlens = [0, 3, 5]          (sequence i is packed rows cu[i]:cu[i+1])
                                 max_seqlen = 3, batch = 2, seq_len = 4

The mask need not be right-padded: any 0/1 pattern works, each row's tokens keep their order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Packing(NamedTuple):
    indices: torch.Tensor  # (n,) long: flat positions (row · seq_len + column) of the real tokens
    cu_seqlens: torch.Tensor  # (b + 1,) int32: cumulative lengths, starting at 0
    seqlens: tuple[int, ...]  # the b lengths as Python ints (for splitting per sequence without a sync)
    max_seqlen: int  # the longest sequence
    batch: int
    seq_len: int

    @property
    def total(self) -> int:
        return len(self.indices)

    @property
    def first_rows(self) -> torch.Tensor:
        """(b,) long: the packed row of each sequence's first real token (meaningless for an empty sequence)."""
        return self.cu_seqlens[:-1].long()

    def mask(self) -> torch.Tensor:
        """(b, t) bool: the padded batch's mask, True at real tokens."""
        flat = torch.zeros(self.batch * self.seq_len, dtype=torch.bool, device=self.indices.device)
        return flat.index_fill(0, self.indices, True).view(self.batch, self.seq_len)

    @property
    def padding_per_sequence(self) -> float:
        """Padding positions of the padded (b, t) batch per sequence (0 for an empty batch)."""
        return (self.batch * self.seq_len - self.total) / self.batch if self.batch else 0.0


def packing_from_mask(attention_mask: torch.Tensor) -> Packing:
    """attention_mask (b, t), nonzero = real token -> the `Packing` of its real tokens. One host sync (eager)."""
    batch, seq_len = attention_mask.shape
    mask = attention_mask.bool()
    seqlens = mask.sum(dim=1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    lengths = tuple(seqlens.tolist())
    return Packing(indices, cu_seqlens, lengths, max(lengths, default=0), batch, seq_len)


def unpad(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """x (b, t, ...) -> (n, ...): the real tokens, row after row."""
    return x.flatten(0, 1)[packing.indices]


def repad(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """x (n, ...) -> (b, t, ...) with zeros at the padding positions (differentiable: gradients flow to x)."""
    out = x.new_zeros(packing.batch * packing.seq_len, *x.shape[1:])
    out = out.index_copy(0, packing.indices, x)
    return out.unflatten(0, (packing.batch, packing.seq_len))
