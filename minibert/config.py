"""`BertConfig`: the fields of Hugging Face's BERT `config.json`, with validation and JSON round-trip.

Field names are HF's, so a `config.json` written by `transformers` reads here unchanged and ours reads there.
Fields we do not use (`architectures`, `transformers_version`, ...) are kept in `extra` and written back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minibert.errors import MinibertError

logger = logging.getLogger("minibert")

ACTIVATIONS = ("gelu", "gelu_new", "relu", "gelu_pytorch_tanh")
POSITION_EMBEDDING_TYPES = ("absolute", "sinusoidal")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")

# config.json fields that would make transformers run or fetch code: we never act on them, and say so once.
CODE_FIELDS = ("auto_map", "custom_pipelines", "trust_remote_code")


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    # heads
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    tie_word_embeddings: bool = True
    # fields of config.json that minibert does not interpret, kept so that save_pretrained writes them back
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        if self.label2id is not None:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.validate()

    def validate(self) -> None:
        """Raise `MinibertError` naming the first field that cannot describe a working BERT."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise MinibertError(f"config field {name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise MinibertError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); change one of them so each head gets a whole number of dimensions."
            )
        if self.hidden_act not in ACTIVATIONS:
            raise MinibertError(
                f"hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(ACTIVATIONS)}."
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise MinibertError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported; "
                f"use one of {', '.join(POSITION_EMBEDDING_TYPES)}."
            )
        if self.problem_type not in PROBLEM_TYPES:
            raise MinibertError(
                f"problem_type {self.problem_type!r} is not one of {', '.join(map(str, PROBLEM_TYPES[1:]))}."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise MinibertError(f"config field {name} must be in [0, 1), got {getattr(self, name)!r}.")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise MinibertError(f"classifier_dropout must be in [0, 1) or null, got {self.classifier_dropout!r}.")
        if not self.layer_norm_eps > 0:
            raise MinibertError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise MinibertError(f"pad_token_id {self.pad_token_id} is outside the vocabulary (size {self.vocab_size}).")
        if len(self.id2label) != self.num_labels:
            raise MinibertError(f"id2label has {len(self.id2label)} entries but num_labels is {self.num_labels}.")

    @classmethod
    def field_names(cls) -> set[str]:
        """The config.json fields minibert interprets (everything else is kept in `extra`)."""
        return {f.name for f in dataclasses.fields(cls)} - {"extra"}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # --- dict / JSON ---------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides: Any) -> BertConfig:
        """Build from a `config.json` dict; keys we do not know go to `extra`. `overrides` win over the file."""
        values = {**values, **overrides}
        known = cls.field_names()
        kwargs = {k: v for k, v in values.items() if k in known}
        extra = {k: v for k, v in values.items() if k not in known}
        extra.update(values.get("extra", {}) or {})
        ignored = [k for k in CODE_FIELDS if k in extra]
        if ignored:
            logger.warning("config.json field(s) %s ignored: minibert never imports or downloads code named in a "
                           "config.", ", ".join(ignored))
        if "num_labels" in overrides and "id2label" not in overrides and kwargs.get("id2label") is not None \
                and len(kwargs["id2label"]) != overrides["num_labels"]:
            kwargs["id2label"] = kwargs["label2id"] = None  # a new head size: default label names
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as e:  # e.g. a string where a number belongs
            raise MinibertError(f"config has a field of the wrong type ({e}).") from None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["model_type"] = "bert"
        return out

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> BertConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MinibertError(f"{path} does not exist; a model folder needs a config.json.") from None
        except UnicodeDecodeError:
            raise MinibertError(f"{path} is not UTF-8 text; it is not a config.json.") from None
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise MinibertError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); fix or replace it.") from None
        if not isinstance(values, dict):
            raise MinibertError(f"{path} must hold a JSON object, found {type(values).__name__}.")
        if values.get("model_type", "bert") != "bert":
            logger.warning("%s has model_type %r; loading it as BERT.", path, values["model_type"])
        try:
            return cls.from_dict(values, **overrides)
        except MinibertError as e:
            raise MinibertError(f"{path}: {e}") from None

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
