"""The task heads on `BertModel`: sequence and token classification, question answering, multiple choice, next
sentence, masked LM and the two pre-training heads together. Each mirrors its `transformers` namesake (same
constructor, forward arguments, losses) and calls `BertModel` with keyword arguments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minibert.config import BertConfig
from minibert.encoder import activation
from minibert.errors import MinibertError
from minibert.models import BertModel, BertPreTrainedModel
from minibert.outputs import ModelOutput, PreTrainingOutput, QuestionAnsweringOutput


def _classifier_dropout(config: BertConfig) -> nn.Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


class BertForSequenceClassification(BertPreTrainedModel):
    """Pooled [CLS] -> dropout -> linear. The loss follows `problem_type`:

    - "single_label_classification": cross-entropy on integer labels (b,)
    - "multi_label_classification": BCE-with-logits on float labels (b, num_labels)
    - "regression": MSE (num_labels == 1: logits and labels squeezed, as transformers does)

    When config.problem_type is None it is inferred on each call, exactly as transformers infers it (num_labels == 1
    -> regression; integer labels -> single-label; otherwise multi-label), but unlike transformers the config is
    never written to by a forward pass: set `problem_type` in the config to fix it once.
    """

    def __init__(self, config: BertConfig, attn_impl: str = "auto") -> None:
        super().__init__(config)
        self.bert = BertModel(config, attn_impl=attn_impl)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self._init_module(self.classifier)

    def problem_type_for(self, labels: torch.Tensor) -> str:
        if self.config.problem_type is not None:
            return self.config.problem_type
        if self.config.num_labels == 1:
            return "regression"
        if labels.dtype in (torch.long, torch.int):
            return "single_label_classification"
        return "multi_label_classification"

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                        first_token_only=True)
        logits = self.classifier(self.dropout(out.pooler_output))  # (b, num_labels)
        loss = None
        if labels is not None:
            problem_type = self.problem_type_for(labels)
            if problem_type == "regression":
                if self.config.num_labels == 1:
                    loss = F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
                else:
                    loss = F.mse_loss(logits, labels.to(logits.dtype))
            elif problem_type == "single_label_classification":
                loss = F.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return ModelOutput(loss, logits, out.hidden_states, out.attentions)


class BertForTokenClassification(BertPreTrainedModel):
    """Per-token linear classifier (NER, POS tagging). Labels (b, t); -100 marks positions to ignore."""

    def __init__(self, config: BertConfig, attn_impl: str = "auto") -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False, attn_impl=attn_impl)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self._init_module(self.classifier)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (b, t, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
        return ModelOutput(loss, logits, out.hidden_states, out.attentions)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Span extraction (SQuAD): a start and an end logit per token."""

    def __init__(self, config: BertConfig, attn_impl: str = "auto") -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False, attn_impl=attn_impl)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self._init_module(self.qa_outputs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> QuestionAnsweringOutput:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = self.qa_outputs(out.last_hidden_state)  # (b, t, 2)
        start_logits, end_logits = (x.squeeze(-1).contiguous() for x in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            # positions outside the input (an answer cut off by truncation) are clamped to t and ignored
            ignored = start_logits.shape[1]
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        return QuestionAnsweringOutput(loss, start_logits, end_logits, out.hidden_states, out.attentions)


class BertForMultipleChoice(BertPreTrainedModel):
    """Inputs (b, choices, t); one score per choice from the pooled [CLS]; labels (b,) index the right choice."""

    def __init__(self, config: BertConfig, attn_impl: str = "auto") -> None:
        super().__init__(config)
        self.bert = BertModel(config, attn_impl=attn_impl)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self._init_module(self.classifier)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        reference = input_ids if input_ids is not None else inputs_embeds
        num_choices = reference.shape[1]

        def flat(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else rearrange(x, "b c t ... -> (b c) t ...")

        out = self.bert(input_ids=flat(input_ids), attention_mask=flat(attention_mask),
                        token_type_ids=flat(token_type_ids), position_ids=flat(position_ids),
                        inputs_embeds=flat(inputs_embeds), output_hidden_states=output_hidden_states,
                        output_attentions=output_attentions, first_token_only=True)
        logits = self.classifier(self.dropout(out.pooler_output))  # ((b c), 1)
        logits = rearrange(logits, "(b c) 1 -> b c", c=num_choices)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ModelOutput(loss, logits, out.hidden_states, out.attentions)


class BertForNextSentencePrediction(BertPreTrainedModel):
    """Is sentence B the continuation of sentence A? Logits (b, 2); label 0 = yes, 1 = random sentence."""

    def __init__(self, config: BertConfig, attn_impl: str = "auto") -> None:
        super().__init__(config)
        self.bert = BertModel(config, attn_impl=attn_impl)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self._init_module(self.nsp)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                        first_token_only=True)
        logits = self.nsp(out.pooler_output)
        loss = F.cross_entropy(logits.view(-1, 2), labels.view(-1)) if labels is not None else None
        return ModelOutput(loss, logits, out.hidden_states, out.attentions)


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder. With `tie_word_embeddings` (the default, and every released BERT)
    the decoder's weight IS the word-embedding matrix and only its bias is this head's own; untied, the head owns a
    decoder matrix of the same shape (`cls.predictions.decoder.weight`)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                         bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """hidden (..., hidden), word_embeddings (vocab, hidden) -> logits (..., vocab). `word_embeddings` is the
        decoder weight when tied, and unused when the head has its own."""
        hidden = self.norm(self.act(self.dense(hidden)))
        weight = word_embeddings if self.decoder is None else self.decoder.weight
        return F.linear(hidden, weight, self.bias)


class BertForMaskedLM(BertPreTrainedModel):
    """Predict masked tokens. Labels (b, t) hold the original ids at masked positions and -100 elsewhere."""

    def __init__(self, config: BertConfig, attn_impl: str = "auto") -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False, attn_impl=attn_impl)
        self.mlm = MaskedLMHead(config)
        for module in self.mlm.modules():
            self._init_module(module)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        masked_only: bool = False,
    ) -> ModelOutput:
        """`masked_only=True` (with labels, for training): the head and its vocabulary-wide decoder run only on the
        positions whose label is not -100, so logits are (n_masked, vocab), the rows of `labels[labels != -100]` in
        order. Loss and gradients are those of the full (b, t, vocab) logits, whose other rows the loss ignores."""
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        hidden = out.last_hidden_state  # (b, t, hidden)
        if masked_only:
            if labels is None:
                raise MinibertError("masked_only=True needs labels: they say which positions are masked.")
            labels = labels.reshape(-1)
            keep = (labels != -100).nonzero().squeeze(1)  # one host sync: the number of masked tokens
            hidden, labels = hidden.reshape(-1, hidden.shape[-1])[keep], labels[keep]  # (n_masked, hidden)
        logits = self.mlm(hidden, self.bert.embeddings.word.weight)  # (b, t, vocab) or (n_masked, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return ModelOutput(loss, logits, out.hidden_states, out.attentions)


class BertForPreTraining(BertPreTrainedModel):
    """Masked-LM and next-sentence heads together: the class of the original bert-base-uncased checkpoint."""

    def __init__(self, config: BertConfig, attn_impl: str = "auto") -> None:
        super().__init__(config)
        self.bert = BertModel(config, attn_impl=attn_impl)
        self.mlm = MaskedLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        for module in [*self.mlm.modules(), self.nsp]:
            self._init_module(module)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> PreTrainingOutput:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        prediction_logits = self.mlm(out.last_hidden_state, self.bert.embeddings.word.weight)
        nsp_logits = self.nsp(out.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = (F.cross_entropy(prediction_logits.view(-1, self.config.vocab_size), labels.view(-1))
                    + F.cross_entropy(nsp_logits.view(-1, 2), next_sentence_label.view(-1)))
        return PreTrainingOutput(loss, prediction_logits, nsp_logits, out.hidden_states, out.attentions)
