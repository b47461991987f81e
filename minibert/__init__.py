"""minibert: a BERT encoder written from first principles in PyTorch, compatible with Hugging Face checkpoints."""

from minibert.config import BertConfig
from minibert.cross_encoder import CrossEncoder
from minibert.errors import MinibertError
from minibert.heads import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from minibert.models import BertModel, BertPreTrainedModel
from minibert.pooling import SentenceEncoder, embed
from minibert.tokenizer import BertTokenizer

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForMultipleChoice",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertPreTrainedModel",
    "BertTokenizer",
    "CrossEncoder",
    "MinibertError",
    "SentenceEncoder",
    "embed",
]
