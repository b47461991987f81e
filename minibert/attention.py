"""Multi-head self-attention: the projections (`SelfAttention`) apart from the kernels that mix the heads.

A kernel is a plain function with one signature,

    kernel(q, k, v, key_mask, dropout_p, scale, need_probs) -> (out, probs or None)

kept in `KERNELS` under its name; `attn_impl="..."` picks one, and an unknown name is an error that lists them.
Kernels on packed input (padding removed once at the encoder's entrance, see `padding.py`) have their own one
signature,

    packed_kernel(q, k, v, packing, dropout_p, scale) -> out          q, k, v, out: (n, h, d)

kept in `PACKED_KERNELS`. A model built with a packed kernel also holds a padded one for the calls that cannot be
packed (no attention_mask, attention probabilities asked for, or under torch.compile); `ATTN_IMPLS` says which.

Axis letters in the einops patterns:
    b  batch            h  heads            d  head dimension
    t  query positions  s  key positions    three  the q/k/v triple of the fused projection
    n  real tokens of the whole batch, packed row after row
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
from minibert.padding import Packing, repad

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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's fused scaled_dot_product_attention (flash / memory-efficient / math, as the build allows)."""
    if need_probs:
        raise MinibertError("the sdpa kernel cannot return attention probabilities; use attn_impl='math'.")
    bias = None if key_mask is None else additive_bias(key_mask, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return zero_fully_masked(out, key_mask), None


def unpadded_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, dropout_p: float, scale: float
) -> torch.Tensor:
    """Attention per sequence on packed tokens: q, k, v (n, h, d) -> (n, h, d); no padded position is computed.

    Each sequence is one unmasked SDPA call on its own rows; sequences of equal length are batched into one call
    (a full-length batch is a single call). bench/kernels.py measured this against SDPA over the batch re-padded
    to its longest sequence, and against nested (jagged) tensors: on CPU the per-sequence calls win (bench/README).
    A sequence of length 0 (an all-padding row) has no rows here, so it contributes nothing and cannot be NaN.
    """
    if len(set(packing.seqlens) - {0}) == 1:  # every non-empty sequence has the same length: one batched call
        length = packing.max_seqlen
        q, k, v = (rearrange(x, "(b t) h d -> b h t d", t=length) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        return rearrange(out, "b h t d -> (b t) h d")
    outs = []
    for qi, ki, vi in zip(q.split(packing.seqlens), k.split(packing.seqlens), v.split(packing.seqlens)):
        if qi.shape[0] == 0:
            continue
        # (t, h, d) -> (1, h, t, d), a strided view: SDPA's fused CPU kernel wants 4-d input (3-d takes its math
        # path, measured 1.3-2x slower in bench/kernels.py)
        qi, ki, vi = (rearrange(x, "t h d -> 1 h t d") for x in (qi, ki, vi))
        out = F.scaled_dot_product_attention(qi, ki, vi, dropout_p=dropout_p, scale=scale)
        outs.append(rearrange(out, "1 h t d -> t h d"))
    return torch.cat(outs) if outs else q.new_zeros(q.shape)


PackedKernel = Callable[..., torch.Tensor]

KERNELS: dict[str, Kernel] = {
    "math": math_attention,
    "sdpa": sdpa_attention,
}
PACKED_KERNELS: dict[str, PackedKernel] = {
    "unpadded": unpadded_attention,
}
# attn_impl -> (the padded kernel, the packed kernel or None). `auto` packs on CPU when the batch holds enough
# padding (`BertModel.packing_for`), and otherwise runs sdpa, or math for small calls under bf16 on CPU
# (`auto_padded_kernel`).
ATTN_IMPLS: dict[str, tuple[str, str | None]] = {
    "math": ("math", None),
    "sdpa": ("sdpa", None),
    "unpadded": ("sdpa", "unpadded"),
    "auto": ("sdpa", "unpadded"),
}

# `auto` packs a CPU batch holding at least this many padding positions per sequence. Packing must pay for the
# per-sequence attention calls (forward and backward, every layer), a cost fixed per sequence, with the padding it
# removes, whose cost per position is ~2.5x lower in bf16 than in float32. Measured on MiniLM, training steps on
# batches of 32 (bench/kernels.py --only crossover); a wider model spends more per position, so for it these are
# on the safe side.
AUTO_MIN_PADDING_PER_SEQUENCE = 4
AUTO_MIN_PADDING_PER_SEQUENCE_LOW_PRECISION = 16  # bf16/fp16 autocast, or weights that are not float32

# `auto` under bf16 (or fp16) on CPU runs the padded `math` kernel where it measured faster than torch's CPU SDPA
# kernel, which gains little from bf16 while `math`'s two products run as bf16 matmuls (bench/kernels.py --only
# low-precision, 1 and 2 threads, heads of 32 and 64 dimensions). The limits are on the score matrix `math`
# materialises (batch x heads x queries x keys elements): in inference `math` took 0.37-0.86x sdpa's time up to 3M in
# every run, while from 6M on, where its passes over the scores outgrow the caches, it varied between runs from 0.44x
# to 1.75x; in training (dropout on) it took 0.35-1.06x at every size measured, up to 25M. In float32 sdpa is as
# fast or faster everywhere.
AUTO_MATH_MAX_SCORES = 2**22
AUTO_MATH_MAX_SCORES_TRAINING = 2**25

AUTO_REASON = (
    "attn_impl='auto': on CPU, a batch with at least "
    f"{AUTO_MIN_PADDING_PER_SEQUENCE} padding positions per sequence ({AUTO_MIN_PADDING_PER_SEQUENCE_LOW_PRECISION} "
    "under bf16) runs 'unpadded' (padding removed once at the encoder's entrance; bench/README.md, MiniLM on CPU: "
    "1.7x 'sdpa' on SST-2 batches of 32 padded to their longest, 5.3x padded to 128, 2.2x on IMDB batches); a batch "
    "with less padding (length-grouped or sorted batches), a call without a mask, on a GPU (not measured yet) or "
    "under torch.compile (packing has data-dependent shapes) runs 'sdpa', since there the per-sequence attention "
    "calls of 'unpadded' cost more than the padding they remove (bench/kernels.py --only crossover); on CPU "
    "under bf16, a padded call runs 'math' instead of 'sdpa' while its score matrix is small enough (bf16 matmuls; "
    "bench/kernels.py --only low-precision, limits in attention.AUTO_MATH_*); output_attentions=True runs 'math', "
    "the only kernel that returns attention probabilities."
)


def resolve_attn_impl(name: str) -> str:
    """Check `name` against the kernels (an unknown one is an error that lists them); `auto` logs its rule once.

    `auto` stays `auto`: which kernel runs is decided per call from the device and whether there is a mask
    (never from tensor values), by `BertModel.forward`.
    """
    if name not in ATTN_IMPLS:
        raise MinibertError(f"unknown attn_impl {name!r}; choose one of {', '.join(sorted(ATTN_IMPLS))}.")
    if name == "auto":
        _log_once(AUTO_REASON)
    return name


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


def auto_padded_kernel(q: torch.Tensor, k: torch.Tensor, dropout_p: float) -> Kernel:
    """`auto`'s kernel for a padded call, from the device, dtype, shapes and dropout alone (see AUTO_MATH_*)."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16) or torch.compiler.is_compiling():
        return sdpa_attention
    scores = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
    limit = AUTO_MATH_MAX_SCORES_TRAINING if dropout_p > 0 else AUTO_MATH_MAX_SCORES
    return math_attention if scores <= limit else sdpa_attention


def get_kernel(name: str) -> Kernel:
    """The padded kernel called `name` (math, sdpa)."""
    try:
        return KERNELS[name]
    except KeyError:
        raise MinibertError(f"unknown attention kernel {name!r}; choose one of {', '.join(sorted(KERNELS))}.") \
            from None


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
        self.attn_impl = resolve_attn_impl(attn_impl)
        padded, packed = ATTN_IMPLS[self.attn_impl]
        self.kernel = get_kernel(padded)
        self.packed_kernel = PACKED_KERNELS[packed] if packed is not None else None

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        need_probs: bool = False,
        packing: Packing | None = None,
        first_query_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (b, t, hidden); key_mask: (b, t) bool or None -> (b, t, hidden), probs (b, h, t, t) or None.

        With `packing`, x is packed (n, hidden) and so is the result; key_mask is unused and probs are None.
        With `first_query_only`, each sequence's first position alone attends to its keys: -> (b, 1, hidden), from
        padded or packed x (every sequence non-empty).
        """
        dropout_p = self.dropout_p if self.training else 0.0
        if packing is not None:
            if self.packed_kernel is None:
                raise MinibertError(f"attn_impl={self.attn_impl!r} has no kernel for packed input; use 'unpadded'.")
            q, k, v = rearrange(self.qkv(x), "n (three h d) -> three n h d", three=3, h=self.num_heads)
            if not first_query_only:
                out = self.packed_kernel(q, k, v, packing, dropout_p, self.scale)
                return self.out(rearrange(out, "n h d -> n (h d)")), None
            # one query per sequence: re-pad the keys and values for a single masked call of the padded kernel
            q = rearrange(q[packing.first_rows], "b h d -> b h 1 d")
            k, v = (rearrange(repad(x, packing), "b t h d -> b h t d") for x in (k, v))
            key_mask = packing.mask()
        else:
            q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
            if first_query_only:
                q = q[:, :, :1]
        kernel = auto_padded_kernel(q, k, dropout_p) if self.attn_impl == "auto" else self.kernel
        if need_probs and kernel is not math_attention:
            _log_once(f"output_attentions=True: attention runs on the 'math' kernel for this call, since "
                      f"{self.attn_impl!r} cannot return probabilities.")
            kernel = math_attention
        out, probs = kernel(q, k, v, key_mask, dropout_p, self.scale, need_probs)
        return self.out(rearrange(out, "b h t d -> b t (h d)")), probs
