"""The word embedding's kept gradient buffer (minibert/embeddings.py `WordEmbedding`): the gradients are torch's own
embedding backward's, bit for bit, through steps, padding, repeated ids and gradient accumulation, and the buffer
is the same memory from one step to the next."""

from __future__ import annotations

import copy

import torch
from torch import nn

from minibert.embeddings import WordEmbedding


def pair(seed: int = 0) -> tuple[WordEmbedding, nn.Embedding]:
    torch.manual_seed(seed)
    ours = WordEmbedding(50, 8, padding_idx=0)
    stock = nn.Embedding(50, 8, padding_idx=0)
    stock.load_state_dict(ours.state_dict())
    return ours.train(), stock.train()


def step(module: nn.Module, ids: torch.Tensor, upstream: torch.Tensor) -> None:
    (module(ids) * upstream).sum().backward()


def test_gradients_are_torchs_own_through_steps_and_accumulation():
    ours, stock = pair()
    g = torch.Generator().manual_seed(1)
    for micro_batches in (1, 2, 1, 3):  # an optimizer step of that many backward passes, then zero_grad
        for _ in range(micro_batches):
            ids = torch.randint(0, 50, (4, 9), generator=g)
            ids[0, :3] = 7  # a repeated id sums its rows; id 0 is padding (its gradient stays zero)
            ids[1, -2:] = 0
            upstream = torch.randn(4, 9, 8, generator=g)
            step(ours, ids, upstream)
            step(stock, ids, upstream)
        assert torch.equal(ours.weight.grad, stock.weight.grad)
        assert not ours.weight.grad[0].any()
        for module in (ours, stock):
            module.zero_grad(set_to_none=True)


def test_the_buffer_is_kept_between_steps():
    """After zero_grad(set_to_none=True) the gradient lives on in `kept_gradient`, and the next backward's
    gradient is that same tensor (adopted by autograd, not copied: a reference held here would force a copy)."""
    ours, _ = pair()
    ids = torch.randint(1, 50, (2, 5))
    step(ours, ids, torch.ones(2, 5, 8))
    ours.zero_grad(set_to_none=True)
    kept = ours.kept_gradient.tensor.data_ptr()  # no reference held past this line
    step(ours, ids, torch.ones(2, 5, 8))
    assert ours.weight.grad.data_ptr() == kept


def test_eval_and_no_grad_take_torchs_own_path():
    ours, stock = pair()
    ids = torch.randint(0, 50, (2, 5))
    ours.eval()
    step(ours, ids, torch.ones(2, 5, 8))
    assert ours.kept_gradient.tensor is None
    with torch.no_grad():
        assert torch.equal(ours.train()(ids), stock(ids))


def test_a_gradient_the_caller_kept_is_not_overwritten_and_a_copy_keeps_its_own():
    ours, stock = pair()
    ids = torch.randint(1, 50, (2, 5))
    step(ours, ids, torch.ones(2, 5, 8))
    kept_by_caller, value = ours.weight.grad, ours.weight.grad.clone()
    ours.zero_grad(set_to_none=True)
    copied = copy.deepcopy(ours)
    assert copied.kept_gradient.tensor is None  # scratch memory is not copied
    for module in (ours, copied, stock):
        step(module, ids, 3 * torch.ones(2, 5, 8))
    assert torch.equal(kept_by_caller, value)
    assert torch.equal(ours.weight.grad, stock.weight.grad) and torch.equal(copied.weight.grad, stock.weight.grad)
    assert copied.kept_gradient.tensor is copied.weight.grad  # its own hook, on its own weight
