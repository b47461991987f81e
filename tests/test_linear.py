"""`minibert.linear.Linear`: in CPU training under bf16 autocast its weight casts go into memory kept between steps,
and everything it computes is autocast's own `nn.Linear`, bit for bit: outputs and gradients through optimizer
steps, gradient accumulation, a layer called twice, gradient checkpointing and a whole model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from minibert.config import BertConfig
from minibert.heads import BertForSequenceClassification
from minibert.linear import Linear

BF16 = torch.bfloat16


def pair(seed: int = 0) -> tuple[Linear, nn.Linear]:
    torch.manual_seed(seed)
    ours = Linear(16, 24)
    stock = nn.Linear(16, 24)
    stock.load_state_dict(ours.state_dict())
    return ours.train(), stock.train()


def step(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor, calls: int = 1) -> torch.Tensor:
    with torch.autocast("cpu", dtype=BF16):
        y = sum(module(x) for _ in range(calls))
    (y.float() * upstream).sum().backward()
    return y


def sgd(*modules: nn.Module) -> None:
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p -= 0.1 * p.grad
            module.zero_grad(set_to_none=True)


def test_outputs_and_gradients_are_autocasts_own_through_steps_and_accumulation():
    ours, stock = pair()
    g = torch.Generator().manual_seed(1)
    for micro_batches in (1, 2, 1, 3, 1):  # an optimizer step of that many backward passes
        for _ in range(micro_batches):
            x, upstream = torch.randn(5, 16, generator=g), torch.randn(5, 24, generator=g)
            y = step(ours, x, upstream)
            assert y.dtype == BF16 and torch.equal(y, step(stock, x, upstream))
        assert ours.weight.grad.dtype == torch.float32
        assert torch.equal(ours.weight.grad, stock.weight.grad)
        assert torch.equal(ours.bias.grad, stock.bias.grad)
        sgd(ours, stock)  # new weights: the kept cast must be written anew, not reused
    assert ours.kept.cast is not None


def test_the_memory_is_kept_between_steps():
    """The next step's bf16 weight and float32 gradient are the same memory as this step's (the gradient adopted by
    autograd, not copied)."""
    ours, _ = pair()
    x, upstream = torch.randn(3, 16), torch.randn(3, 24)
    step(ours, x, upstream)
    sgd(ours)
    gradient, cast = ours.kept.gradient.tensor.data_ptr(), ours.kept.cast.data_ptr()
    step(ours, x, upstream)
    assert ours.weight.grad.data_ptr() == gradient
    assert ours.kept.cast.data_ptr() == cast


def test_a_gradient_the_caller_kept_is_not_overwritten():
    ours, stock = pair()
    x, upstream = torch.randn(3, 16), torch.randn(3, 24)
    step(ours, x, upstream)
    step(stock, x, upstream)
    kept_by_caller, value = ours.weight.grad, ours.weight.grad.clone()
    sgd(ours, stock)
    step(ours, 2 * x, upstream)
    step(stock, 2 * x, upstream)
    assert torch.equal(kept_by_caller, value)
    assert torch.equal(ours.weight.grad, stock.weight.grad)


def test_a_layer_called_twice_before_its_backward():
    ours, stock = pair()
    x, upstream = torch.randn(3, 16), torch.randn(3, 24)
    for _ in range(2):
        assert torch.equal(step(ours, x, upstream, calls=2), step(stock, x, upstream, calls=2))
        assert torch.equal(ours.weight.grad, stock.weight.grad)
        sgd(ours, stock)


def test_a_graph_kept_past_a_weight_update_backpropagates_through_its_own_weights():
    """Forward, update the weights, forward again, then the first graph's backward: its input gradient is computed
    with the weights its forward saw (a cast shared between the two forwards would give the second's)."""
    ours, stock = pair()
    upstream = torch.randn(3, 24)
    grads = []
    for module in (ours, stock):
        step(module, torch.randn(3, 16), upstream)  # a first step, so that there is kept memory to share
        x = torch.randn(3, 16, generator=torch.Generator().manual_seed(4)).requires_grad_()
        with torch.autocast("cpu", dtype=BF16):
            first = module(x)
        sgd(module)
        step(module, torch.randn(3, 16), upstream)
        (first.float() * upstream).sum().backward()
        grads.append(x.grad)
    assert torch.equal(*grads)


def test_a_graph_backpropagated_twice_after_another_forward():
    """backward(retain_graph=True), a weight update and another forward, then the first graph's second backward:
    the same input gradient again (the cast it saved was not overwritten by the later forward)."""
    ours, stock = pair()
    upstream = torch.randn(3, 24)
    grads = []
    for module in (ours, stock):
        x = torch.randn(3, 16, generator=torch.Generator().manual_seed(5)).requires_grad_()
        with torch.autocast("cpu", dtype=BF16):
            first = (module(x).float() * upstream).sum()
        first.backward(retain_graph=True)
        once = x.grad.clone()
        sgd(module)
        step(module, torch.randn(3, 16), upstream)
        x.grad = None
        first.backward()
        assert torch.equal(x.grad, once)
        grads.append(x.grad)
    assert torch.equal(*grads)


def test_float32_eval_and_no_grad_run_nn_linear():
    ours, stock = pair()
    x = torch.randn(3, 16)
    ours(x).sum().backward()  # float32 training: nothing to cast
    with torch.autocast("cpu", dtype=BF16), torch.no_grad():
        assert torch.equal(ours(x), stock(x))
    with torch.autocast("cpu", dtype=BF16):
        ours.eval()(x)
    assert ours.kept.cast is None and ours.kept.gradient.tensor is None


def test_a_copy_keeps_memory_of_its_own():
    ours, stock = pair()
    x, upstream = torch.randn(3, 16), torch.randn(3, 24)
    step(ours, x, upstream)
    copied = copy.deepcopy(ours)
    assert copied.kept.cast is None and copied.kept.gradient.tensor is None
    copied.zero_grad(set_to_none=True)
    step(copied, x, upstream)
    step(stock, x, upstream)
    assert torch.equal(copied.weight.grad, stock.weight.grad)
    sgd(copied)
    assert copied.kept.gradient.tensor is not None  # its own hook, on its own weight


def tiny_classifier(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(config).train()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_whole_model_trains_as_with_nn_linear(monkeypatch, checkpointing):
    """Two optimizer steps of a model with padding, dropout and (optionally) gradient checkpointing: every
    gradient equals the one the same model computes with `nn.Linear`'s forward under autocast."""

    def train(model: nn.Module) -> list[torch.Tensor]:
        if checkpointing:
            model.gradient_checkpointing_enable()
        g = torch.Generator().manual_seed(2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        grads = []
        for _ in range(2):
            ids = torch.randint(1, 99, (4, 11), generator=g)
            mask = torch.ones(4, 11, dtype=torch.long)
            mask[1, 7:] = mask[3, 2:] = 0
            torch.manual_seed(3)  # the same dropout masks
            with torch.autocast("cpu", dtype=BF16):
                loss = model(ids, mask, labels=torch.tensor([0, 2, 1, 2])).loss
            loss.backward()
            grads += [p.grad.clone() for p in model.parameters()]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return grads

    ours = train(tiny_classifier(0))
    monkeypatch.setattr(Linear, "forward", nn.Linear.forward)
    reference = train(tiny_classifier(0))
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)
