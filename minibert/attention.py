"""Multi-head self-attention: the projections (`SelfAttention`) apart from the kernels that mix the heads.

A kernel is a plain function with one signature, the way transformers passes `cu_seq_lens` to its kernels:

    kernel(q, k, v, key_mask, dropout_p, scale, need_probs=False, packing=None) -> (out, probs or None)

padded kernels take q, k, v (b, h, t, d) and a key mask (b, s); the packed one takes q, k, v (n, h, d), the real
tokens of the whole batch row after row (padding removed once at the encoder's entrance, see `padding.py`), and the
`Packing` that says where each sequence starts. They live in `KERNELS` under their names; an unknown name is an error
that lists them.

Which kernel runs is decided once per forward by `plan_attention`, from the model's `attn_impl` and what the call is
(device, compute dtype, mask, training, compiling, probabilities asked for). `auto`'s rule and the measurements
behind its thresholds are in bench/README.md ("How `auto` chooses").

Axis letters in the einops patterns:
    b  batch            h  heads            d  head dimension
    t  query positions  s  key positions    three  the q/k/v triple of the fused projection
    n  real tokens of the whole batch, packed row after row
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minibert import fusion
from minibert.config import BertConfig
from minibert.errors import MinibertError
from minibert.linear import Linear
from minibert.padding import Packing, packing_from_mask, repad

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


def _padded_only(name: str, packing: Packing | None) -> None:
    if packing is not None:
        raise MinibertError(f"the {name!r} kernel takes padded input; packed input runs the 'unpadded' kernel.")


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float,
    scale: float,
    need_probs: bool = False,
    packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The readable reference: softmax(q kᵀ · scale + mask) v. q, k, v: (b, h, t, d); key_mask: (b, s) or None."""
    _padded_only("math", packing)
    scores = torch.einsum("bhtd,bhsd->bhts", q * scale, k)  # scaling q: a pass over (t, d), not over (t, s)
    if key_mask is not None:
        scores = scores + additive_bias(key_mask, scores.dtype)
    # under bf16 autocast torch's softmax still computes exp() and the sum in float32 (bf16 would lose too much)
    # and rounds only its output: bitwise what converting the scores first gives, without two more passes over them
    probs = torch.softmax(scores, dim=-1)
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
    packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's fused scaled_dot_product_attention (flash / memory-efficient / math, as the build allows)."""
    _padded_only("sdpa", packing)
    if need_probs:
        raise MinibertError("the sdpa kernel cannot return attention probabilities; use attn_impl='math'.")
    bias = None if key_mask is None else additive_bias(key_mask, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return zero_fully_masked(out, key_mask), None


def unpadded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float,
    scale: float,
    need_probs: bool = False,
    packing: Packing | None = None,
) -> tuple[torch.Tensor, None]:
    """Attention per sequence on packed tokens: q, k, v (n, h, d) -> (n, h, d); no padded position is computed.

    Each sequence is one unmasked SDPA call on its own rows; sequences of equal length are batched into one call
    (a full-length batch is a single call). bench/attention_kernels.py measured this against SDPA over the batch
    re-padded to its longest sequence, and against nested (jagged) tensors: on CPU the per-sequence calls win
    (bench/README).
    A sequence of length 0 (an all-padding row) has no rows here, so it contributes nothing and cannot be NaN.
    """
    if packing is None:
        raise MinibertError("the 'unpadded' kernel needs the batch's packing (padding removed at the encoder's "
                            "entrance); padded input runs 'math' or 'sdpa'.")
    if need_probs:
        raise MinibertError("the unpadded kernel cannot return attention probabilities; use attn_impl='math'.")
    if len(set(packing.seqlens) - {0}) == 1:  # every non-empty sequence has the same length: one batched call
        length = packing.max_seqlen
        q, k, v = (rearrange(x, "(b t) h d -> b h t d", t=length) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        return rearrange(out, "b h t d -> (b t) h d"), None
    outs = []
    for qi, ki, vi in zip(q.split(packing.seqlens), k.split(packing.seqlens), v.split(packing.seqlens)):
        if qi.shape[0] == 0:
            continue
        # (t, h, d) -> (1, h, t, d), a strided view: SDPA's fused CPU kernel wants 4-d input (3-d takes its math
        # path, measured 1.3-2x slower in bench/attention_kernels.py)
        qi, ki, vi = (rearrange(x, "t h d -> 1 h t d") for x in (qi, ki, vi))
        out = F.scaled_dot_product_attention(qi, ki, vi, dropout_p=dropout_p, scale=scale)
        outs.append(rearrange(out, "1 h t d -> t h d"))
    return (torch.cat(outs) if outs else q.new_zeros(q.shape)), None


KERNELS: dict[str, Kernel] = {
    "math": math_attention,
    "sdpa": sdpa_attention,
    "unpadded": unpadded_attention,
}
ATTN_IMPLS = ("auto", *KERNELS)

# `auto`'s thresholds; bench/README.md ("How `auto` chooses") has the measurements behind each number.
# Pack a CPU batch from this many padding positions per sequence (float32; under bf16/fp16 a padded position costs
# less, so packing pays later).
AUTO_MIN_PADDING_PER_SEQUENCE = 4
AUTO_MIN_PADDING_PER_SEQUENCE_LOW_PRECISION = 16
# Under bf16/fp16 on CPU, run padded calls on `math` (bf16 matmuls) rather than torch's CPU SDPA kernel while the
# score matrix (batch x heads x queries x keys elements) is at most this large.
AUTO_MATH_MAX_SCORES = 2**22
AUTO_MATH_MAX_SCORES_TRAINING = 2**25
AUTO_NOTE = ("attn_impl='auto': the attention kernel is chosen per batch from the device, precision and padding "
             "(minibert.attention.plan_attention; measurements in bench/README.md).")


class AttentionPlan(NamedTuple):
    """How every layer of one forward pass runs its attention."""

    kernel: str  # the kernel of the full-length calls: "unpadded" exactly when `packing` is set
    first_token_kernel: str  # the padded kernel of a [CLS]-only last layer (one query per sequence)
    packing: Packing | None = None
    fused: bool = False  # the layers' projections and output halves run compiled (`minibert.fusion`)


def check_attn_impl(name: str) -> str:
    """`name` if it is a kernel or `auto` (which says once where its rule is written); otherwise an error that
    lists them."""
    if name not in ATTN_IMPLS:
        raise MinibertError(f"unknown attn_impl {name!r}; choose one of {', '.join(sorted(ATTN_IMPLS))}.")
    if name == "auto":
        _log_once(AUTO_NOTE)
    return name


def plan_attention(
    attn_impl: str,
    attention_mask: torch.Tensor | None,
    *,
    shape: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
    num_heads: int,
    training: bool,
    need_probs: bool,
    compiling: bool,
) -> AttentionPlan:
    """The kernels (and the packing, if any) of one forward pass over a (batch, seq_len) `shape` of tokens;
    `dtype` is what the matmuls compute in.

    math, sdpa: that kernel. unpadded: packed whenever there is a mask (compiled graphs and mask-less calls run
    padded sdpa: packing has data-dependent shapes, and nothing to remove). auto, on CPU and eager: packed when the
    batch holds enough padding to pay for the per-sequence calls; padded calls under bf16/fp16 run `math` while the
    score matrix is small enough, else `sdpa`; on GPUs padded `sdpa` (not measured there yet). Attention
    probabilities only come from `math`, which then runs whatever was asked. Counting the padding is the one host
    sync that packing needs anyway.
    """
    if need_probs:
        if attn_impl != "math":
            _log_once(f"output_attentions=True: attention runs on the 'math' kernel for this call, since "
                      f"{attn_impl!r} cannot return probabilities.")
        return AttentionPlan("math", "math")
    if attn_impl in ("math", "sdpa"):
        return AttentionPlan(attn_impl, attn_impl)
    cpu, low_precision = device.type == "cpu", dtype in (torch.bfloat16, torch.float16)
    packable = attention_mask is not None and not compiling and (attn_impl == "unpadded" or cpu)
    if attn_impl == "unpadded":
        return AttentionPlan("unpadded", "sdpa", packing_from_mask(attention_mask)) if packable \
            else AttentionPlan("sdpa", "sdpa")

    def padded_kernel(queries: int) -> str:  # auto's kernel for a padded call with this many queries per sequence
        if not cpu or not low_precision or compiling:
            return "sdpa"
        batch, keys = shape
        limit = AUTO_MATH_MAX_SCORES_TRAINING if training else AUTO_MATH_MAX_SCORES
        return "math" if batch * num_heads * queries * keys <= limit else "sdpa"

    if packable:
        packing = packing_from_mask(attention_mask)
        enough = AUTO_MIN_PADDING_PER_SEQUENCE_LOW_PRECISION if low_precision else AUTO_MIN_PADDING_PER_SEQUENCE
        if packing.padding_per_sequence >= enough:
            return AttentionPlan("unpadded", padded_kernel(1), packing)
    return AttentionPlan(padded_kernel(shape[1]), padded_kernel(1))


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


class SelfAttention(nn.Module):
    """Fused q/k/v projection, head split, kernel, head merge, output projection.

    The three projections are one (hidden -> 3·hidden) matmul; the weight table in `weights.py` splits and joins
    HF's separate query/key/value tensors.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.scale = config.head_dim**-0.5
        self.dropout_p = config.attention_probs_dropout_prob
        self.qkv = Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        plan: AttentionPlan,
        need_probs: bool = False,
        first_token_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (b, t, hidden); key_mask: (b, t) bool or None -> the heads' outputs merged (b, t, hidden), before the
        output projection `out` (which `EncoderLayer.output_half` applies with the add & norm after it), and probs
        (b, h, t, t) or None.

        With `plan.packing`, x is packed (n, hidden) and so is the result; key_mask is unused and probs are None.
        With `first_token_only`, each sequence's first position alone attends to its keys: -> (b, 1, hidden), from
        padded or packed x (every sequence non-empty).
        """
        dropout_p = self.dropout_p if self.training else 0.0
        packing = plan.packing
        qkv = self.project(x, plan.fused)
        if packing is not None:
            q, k, v = rearrange(qkv, "n (three h d) -> three n h d", three=3, h=self.num_heads)
            if not first_token_only:
                out, _ = KERNELS[plan.kernel](q, k, v, None, dropout_p, self.scale, packing=packing)
                return rearrange(out, "n h d -> n (h d)"), None
            # one query per sequence: re-pad the keys and values for a single masked call of a padded kernel
            q = rearrange(q[packing.first_rows], "b h d -> b h 1 d")
            k, v = (rearrange(repad(x, packing), "b t h d -> b h t d") for x in (k, v))
            key_mask = packing.mask()
        else:
            q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
            if first_token_only:
                q = q[:, :, :1]
        kernel = KERNELS[plan.first_token_kernel if first_token_only else plan.kernel]
        out, probs = kernel(q, k, v, key_mask, dropout_p, self.scale, need_probs)
        return rearrange(out, "b h t d -> b t (h d)"), probs

    def project(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        """The fused q/k/v projection of x (..., hidden) -> (..., 3·hidden), compiled with `fused`."""
        if not fused:
            return self.qkv(x)
        return _fused_projection(self.qkv, x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def _projection(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return linear(x)


_fused_projection = fusion.compiled(_projection)
