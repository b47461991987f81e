"""`python -m minibert.predict` on a token classifier (NER): words in, tags and entities out; raw text in,
entities as transformers' pipeline gives them. predict.py calls `predict_tokens` when the model is one.

Word input: a CoNLL-style file (`.conll`, `.iob`, `.txt`) or JSONL/parquet rows with a list of words; one record per
sentence with `tags` per word and `entities`; when the file has gold tags, the entity scores are printed. Raw text:
stdin lines, or a CSV/TSV/JSONL/parquet text column (`--text-column`); one record per text with `entities`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from minibert.checkpoint_files import resolve_checkpoint
from minibert.config import BertConfig
from minibert.conll import has_word_lists, is_conll, read_tagged
from minibert.data import choose_columns, examples_from, read_table
from minibert.entities import tag_texts, tag_words
from minibert.inference import InferenceModel
from minibert.inference import is_token_classifier as saved_as_token_classifier
from minibert.ner_metrics import entity_scores, is_iob
from minibert.token_labels import check_known_tags


def is_token_classifier(folder: Path) -> bool:
    """What the folder's config.json says it was saved as."""
    return saved_as_token_classifier(BertConfig.from_json(resolve_checkpoint(folder).config_file))


def word_input(opts: Any) -> bool:
    """CoNLL files and rows whose (text) column holds lists of words are words; the rest is raw text."""
    if opts.input == "-":
        return False
    suffix = Path(opts.input.lower().removesuffix(".gz")).suffix
    return is_conll(opts.input) or (suffix in (".jsonl", ".json", ".parquet")
                                    and has_word_lists(opts.input, opts.text_column))


def read_texts(opts: Any) -> list[str]:
    if opts.input == "-":
        return [line.rstrip("\r\n") for line in sys.stdin]
    table = read_table(opts.input, opts.quoted_tsv)
    return examples_from(table, choose_columns(table, opts.text_column, None, None, need_label=False)).texts


def predict_tokens(opts: Any, folder: Path) -> list[dict[str, Any]]:
    """Records for every input sentence or text (`opts`: predict.Options), in input order. The model is loaded as
    predict loads any model (device, precision, `--quantize`)."""
    loaded = InferenceModel.load(str(folder), task="predict", precision=opts.precision, attn_impl=opts.attn_impl,
                                 device=opts.device, quantize=opts.quantize)
    model, tokenizer, device, amp = loaded.tagger, loaded.tokenizer, loaded.device, loaded.precision.dtype
    assert model is not None  # the caller checked that the folder holds a token classifier
    limit = model.config.max_position_embeddings
    if opts.max_length is not None and opts.max_length > limit:
        print(f"--max-length {opts.max_length} is more than the model's {limit} positions; using {limit}.",
              file=sys.stderr)
    max_length = min(opts.max_length or 512, limit)
    stride = max_length // 4 if opts.stride is None else opts.stride
    batching = {"max_batch_tokens": opts.max_batch_tokens, "batch_size": opts.batch_size}
    if not word_input(opts):
        return tag_texts(model, tokenizer, read_texts(opts), opts.aggregation, max_length, stride, device, amp,
                         **batching)
    names = opts.label_names.split(",") if opts.label_names else None
    sentences = read_tagged(opts.input, opts.tag_column, opts.text_column, opts.label_column, names, need_tags=False)
    records = tag_words(model, tokenizer, sentences, max_length, stride, device, amp, **batching)
    if sentences.tags is not None:  # gold tags given: score them
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        check_known_tags(sentences, {name: i for i, name in enumerate(labels)}, "prediction")
        scores = entity_scores(sentences.tags, [r["tags"] for r in records])
        shown = scores if is_iob(labels) else {"accuracy": scores["accuracy"]}
        print(", ".join(f"{k} {v:.4f}" for k, v in shown.items()), file=sys.stderr)
    return records
