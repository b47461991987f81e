"""One post-LayerNorm encoder layer (attention, add & norm, feed-forward, add & norm) and the stack of them."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from minibert.attention import AttentionPlan, SelfAttention
from minibert.config import BertConfig


def activation(name: str) -> nn.Module:
    """HF's `hidden_act` names. `gelu` is the exact erf form; `gelu_new` and `gelu_pytorch_tanh` are both the tanh
    approximation (HF writes the former out by hand, the latter calls torch; they agree to float rounding)."""
    return {
        "gelu": nn.GELU(),
        "gelu_new": nn.GELU(approximate="tanh"),
        "gelu_pytorch_tanh": nn.GELU(approximate="tanh"),
        "relu": nn.ReLU(),
    }[name]


class FeedForward(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

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
        attended, probs = self.attention(x, key_mask, plan, need_probs, first_token_only)
        if first_token_only:
            x = x[:, :1] if plan.packing is None else rearrange(x[plan.packing.first_rows], "b hidden -> b 1 hidden")
        x = self.attention_norm(x + self.dropout(attended))
        x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x, probs


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
