"""pack / unpack helpers, against hand-computed indices and cu_seqlens."""

from __future__ import annotations

import torch

from minibert.padding import packing_from_mask, repad, unpad


def test_right_padded_batch():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    p = packing_from_mask(mask)
    assert p.indices.tolist() == [0, 1, 2, 4, 5]
    assert p.cu_seqlens.tolist() == [0, 3, 5]
    assert p.cu_seqlens.dtype == torch.int32
    assert p.seqlens == (3, 2)
    assert (p.max_seqlen, p.batch, p.seq_len, p.total) == (3, 2, 4, 5)
    assert p.padding_per_sequence == 3 / 2
    assert p.first_rows.tolist() == [0, 3]
    assert p.mask().tolist() == [[True, True, True, False], [True, True, False, False]]


def test_all_padding_row_and_holes():
    # row 1 has no token at all; row 2 is left-padded with a hole: any 0/1 pattern packs in order
    mask = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 1]])
    p = packing_from_mask(mask)
    assert p.indices.tolist() == [0, 7, 8]
    assert p.cu_seqlens.tolist() == [0, 1, 1, 3]
    assert p.seqlens == (1, 0, 2)
    assert p.max_seqlen == 2
    assert p.mask().tolist() == [[True, False, False], [False, False, False], [False, True, True]]


def test_no_token_at_all():
    p = packing_from_mask(torch.zeros(2, 3, dtype=torch.long))
    assert p.indices.tolist() == [] and p.cu_seqlens.tolist() == [0, 0, 0] and p.max_seqlen == 0
    assert p.padding_per_sequence == 3 and packing_from_mask(torch.zeros(0, 3)).padding_per_sequence == 0
    x = torch.zeros(0, 4)
    assert repad(x, p).shape == (2, 3, 4) and not repad(x, p).any()


def test_unpad_then_repad():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    x = torch.arange(6.0).reshape(2, 3, 1)  # value = flat position
    p = packing_from_mask(mask)
    packed = unpad(x, p)
    assert packed.flatten().tolist() == [0.0, 1.0, 3.0, 4.0, 5.0]
    assert repad(packed, p).flatten().tolist() == [0.0, 1.0, 0.0, 3.0, 4.0, 5.0]
    ids = torch.tensor([[7, 8, 0], [4, 5, 6]])
    assert unpad(ids, p).tolist() == [7, 8, 4, 5, 6]


def test_repad_is_differentiable():
    p = packing_from_mask(torch.tensor([[1, 0], [1, 1]]))
    x = torch.randn(3, 2, requires_grad=True)
    repad(x, p).sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 2))
    y = torch.randn(2, 2, 2, requires_grad=True)
    unpad(y, p).sum().backward()
    assert y.grad[:, :, 0].tolist() == [[1.0, 0.0], [1.0, 1.0]]
