"""Memory kept from one CPU training step to the next, for the large tensors a step would otherwise make anew.

A tensor of a few MB made anew each step lands in memory the last step left cold or, above glibc's mmap threshold,
in a fresh mapping whose pages the kernel zeroes on first touch. Written into the memory the same tensor had in the
last step, the same values cost a fraction: the word embedding's 47 MB gradient 2 ms to zero instead of 22 ms
(embeddings.py), a 1536 x 384 float32 weight gradient ~0.17 ms to write instead of ~0.6 ms (linear.py; both on
one core, bench/README.md's train.py).

Kept memory is scratch, not state: it is not saved, and a copied or unpickled model starts without it.
"""

from __future__ import annotations

import sys

import torch


class KeptGradient:
    """A parameter's gradient, kept after `zero_grad(set_to_none=True)` so that the next backward can write into it.

    `watch(weight)` in the forward; in the backward, `take(shape, dtype)` gives the kept tensor (or None), which
    the backward overwrites and returns as the weight's gradient. Autograd adopts a returned gradient as
    `weight.grad` when nothing else holds it (else it copies it), and the hook keeps a reference to `weight.grad`
    after each accumulation into it. Under gradient accumulation the later micro-batches find the kept tensor still
    in `weight.grad` and get None: their gradients are made anew and added, as usual. DDP's hooks see the gradient
    as usual.
    """

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None  # the gradient kept from the last step, if any
        self._watched: torch.Tensor | None = None  # the weight the keeping hook is on

    def __reduce__(self) -> tuple[type, tuple[()]]:  # scratch: a copy starts empty (and hooks its own weight)
        return type(self), ()

    def watch(self, weight: torch.Tensor) -> None:
        if self._watched is not weight:
            weight.register_post_accumulate_grad_hook(self._keep)
            self._watched = weight

    def _keep(self, weight: torch.Tensor) -> None:
        self.tensor = weight.grad

    def take(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor | None:
        """The kept gradient if it can be overwritten: it exists, has this shape and dtype, and nothing else holds
        it."""
        kept, self.tensor = self.tensor, None
        if kept is None or kept.shape != shape or kept.dtype != dtype:
            return None
        # held elsewhere (a name, container or view of the caller's, `.grad`, a graph) it must not change under its
        # holder: a gradient the user kept from the last step. getrefcount counts `kept` and its own argument.
        if kept._use_count() > 1 or sys.getrefcount(kept) > 2:
            return None
        return kept
