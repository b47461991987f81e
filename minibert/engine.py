"""The model a server (or a batch job) runs: loaded once, texts tokenized, one forward per batch of token rows.

Two kinds of work, each a function of a list of `Row`s so that `batching` can group texts from many requests:
- "predict": a sequence classifier's answer per text, in `predict`'s words (label, score, every label's
  probability, or the regression value);
- "embed": a sentence vector per text (`pooling`), from the plain encoder of an embedding model, or from the
  encoder inside a classifier.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minibert.attention import ATTN_IMPLS
from minibert.batching import Row, collate_rows
from minibert.checkpoint_files import resolve_checkpoint
from minibert.config import BertConfig
from minibert.devices import autocast_dtype
from minibert.errors import MinibertError
from minibert.heads import BertForSequenceClassification
from minibert.hub import local_folder_or_repo_id
from minibert.labels import Labels
from minibert.models import BertModel
from minibert.pooling import SentenceEncoder, read_pooling
from minibert.predict import model_folder, results
from minibert.tokenizer import BertTokenizer

logger = logging.getLogger("minibert")
KINDS = ("predict", "embed")


@dataclass
class Tokenized:
    """A request's texts as rows, with each text's length before truncation."""

    rows: list[Row]
    lengths: list[int]
    truncated: list[bool]


class TooLong(MinibertError):
    """A text over the token limit while truncation is off."""


def resolve_folder(name_or_path: str) -> Path | str:
    """A local model folder (a finetune run folder gives its best/ model), or a Hub id as is."""
    where = local_folder_or_repo_id(name_or_path, "config.json and the weights")
    return model_folder(where) if isinstance(where, Path) else where


def is_classifier(config: BertConfig) -> bool:
    return any(str(a).endswith("ForSequenceClassification") for a in config.extra.get("architectures") or [])


class Engine:
    """A classifier or an embedding model, its tokenizer, limits and precision."""

    def __init__(self, model: str, max_length: int = 512, precision: str = "auto", attn_impl: str = "auto",
                 revision: str | None = None) -> None:
        if attn_impl not in ATTN_IMPLS:
            raise MinibertError(f"attention kernel {attn_impl!r} is not one of {', '.join(sorted(ATTN_IMPLS))}.")
        self.name = model
        folder = resolve_folder(model)
        self.device = torch.device("cpu")
        self.amp = autocast_dtype(precision, self.device)
        self.precision = "bf16 autocast" if self.amp is not None else "fp32"
        self.tokenizer = BertTokenizer.from_pretrained(folder, revision=revision)
        config = BertConfig.from_json(resolve_checkpoint(folder, revision=revision).config_file)
        pooling = read_pooling(folder, revision)
        self.classifier: BertForSequenceClassification | None = None
        self.labels: Labels | None = None
        if is_classifier(config):
            self.classifier = BertForSequenceClassification.from_pretrained(folder, revision=revision,
                                                                            attn_impl=attn_impl)
            self.labels = Labels.from_config(self.classifier.config.problem_type, self.classifier.config.id2label)
            encoder_model: BertModel = self.classifier.bert
        else:
            encoder_model = BertModel.from_pretrained(folder, revision=revision, attn_impl=attn_impl,
                                                      add_pooling_layer=False)
        self.encoder = SentenceEncoder(encoder_model, self.tokenizer, pooling)
        self.config = encoder_model.config
        self.attn_impl = encoder_model.attn_impl
        self.max_length = {"predict": min(max_length, self.config.max_position_embeddings),
                           "embed": min(max_length, self.encoder.max_length)}

    @property
    def task(self) -> str:
        if self.labels is None:
            return "embedding"
        return "regression" if self.labels.problem_type == "regression" else self.labels.problem_type

    def info(self) -> dict[str, Any]:
        return {"model": self.name, "task": self.task, "labels": self.labels.names if self.labels else None,
                "endpoints": (["/predict"] if self.classifier is not None else []) + ["/embed"],
                "max_length": self.max_length, "kernel": self.attn_impl, "precision": self.precision,
                "pooling": {"mode": self.encoder.pooling.mode, "normalize": self.encoder.pooling.normalize,
                            "source": self.encoder.pooling.source},
                "hidden_size": self.config.hidden_size}

    def tokenize(self, kind: str, texts: Sequence[str], pairs: Sequence[str] | None, truncate: bool) -> Tokenized:
        """Rows for `kind`, truncated to its limit; with `truncate=False` a longer text raises `TooLong`."""
        limit = self.max_length[kind]
        full = self.tokenizer.encode_batch(texts, pairs, truncation=False)
        lengths = [len(ids) for ids in full["input_ids"]]
        long = [i for i, n in enumerate(lengths) if n > limit]
        if long and not truncate:
            i = long[0]
            raise TooLong(f"input {i} has {lengths[i]} tokens, more than the limit of {limit}; shorten it, or "
                          "start the server without --no-truncate to have it truncated.")
        ids, types = list(full["input_ids"]), list(full["token_type_ids"])
        if long:
            cut = self.tokenizer.encode_batch([texts[i] for i in long], None if pairs is None else
                                              [pairs[i] for i in long], max_length=limit, truncation=True)
            for j, i in enumerate(long):
                ids[i], types[i] = cut["input_ids"][j], cut["token_type_ids"][j]
        return Tokenized([Row(a, b) for a, b in zip(ids, types)], lengths, [n > limit for n in lengths])

    def tokens(self, row: Row) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(row.input_ids)

    @torch.inference_mode()
    def forward(self, kind: str, rows: list[Row]) -> list[Any]:
        """One forward pass over `rows` (any lengths): predict's records, or embedding lists."""
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            if kind == "embed":
                return self.encoder.embed_rows(rows).tolist()
            assert self.classifier is not None and self.labels is not None
            batch = collate_rows(rows, self.tokenizer.pad_token_id, self.device)
            logits = self.classifier(**batch).logits.float()
        return results(logits, self.labels, all_scores=True)

    def warm_up(self) -> None:
        """One small batch of each kind, so the first request pays no one-time costs."""
        rows = self.tokenize("embed", ["warm-up text", "a second, longer warm-up text for the batch"], None, True).rows
        for kind in (["predict"] if self.classifier is not None else []) + ["embed"]:
            self.forward(kind, rows)
