"""The same fine-tuning run with `transformers.BertForSequenceClassification` (or, for token classification,
`BertForTokenClassification`) in place of ours, driven by our loop.

Every flag is `python -m minibert.finetune`'s; only the model class differs, so the two runs share data, tokenizer,
batches, schedule and evaluation, and the difference in accuracy and speed is the model's:

    python bench/finetune_transformers.py --model ../shared/models/all-MiniLM-L6-v2 \
        --train-file ../shared/data/sst2/train.tsv --validation-file ../shared/data/sst2/dev.tsv ...
    python bench/finetune_transformers.py --model ../shared/models/all-MiniLM-L6-v2 \
        --train-file ../shared/data/conll2003/train.txt --validation-file ../shared/data/conll2003/dev.txt ...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import transformers

from minibert import finetune, token_finetune


class TransformersClassifier:
    """`from_pretrained` with minibert's keyword arguments, returning transformers' model (sdpa attention)."""

    @staticmethod
    def from_pretrained(path: str | Path, attn_impl: str = "auto", ignore_mismatched_sizes: bool = False,
                        **config: Any) -> transformers.BertForSequenceClassification:
        model = transformers.BertForSequenceClassification.from_pretrained(
            path, attn_implementation="sdpa", ignore_mismatched_sizes=ignore_mismatched_sizes, dtype="float32",
            **config)
        return model.eval()


class TransformersTagger:
    """The same for token classification: transformers' BertForTokenClassification (sdpa attention)."""

    @staticmethod
    def from_pretrained(path: str | Path, attn_impl: str = "auto", ignore_mismatched_sizes: bool = False,
                        **config: Any) -> transformers.BertForTokenClassification:
        model = transformers.BertForTokenClassification.from_pretrained(
            path, attn_implementation="sdpa", ignore_mismatched_sizes=ignore_mismatched_sizes, dtype="float32",
            **config)
        return model.eval()


if __name__ == "__main__":
    finetune.BertForSequenceClassification = TransformersClassifier
    token_finetune.BertForTokenClassification = TransformersTagger
    sys.exit(finetune.main())
