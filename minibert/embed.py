"""`python -m minibert.embed`: one sentence vector per input row, as JSON lines in input order.

    python -m minibert.embed --model ../shared/models/all-MiniLM-L6-v2 --input sentences.csv --output vectors.jsonl
    echo "a fine film" | python -m minibert.embed --model ../shared/models/all-MiniLM-L6-v2 --input -

Pooling and normalisation come from the model's sentence-transformers files (`minibert.pooling`); a folder without
them gets mean pooling and L2 normalisation, and a warning says so.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass

import torch

from minibert.attention import ATTN_IMPLS
from minibert.cli import option, options_parser
from minibert.command import run_command
from minibert.data import choose_columns, examples_from, read_table
from minibert.devices import PRECISIONS, autocast_dtype
from minibert.engine import resolve_folder
from minibert.files import atomic_write_text
from minibert.pooling import DEFAULT_BATCH_TOKENS, SentenceEncoder

logger = logging.getLogger("minibert")


@dataclass
class Options:
    model: str = option("", "an embedding model folder (sentence-transformers layout or plain BERT) or a Hub id",
                        required=True)
    input: str = option("-", "a .csv, .tsv, .jsonl or .parquet file (.gz accepted), or - for one text per line on "
                             "stdin")
    text_column: str | None = option(None, "text column (default: detected among text, sentence, review, ...)")
    output: str | None = option(None, "write the JSON lines here (default: stdout)")
    max_batch_tokens: int = option(DEFAULT_BATCH_TOKENS, "real tokens per forward pass", at_least=1)
    attn_impl: str = option("auto", "attention kernel", choices=ATTN_IMPLS)
    precision: str = option("fp32", "fp32, bf16 autocast, or auto (bf16 where the CPU computes it natively)",
                            choices=PRECISIONS)
    debug: bool = option(False, "show the full traceback of errors")


def read_texts(path: str, column: str | None) -> list[str]:
    if path == "-":
        return [line.rstrip("\r\n") for line in sys.stdin]
    table = read_table(path)
    return examples_from(table, choose_columns(table, column, None, None, need_label=False)).texts


def embed_file(opts: Options) -> torch.Tensor:
    encoder = SentenceEncoder.from_pretrained(resolve_folder(opts.model), attn_impl=opts.attn_impl)
    if not encoder.pooling.from_files:
        logger.warning("%s has no sentence-transformers pooling files: using %s", opts.model, encoder.pooling.source)
    texts = read_texts(opts.input, opts.text_column)
    return encoder.encode(texts, opts.max_batch_tokens, autocast_dtype(opts.precision, torch.device("cpu")))


def run(opts: Options) -> int:
    lines = "".join(json.dumps({"embedding": v}) + "\n" for v in embed_file(opts).tolist())
    if opts.output:
        atomic_write_text(opts.output, lines)
    else:
        sys.stdout.write(lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: Options(**vars(options_parser(Options, "python -m minibert.embed",
                                                              __doc__).parse_args(argv))), run, argv)


if __name__ == "__main__":
    sys.exit(main())
