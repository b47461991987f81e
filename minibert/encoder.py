"""One post-LayerNorm encoder layer (attention, add & norm, feed-forward, add & norm) and the stack of them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from minibert import fusion
from minibert.attention import AttentionPlan, SelfAttention
from minibert.config import BertConfig
from minibert.linear import Linear


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _laplace(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - mu).div(sigma * math.sqrt(2.0))))


# Every stateless `hidden_act` of transformers' ACT2FN, written as transformers computes it (so that values agree to
# the last bit where transformers writes a formula out, rather than calling a fused torch kernel for it).
# `prelu` and `xielu` carry learned parameters and are refused by `BertConfig`.
ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_python": lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "gelu_new": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_python_tanh": lambda x: x * 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)
                                                              * (x + 0.044715 * torch.pow(x, 3.0)))),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "hardswish": F.hardswish,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
    "laplace": _laplace,
    "linear": lambda x: x,
}


class Activation(nn.Module):
    """The `hidden_act` named in the config (one of `ACTIVATION_FUNCTIONS`)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = ACTIVATION_FUNCTIONS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def activation(name: str) -> nn.Module:
    return Activation(name)


class FeedForward(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.down = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        plan: AttentionPlan,
        need_probs: bool = False,
        first_token_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (b, t, hidden), or packed (n, hidden) with `plan.packing`: LayerNorm and the FFN act per token either
        way.

        `first_token_only`: only each sequence's first position is computed, attending to all its keys ->
        (b, 1, hidden), from padded or packed x.
        """
        mixed, probs = self.attention(x, key_mask, plan, need_probs, first_token_only)
        if first_token_only:
            x = x[:, :1] if plan.packing is None else rearrange(x[plan.packing.first_rows], "b hidden -> b 1 hidden")
        if not plan.fused or first_token_only:  # a few rows: eager (and no graph for a single row to compile)
            return self.output_half(x, mixed), probs
        hidden = x.shape[-1]
        return _fused_output_half(self, x.reshape(-1, hidden), mixed.reshape(-1, hidden)).reshape(x.shape), probs

    def output_half(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """Everything after the attention kernel, per token: attention's output projection of the merged heads
        `mixed`, add & norm, feed-forward, add & norm. x, mixed (..., hidden) -> (..., hidden)."""
        x = self.attention_norm(x + self.dropout(self.attention.out(mixed)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


_fused_output_half = fusion.compiled(EncoderLayer.output_half)


class Encoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        plan: AttentionPlan,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        first_token_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """x: (b, t, hidden) -> last hidden state, [embeddings, layer 1, ..., layer N] if asked, [probs] if asked.

        With `plan.packing`, x and every hidden state are packed (n, hidden); re-padding is the caller's, once.
        With `first_token_only`, the last layer computes each sequence's first position alone: -> (b, 1, hidden)."""
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for i, layer in enumerate(self.layers):
            layer_first_token_only = first_token_only and i == len(self.layers) - 1
            args = (x, key_mask, plan, output_attentions, layer_first_token_only)
            if self.gradient_checkpointing and self.training:
                # recompute the layer's activations in backward instead of storing them
                x, probs = checkpoint(layer, *args, use_reentrant=False)
            else:
                x, probs = layer(*args)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(probs)
        return x, hidden_states, attentions
