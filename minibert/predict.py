"""`python -m minibert.predict`: label texts with a fine-tuned model, one JSON object per input row, in input order.

    python -m minibert.predict --model weights/RUN --input reviews.csv --output predictions.jsonl
    echo "a fine film" | python -m minibert.predict --model weights/RUN --input -

The input is read, predicted and written a chunk of rows at a time, so a file of any size runs in bounded memory and
the output grows as it goes (to a temporary file beside --output, renamed over it at the end: an interrupted run
leaves the earlier file untouched). The model and every choice about it come from `minibert.inference`, as for the
server, so both answer the same for the same text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from tqdm.auto import tqdm

from minibert import run_folder
from minibert.attention import ATTN_IMPLS
from minibert.cli import option, options_parser
from minibert.command import run_command
from minibert.data import Examples, iter_examples
from minibert.devices import PRECISIONS
from minibert.dynamic_batching import run_offline
from minibert.entities import AGGREGATIONS
from minibert.errors import MinibertError
from minibert.files import write_text_stream
from minibert.inference import InferenceModel, LongTextFlags, resolve_folder
from minibert.labels import Labels, name_labels
from minibert.long_text_options import LONG_TEXT_CHOICES, POOLS
from minibert.metrics import compute_metrics
from minibert.predict_tokens import is_token_classifier, predict_tokens
from minibert.quantize import QUANTIZE_HELP, SCHEMES

CHUNK_TEXTS = 1024  # rows read, predicted and written at a time: memory stays bounded whatever the input's size
MAX_TEXT_BYTES = 10_000_000  # a longer line is refused before it is read whole (--max-text-bytes)


@dataclass
class Options:
    model: str = option("", "a run folder of minibert.finetune (its best/ model is used), or any fine-tuned model "
                            "folder", required=True)
    input: str = option("-", "a .csv, .tsv, .jsonl or .parquet file (.gz accepted), or - for one text per line on "
                             "stdin; for token classifiers also CoNLL-style .conll, .iob, .txt")
    text_column: str | None = option(None, "text column (default: detected among text, sentence, review, ...)")
    text_pair_column: str | None = option(None, "second text column for sentence pairs")
    label_column: str | None = option(None, "gold label column: if present, unknown labels are listed and accuracy "
                                            "printed")
    output: str | None = option(None, "write the JSON lines here (default: stdout); an earlier file is replaced only "
                                      "when every row is done")
    long_text: str = option("auto", "texts longer than --max-length: keep the first tokens (truncate), the first "
                                    "--head-tokens and the last ones (head-tail), or score every window of "
                                    "--max-length tokens overlapping by --stride and pool them (chunks); auto: what "
                                    "the model was fine-tuned with (its long_text.json), else chunks for a "
                                    "single-label classifier on single texts and truncate otherwise",
                            choices=LONG_TEXT_CHOICES)
    head_tokens: int | None = option(None, "head-tail: tokens kept from the start, the rest from the end (default: "
                                           "the model's fine-tuning value, else 128)", at_least=0)
    stride: int | None = option(None, "chunks: tokens each window shares with the previous one (default: the "
                                      "model's fine-tuning value at the same --max-length, else a quarter of it)",
                                at_least=0)
    pool: str | None = option(None, "chunks: how a document's window logits are pooled (default: the model's "
                                    "fine-tuning value, else mean)", choices=POOLS)
    batch_size: int = option(64, "at most this many sequences per forward pass", at_least=1)
    max_batch_tokens: int = option(16384, "at most this many real tokens per forward pass (a longer text alone may "
                                          "exceed it); batches are formed longest first, as the server forms them",
                                   at_least=1)
    max_length: int | None = option(None, "tokens per sequence, specials included (default: the length the model "
                                          "was fine-tuned with, from its long_text.json, else 512; at most the model's "
                                          "max_position_embeddings); longer texts: see --long-text", at_least=2)
    all_scores: bool = option(False, "also output the probability of every label")
    quoted_tsv: bool = option(False, "process quotes in TSV files")
    max_text_bytes: int = option(MAX_TEXT_BYTES, "refuse an input line (one row) longer than this", at_least=1)
    attn_impl: str = option("auto", "attention kernel", choices=ATTN_IMPLS)
    precision: str = option("auto", "bf16 autocast, fp32, or auto (bf16 where the GPU or CPU computes it natively, "
                                    "else fp32)", choices=PRECISIONS)
    device: str = option("auto", "cpu, cuda or cuda:N (auto: the GPU when there is one)")
    quantize: str | None = option(None, QUANTIZE_HELP, choices=SCHEMES)
    no_progress: bool = option(False, "no progress bar")
    debug: bool = option(False, "show the full traceback of errors")
    aggregation: str = option("simple", "token classifiers on raw text: how tokens become entities, as in "
                                        "transformers' pipeline (none: one per token)", choices=AGGREGATIONS)
    tag_column: int = option(-1, "token classifiers on CoNLL files: the column of gold tags, if any")
    label_names: str | None = option(None, "token classifiers on rows with integer gold tags: their names, "
                                           "comma-separated in id order")


def parse_args(argv: list[str] | None = None) -> Options:
    return Options(**vars(options_parser(Options, "python -m minibert.predict", __doc__).parse_args(argv)))


def check_paths(opts: Options) -> None:
    """Before any prediction is computed: the input can be read, the output can be written and is not the input."""
    if opts.input != "-":
        run_folder.check_readable_file(Path(opts.input), "--input")
    if opts.output is None:
        return
    output = Path(opts.output)
    if output.is_dir():
        raise MinibertError(f"--output {output} is a folder; pass a file name such as {output / 'predictions.jsonl'}.")
    if opts.input != "-" and output.resolve() == Path(opts.input).resolve():
        raise MinibertError(f"--output {output} is the input file; writing there would overwrite the input, so "
                            "choose another file.")
    if not output.parent.is_dir():
        raise MinibertError(f"--output {output}: the folder {output.parent} does not exist; create it first.")
    run_folder.check_writable_folder(output.parent, "--output")


class Gold:
    """Gold labels seen so far (when the input has a label column) and the model's logits for them: scored at the
    end, listing any label the model never saw."""

    def __init__(self) -> None:
        self.labels: list[Any] = []
        self.sources: list[tuple[str, int]] = []
        self.logits: list[torch.Tensor] = []

    def add(self, examples: Examples, logits: torch.Tensor) -> None:
        if examples.labels is not None:
            self.labels += examples.labels
            self.sources += examples.sources
            self.logits.append(logits)

    def report(self, labels: Labels) -> None:
        if not self.labels:
            return
        examples = Examples([""] * len(self.labels), None, self.labels, self.sources)
        if labels.problem_type == "single_label_classification" and not set(map(str, self.labels)) & set(labels.names):
            try:  # integer ids of a model trained with --label-names (SST-2's 0/1 for negative/positive)
                examples = name_labels(examples, labels.names)
            except MinibertError:
                pass  # not ids either: encode lists the labels the model never saw
        try:
            gold = labels.encode(examples, "prediction")
            metrics = compute_metrics(torch.cat(self.logits), gold, labels.problem_type)
            print(", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not isinstance(v, bool)), file=sys.stderr)
        except MinibertError as e:
            logging.getLogger("minibert").warning("%s", e)


def predict_chunk(model: InferenceModel, examples: Examples, opts: Options) -> torch.Tensor:
    """Each text's pooled logits: tokenised as `model` reads long texts, batched longest first."""
    prepared = model.prepare("predict", examples.texts, examples.pairs)
    outputs = run_offline(prepared.rows, lambda rows: model.forward("predict", rows), opts.max_batch_tokens,
                          opts.batch_size)
    return model.pooled_logits(outputs, prepared)


def predict_to(out: IO[str], opts: Options, model: InferenceModel) -> int:
    """Predict every input row and write its JSON line to `out` as each chunk is done; the number of rows."""
    assert model.labels is not None
    gold, count, announced = Gold(), 0, False
    with tqdm(desc=f"predicting ({model.precision.name})", unit=" texts", disable=opts.no_progress, delay=2,
              file=sys.stderr) as bar:
        for examples in iter_examples(opts.input, opts.text_column, opts.text_pair_column, opts.label_column,
                                      opts.quoted_tsv, CHUNK_TEXTS, opts.max_text_bytes, find_label=True):
            if not announced and opts.long_text == "auto":
                print(f"--long-text auto: {model.describe_long_text(examples.pairs is not None)}.", file=sys.stderr)
                announced = True
            logits = predict_chunk(model, examples, opts)
            gold.add(examples, logits)
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in model.records(logits, opts.all_scores)))
            out.flush()
            count += len(examples)
            bar.update(len(examples))
    gold.report(model.labels)
    return count


def run(opts: Options) -> int:
    check_paths(opts)
    started = time.monotonic()
    folder = resolve_folder(opts.model)
    if isinstance(folder, Path) and is_token_classifier(folder):  # NER: words or texts to tags and entities
        return write_records(predict_tokens(opts, folder), opts, started)
    model = InferenceModel.load(opts.model, task="predict", max_length=opts.max_length,
                                long_text=LongTextFlags(opts.long_text, opts.head_tokens, opts.stride, opts.pool),
                                precision=opts.precision, attn_impl=opts.attn_impl, device=opts.device,
                                quantize=opts.quantize)
    write_text_stream(opts.output, lambda out: predict_to(out, opts, model), "predictions", started)
    return 0


def write_records(records: list[dict[str, Any]], opts: Options, started: float) -> int:
    """A token classifier's records (computed whole), written as predict writes its chunks."""

    def write(out: IO[str]) -> int:
        out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return len(records)

    write_text_stream(opts.output, write, "predictions", started)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), run, argv)


if __name__ == "__main__":
    sys.exit(main())
