"""Token + segment + position embeddings, then LayerNorm and dropout: BERT's input layer.

Positions are learned (`absolute`, as in every HF BERT checkpoint) or, as our own option, a fixed sin/cos table
(`sinusoidal`, Vaswani et al. 2017) that is not a parameter and is not saved.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minibert.config import BertConfig
from minibert.kept_memory import KeptGradient


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim): even columns sin(pos / 10000^(2i/dim)), odd columns cos of the same angle."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table.float()


class WordEmbedding(nn.Embedding):
    """`nn.Embedding` whose weight gradient, in CPU training, lands in memory kept from one step to the next.

    A vocabulary's dense gradient is large (30,522 x 384 floats, 47 MB, for MiniLM). Made anew each step, as torch's
    embedding backward makes it, it is a fresh mmap whose pages the kernel zeroes on first touch: 22 ms a step on
    one core, against 2 ms to zero a kept buffer (in isolation; the fine-tuning step went from 1.09x transformers'
    speed to 1.25-1.35x, bench/README.md's train.py). Here the backward zeroes the gradient kept from the last step
    (`minibert.kept_memory.KeptGradient`) and adds this step's rows into it: the same sums in the same order as
    torch's backward, the padding row left at zero.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.kept_gradient = KeptGradient()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if not (self.training and torch.is_grad_enabled() and weight.requires_grad and weight.device.type == "cpu"
                and not torch.compiler.is_compiling()):
            return super().forward(ids)
        self.kept_gradient.watch(weight)
        return _LookupKeepingGradient.apply(ids, weight, self)


class _LookupKeepingGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, ids: torch.Tensor, weight: torch.Tensor,
                owner: WordEmbedding) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.owner = owner
        return F.embedding(ids, weight, owner.padding_idx)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, out_grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        (ids,) = ctx.saved_tensors
        owner = ctx.owner
        shape = owner.weight.shape
        grad = owner.kept_gradient.take(shape, out_grad.dtype)
        if grad is None:
            grad = torch.zeros(shape, dtype=out_grad.dtype)  # first step, or an accumulation's later one
        else:
            grad.zero_()
        grad.index_add_(0, ids.reshape(-1), out_grad.reshape(-1, out_grad.shape[-1]))
        if owner.padding_idx is not None:
            grad[owner.padding_idx] = 0
        return None, grad, None


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = WordEmbedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.segment = nn.Embedding(config.type_vocab_size, config.hidden_size)
        if config.position_embedding_type == "absolute":
            self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            self.register_buffer(
                "sinusoidal", sinusoidal_table(config.max_position_embeddings, config.hidden_size), persistent=False
            )
        self.max_positions = config.max_position_embeddings
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_table(self) -> torch.Tensor:
        """(max_positions, hidden): the learned table, or the fixed sin/cos one."""
        return self.position.weight if hasattr(self, "position") else self.sinusoidal

    def forward(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, token_type_ids, position_ids: (b, t) -> (b, t, hidden). `inputs_embeds` (b, t, hidden)
        replaces the word-embedding lookup (as in transformers, for callers that perturb embeddings).

        Packed input works the same, token by token: ids (n,) [or inputs_embeds (n, hidden)] with position_ids (n,)
        -> (n, hidden), so LayerNorm runs on real tokens only."""
        x = self.word(input_ids) if inputs_embeds is None else inputs_embeds
        if token_type_ids is not None:
            x = x + self.segment(token_type_ids)
        else:  # all segment 0, without materialising a tensor of zeros
            x = x + self.segment.weight[0]
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device)
        x = x + self.position_table()[position_ids]
        return self.dropout(self.norm(x))
