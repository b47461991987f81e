"""`BertConfig`: the fields of Hugging Face's BERT `config.json`, with validation and JSON round-trip.

Field names are HF's, so a `config.json` written by `transformers` reads here unchanged and ours reads there.
Fields we do not use (`architectures`, `transformers_version`, ...) are kept in `extra` and written back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minibert.errors import MinibertError

logger = logging.getLogger("minibert")

# Every stateless `hidden_act` of transformers' ACT2FN (computed in encoder.ACTIVATION_FUNCTIONS); the two with
# learned parameters are refused, with the reason.
ACTIVATIONS = ("gelu", "gelu_python", "gelu_new", "gelu_accurate", "gelu_python_tanh", "gelu_pytorch_tanh",
               "gelu_fast", "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "leaky_relu", "hardswish", "silu",
               "swish", "mish", "tanh", "sigmoid", "sqrtsoftplus", "laplace", "linear")
LEARNED_ACTIVATIONS = ("prelu", "xielu")
# "absolute" is BERT's learned table; "sinusoidal" is minibert's own option. transformers < 5 also had
# "relative_key" and "relative_key_query" (extra distance embeddings in the attention): refused.
POSITION_EMBEDDING_TYPES = ("absolute", "sinusoidal")

# config.json fields (beyond the dataclass's) with which transformers builds another model than a BERT encoder:
# field -> (the values minibert accepts, what another value would make). Any other value is refused.
UNIMPLEMENTED_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "is_decoder": ((False, None), "a causal (left-to-right) decoder"),
    "add_cross_attention": ((False, None), "cross-attention layers over an encoder's output"),
    "is_encoder_decoder": ((False, None), "an encoder-decoder model"),
    "pruned_heads": (({}, None), "layers with pruned attention heads"),
}

# config.json fields of transformers' BertConfig that leave the computed values unchanged, and why: accepted,
# kept in `extra` and written back.
NO_EFFECT_FIELDS: dict[str, str] = {
    "chunk_size_feed_forward": "the feed-forward runs in chunks of tokens; same values, less peak memory",
    "use_cache": "a decoder's key/value cache; an encoder has none",
    "output_attentions": "a default for returning attention probabilities; ours is a forward argument",
    "output_hidden_states": "a default for returning hidden states; ours is a forward argument",
    "return_dict": "tuples or output objects; ours are output objects",
    "torchscript": "untied copies for TorchScript export (transformers < 5)",
    "dtype": "the stored precision; minibert loads float32 unless from_pretrained(dtype=...) asks otherwise",
    "torch_dtype": "the stored precision (older name of dtype)",
    "bos_token_id": "generation only",
    "eos_token_id": "generation only",
    "sep_token_id": "generation only",
    "decoder_start_token_id": "generation only",
    "tie_encoder_decoder": "encoder-decoder models only",
    "cross_attention_hidden_size": "cross-attention only",
    "gradient_checkpointing": "memory during training, not values",
    "attn_implementation": "which attention kernel; every kernel computes the same values",
    "use_bfloat16": "a TF-era storage hint",
    "architectures": "metadata",
    "transformers_version": "metadata",
    "model_type": "metadata (another model_type is warned about)",
    "_name_or_path": "metadata",
    "finetuning_task": "metadata",
    "tokenizer_class": "metadata",
    "prefix": "generation only",
    "task_specific_params": "pipelines only",
}
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
    pad_token_id: int | None = 0
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
            self.id2label = _int_keys(self.id2label)
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
        if self.hidden_act in LEARNED_ACTIVATIONS:
            raise MinibertError(f"hidden_act {self.hidden_act!r} is not supported: it has learned parameters, which "
                                "minibert does not load; use a stateless activation such as gelu.")
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
        for name, (accepted, makes) in UNIMPLEMENTED_FIELDS.items():
            if name in self.extra and self.extra[name] not in accepted:
                raise MinibertError(f"config field {name}={self.extra[name]!r} is not implemented: it makes "
                                    f"{makes}, and minibert runs BERT encoders only; use transformers for it.")
        if self.pad_token_id is not None and not (isinstance(self.pad_token_id, int)
                                                  and 0 <= self.pad_token_id < self.vocab_size):
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

    def fit_max_length(self, requested: int, say: bool = True) -> int:
        """A sequence length this model can run: `requested`, capped at its positions (with `say`, saying so). The
        one policy of every command for `--max-length`."""
        if requested <= self.max_position_embeddings:
            return requested
        if say:  # printed, not logged: the command lines' notes go to stderr as plain lines
            print(f"--max-length {requested} is more than the model's {self.max_position_embeddings} positions; "
                  f"using {self.max_position_embeddings}.", file=sys.stderr)
        return self.max_position_embeddings

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


def _int_keys(id2label: Any) -> dict[int, str]:
    """config.json's id2label: an object whose keys are class ids ("0", "1", ...); anything else is refused."""
    if not isinstance(id2label, dict):
        raise MinibertError(f"id2label in config.json is a {type(id2label).__name__}, not an object such as "
                            '{"0": "negative", "1": "positive"}; fix config.json.')
    try:
        return {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        bad = next(k for k in id2label if not str(k).strip().lstrip("-").isdigit())
        raise MinibertError(f"id2label in config.json has the key {bad!r}, which is not a class id; its keys must "
                            'be integers such as "0" and "1" (fix config.json).') from None
