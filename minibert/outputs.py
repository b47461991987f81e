"""What the models return: small dataclasses with named fields (read by attribute, never by position)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BaseModelOutput:
    last_hidden_state: torch.Tensor  # (b, t, hidden)
    pooler_output: torch.Tensor | None = None  # (b, hidden): tanh(dense([CLS])), when the model has a pooler
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings, then each layer's (b, t, hidden)
    attentions: tuple[torch.Tensor, ...] | None = None  # each layer's (b, heads, t, t) probabilities


@dataclass
class ModelOutput:
    """Classification, token tagging, multiple choice, next-sentence and masked-LM heads."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class QuestionAnsweringOutput:
    loss: torch.Tensor | None
    start_logits: torch.Tensor  # (b, t)
    end_logits: torch.Tensor  # (b, t)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class PreTrainingOutput:
    loss: torch.Tensor | None
    prediction_logits: torch.Tensor  # (b, t, vocab)
    seq_relationship_logits: torch.Tensor  # (b, 2)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
