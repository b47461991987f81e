"""`nn.Linear` whose autocast weight casts, in CPU training, write into memory kept from one step to the next.

Under bf16 autocast every forward casts each float32 weight to bf16, and every backward casts the bf16 weight
gradient back to float32: two fresh tensors per weight and step, 48 for MiniLM's encoder. Fresh, a 1536 x 384 cast
took ~0.62 ms on one core (torch.profiler, length-grouped SST-2 steps); into the memory the same cast had in the
last step, ~0.17 ms (`minibert.kept_memory`), which took the encoder's weight casts from ~18 ms to ~6 ms a step
(bench/README.md's train.py). The casts are autocast's own, the same rounding into other memory, so the values
(forward and gradients) are autocast's to the last bit (tests/test_linear.py).

Everything else, float32 training, inference, GPUs, `torch.compile`, runs `nn.Linear` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minibert.kept_memory import KeptGradient


class Linear(nn.Linear):
    """`nn.Linear`; in CPU training under autocast, its weight casts go into kept memory (module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.kept = KeptCast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if not (self.training and torch.is_grad_enabled() and weight.requires_grad and weight.device.type == "cpu"
                and torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu")
        if dtype == weight.dtype:
            return super().forward(x)
        self.kept.gradient.watch(weight)
        # autocast casts x and the bias; the weight it finds already in its dtype, and leaves as it is
        return F.linear(x, _CastIntoKeptMemory.apply(weight, dtype, self.kept), self.bias)


class KeptCast:
    """A weight's cast and its float32 gradient, kept between steps.

    `in_use` is saved for backward by the forward that last wrote the cast: while a graph that can still run its
    backward holds it (its backward not yet run, or run with `retain_graph`), that graph's matmul needs the cast as
    it is, and the next forward writes a new one. Autograd's version check would not notice an overwrite: the cast
    is the casting Function's own output.
    """

    def __init__(self) -> None:
        self.cast: torch.Tensor | None = None
        self.in_use = torch.empty(0)
        self.gradient = KeptGradient()

    def __reduce__(self) -> tuple[type, tuple[()]]:  # scratch: a copied model starts without it
        return type(self), ()

    def cast_of(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Memory for `weight` cast to `dtype`: the kept cast where no graph still needs it, else new memory."""
        cast = self.cast
        if cast is None or cast.shape != weight.shape or cast.dtype != dtype or self.in_use._use_count() > 1:
            self.cast, self.in_use = torch.empty(weight.shape, dtype=dtype), torch.empty(0)
        return self.cast


class _CastIntoKeptMemory(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, weight: torch.Tensor, dtype: torch.dtype,
                kept: KeptCast) -> torch.Tensor:
        cast = kept.cast_of(weight, dtype)
        ctx.save_for_backward(kept.in_use)
        ctx.kept, ctx.weight_dtype = kept, weight.dtype
        return cast.copy_(weight)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, cast_grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = ctx.kept.gradient.take(cast_grad.shape, ctx.weight_dtype)
        if grad is None:
            return cast_grad.to(ctx.weight_dtype), None, None
        return grad.copy_(cast_grad), None, None
