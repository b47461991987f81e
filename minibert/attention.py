"""Multi-head self-attention: the projections (`SelfAttention`) apart from the kernels that mix the heads.

A kernel is a plain function with one signature,

    kernel(q, k, v, key_mask, dropout_p, scale, need_probs) -> (out, probs or None)

kept in `KERNELS` under its name; `attn_impl="..."` picks one, and an unknown name is an error that lists them.

Axis letters in the einops patterns:
    b  batch            h  heads            d  head dimension
    t  query positions  s  key positions    three  the q/k/v triple of the fused projection
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minibert.config import BertConfig
from minibert.errors import MinibertError

logger = logging.getLogger("minibert")

Kernel = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def additive_bias(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The one place a 0/1 key mask (b, s) becomes the additive bias (b, 1, 1, s) that softmax needs.

    Masked keys get the most negative finite value of `dtype`, not -inf, so a fully masked row stays finite.
    """
    bias = (1.0 - key_mask.to(dtype)) * torch.finfo(dtype).min
    return rearrange(bias, "b s -> b 1 1 s")


def zero_fully_masked(out: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """out (b, h, t, d): rows whose sequence has no real key at all (an all-padding row) become exact zeros."""
    if key_mask is None:
        return out
    has_key = key_mask.any(dim=-1).to(out.dtype)
    return out * rearrange(has_key, "b -> b 1 1 1")


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float,
    scale: float,
    need_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The readable reference: softmax(q kᵀ · scale + mask) v. q, k, v: (b, h, t, d); key_mask: (b, s) or None."""
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) * scale
    if key_mask is not None:
        scores = scores + additive_bias(key_mask, scores.dtype)
    # softmax in float32 even under bf16 autocast: exp() of bf16 scores loses too much
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    probs = F.dropout(probs, p=dropout_p) if dropout_p > 0 else probs
    out = torch.einsum("bhts,bhsd->bhtd", probs, v)
    return zero_fully_masked(out, key_mask), (probs if need_probs else None)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float,
    scale: float,
    need_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's fused scaled_dot_product_attention (flash / memory-efficient / math, as the build allows)."""
    if need_probs:
        raise MinibertError("the sdpa kernel cannot return attention probabilities; use attn_impl='math'.")
    bias = None if key_mask is None else additive_bias(key_mask, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return zero_fully_masked(out, key_mask), None


KERNELS: dict[str, Kernel] = {
    "math": math_attention,
    "sdpa": sdpa_attention,
}


def resolve_attn_impl(name: str) -> str:
    """Turn `auto` into a kernel name (logged once); check any other name against `KERNELS`."""
    if name == "auto":
        chosen = "sdpa"
        _log_once(f"attn_impl='auto' chose {chosen!r}: torch's fused kernel, faster than 'math' on CPU and GPU.")
        return chosen
    get_kernel(name)
    return name


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


def get_kernel(name: str) -> Kernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise MinibertError(f"unknown attn_impl {name!r}; choose one of {', '.join(sorted(KERNELS))}.") from None


class SelfAttention(nn.Module):
    """Fused q/k/v projection, head split, kernel, head merge, output projection.

    The three projections are one (hidden -> 3·hidden) matmul; the weight table in `weights.py` splits and joins
    HF's separate query/key/value tensors.
    """

    def __init__(self, config: BertConfig, attn_impl: str = "sdpa") -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.scale = config.head_dim**-0.5
        self.dropout_p = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_impl = attn_impl
        self.kernel = get_kernel(attn_impl)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, need_probs: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (b, t, hidden); key_mask: (b, t) bool or None -> (b, t, hidden), probs (b, h, t, t) or None."""
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        dropout_p = self.dropout_p if self.training else 0.0
        kernel = self.kernel
        if need_probs and kernel is not math_attention:
            _log_once(f"output_attentions=True: attention runs on the 'math' kernel for this call, since "
                      f"{self.attn_impl!r} cannot return probabilities.")
            kernel = math_attention
        out, probs = kernel(q, k, v, key_mask, dropout_p, self.scale, need_probs)
        return self.out(rearrange(out, "b h t d -> b t (h d)")), probs
