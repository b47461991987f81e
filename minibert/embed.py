"""`python -m minibert.embed`: one sentence vector per input row, as JSON lines in input order.

    python -m minibert.embed --model ../shared/models/all-MiniLM-L6-v2 --input sentences.csv --output vectors.jsonl
    echo "a fine film" | python -m minibert.embed --model ../shared/models/all-MiniLM-L6-v2 --input -

Pooling and normalisation come from the model's sentence-transformers files (`minibert.pooling`); a folder without
them gets mean pooling and L2 normalisation, and one line says so. Texts longer than the model's limit are truncated,
as sentence-transformers does. `--prompt-name` / `--prompt` are its `prompt_name` / `prompt` (`minibert.prompts`);
`--truncate-dim N` keeps the first N components, normalised again when the model normalises (its `truncate_dim` with
`normalize_embeddings`). Like `predict`, the input is read, embedded and written a chunk at a time.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import IO

import torch
from tqdm.auto import tqdm

from minibert.attention import ATTN_IMPLS
from minibert.cli import option, options_parser
from minibert.command import run_command
from minibert.data import iter_examples
from minibert.devices import PRECISIONS
from minibert.dynamic_batching import run_offline
from minibert.files import write_text_stream
from minibert.inference import InferenceModel
from minibert.pooling import DEFAULT_BATCH_TOKENS
from minibert.quantize import QUANTIZE_HELP, SCHEMES

logger = logging.getLogger("minibert")
CHUNK_TEXTS = 1024  # rows read, embedded and written at a time
MAX_TEXT_BYTES = 10_000_000  # a longer line is refused before it is read whole (--max-text-bytes)


@dataclass
class Options:
    model: str = option("", "an embedding model folder (sentence-transformers layout or plain BERT) or a Hub id",
                        required=True)
    input: str = option("-", "a .csv, .tsv, .jsonl or .parquet file (.gz accepted), or - for one text per line on "
                             "stdin")
    text_column: str | None = option(None, "text column (default: detected among text, sentence, review, ...)")
    output: str | None = option(None, "write the JSON lines here (default: stdout); an earlier file is replaced only "
                                      "when every row is done")
    prompt_name: str | None = option(None, "put the model's prompt of this name before each text (its "
                                           "config_sentence_transformers.json; default: its default prompt, if any)")
    prompt: str | None = option(None, "put this text before each text (instead of a named prompt)")
    truncate_dim: int | None = option(None, "keep the first N components of each vector (L2-normalised again when "
                                            "the model normalises): for models trained to allow it (Matryoshka)",
                                      at_least=1)
    max_batch_tokens: int = option(DEFAULT_BATCH_TOKENS, "real tokens per forward pass", at_least=1)
    max_text_bytes: int = option(MAX_TEXT_BYTES, "refuse an input line (one row) longer than this", at_least=1)
    attn_impl: str = option("auto", "attention kernel", choices=ATTN_IMPLS)
    precision: str = option("fp32", "fp32, bf16 autocast, or auto (bf16 where the CPU computes it natively)",
                            choices=PRECISIONS)
    device: str = option("auto", "cpu, cuda or cuda:N (auto: the GPU when there is one)")
    quantize: str | None = option(None, QUANTIZE_HELP, choices=SCHEMES)
    no_progress: bool = option(False, "no progress bar")
    debug: bool = option(False, "show the full traceback of errors")


def embed_to(out: IO[str], opts: Options, model: InferenceModel) -> int:
    """Embed every input row and write its JSON line to `out` as each chunk is done; the number of rows."""
    count = 0
    with tqdm(desc=f"embedding ({model.precision.name})", unit=" texts", disable=opts.no_progress, delay=2,
              file=sys.stderr) as bar:
        for examples in iter_examples(opts.input, opts.text_column, None, None, False, CHUNK_TEXTS,
                                      opts.max_text_bytes):
            prepared = model.prepare("embed", examples.texts, prompt_name=opts.prompt_name, prompt=opts.prompt)
            vectors = run_offline(prepared.rows, lambda rows: model.forward("embed", rows), opts.max_batch_tokens)
            if opts.truncate_dim is not None and vectors:
                vectors = list(model.truncate(torch.stack(vectors), opts.truncate_dim))
            out.write("".join(json.dumps({"embedding": v.tolist()}) + "\n" for v in vectors))
            out.flush()
            count += len(examples)
            bar.update(len(examples))
    return count


def run(opts: Options) -> int:
    started = time.monotonic()
    model = InferenceModel.load(opts.model, task="embed", precision=opts.precision, attn_impl=opts.attn_impl,
                                device=opts.device, quantize=opts.quantize)
    model.encoder.prompts.resolve(opts.prompt, opts.prompt_name)  # an unknown prompt name, before any input is read
    if opts.truncate_dim is not None:
        model.truncate(torch.zeros(1, model.config.hidden_size), opts.truncate_dim)  # more than the model has
    if not model.encoder.pooling.from_files:
        logger.warning("%s has no sentence-transformers pooling files (modules.json): using mean pooling and L2 "
                       "normalisation.", model.name)
    write_text_stream(opts.output, lambda out: embed_to(out, opts, model), "embeddings", started)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: Options(**vars(options_parser(Options, "python -m minibert.embed",
                                                              __doc__).parse_args(argv))), run, argv)


if __name__ == "__main__":
    sys.exit(main())
