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


def transformers_loader(cls: type) -> type:
    """A stand-in for a minibert head class: `from_pretrained` with minibert's keyword arguments, returning
    transformers' `cls` model (sdpa attention, float32, eval mode)."""

    class Loader:
        @staticmethod
        def from_pretrained(path: str | Path, attn_impl: str = "auto", ignore_mismatched_sizes: bool = False,
                            **config: Any) -> transformers.PreTrainedModel:
            model = cls.from_pretrained(path, attn_implementation="sdpa",
                                        ignore_mismatched_sizes=ignore_mismatched_sizes, dtype="float32", **config)
            return model.eval()

    return Loader


if __name__ == "__main__":
    finetune.BertForSequenceClassification = transformers_loader(transformers.BertForSequenceClassification)
    token_finetune.BertForTokenClassification = transformers_loader(transformers.BertForTokenClassification)
    sys.exit(finetune.main())
