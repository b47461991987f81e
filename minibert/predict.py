"""`python -m minibert.predict`: label texts with a fine-tuned model, one JSON object per input row, in input order.

    python -m minibert.predict --model weights/RUN --input reviews.csv --output predictions.jsonl
    echo "a fine film" | python -m minibert.predict --model weights/RUN --input -
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from minibert import run_folder
from minibert.attention import ATTN_IMPLS
from minibert.batches import Encoded, collate, encode
from minibert.batching import plan_batches
from minibert.checkpoint_files import read_shapes, resolve_checkpoint
from minibert.cli import option, options_parser
from minibert.command import check_vocabulary, run_command
from minibert.data import LABEL_NAMES, Examples, choose_columns, examples_from, find_column, read_table
from minibert.devices import PRECISIONS, autocast_dtype, choose_device, precision_name
from minibert.entities import AGGREGATIONS
from minibert.errors import MinibertError
from minibert.files import atomic_write_text
from minibert.heads import BertForSequenceClassification
from minibert.labels import Labels
from minibert.long_text import SUN_ET_AL_HEAD, pool_windows
from minibert.long_text_options import LONG_TEXT_CHOICES, POOLS, LongText, read_record, resolve_long_text
from minibert.metrics import compute_metrics
from minibert.predict_tokens import is_token_classifier, predict_tokens
from minibert.tokenizer import BertTokenizer


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
    output: str | None = option(None, "write the JSON lines here (default: stdout); written whole at the end")
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
    attn_impl: str = option("auto", "attention kernel", choices=ATTN_IMPLS)
    precision: str = option("auto", "bf16 autocast, fp32, or auto (bf16 where the GPU or CPU computes it natively, "
                                    "else fp32)", choices=PRECISIONS)
    device: str = option("auto", "cpu, cuda or cuda:N (auto: the GPU when there is one)")
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


def model_folder(path: Path) -> Path:
    """The model in a run folder (`best/`, else the newest checkpoint), or the folder itself."""
    if (path / "best" / "config.json").is_file():
        return path / "best"
    if (path / "config.json").is_file():
        return path
    if path.is_dir():
        return run_folder.find_checkpoint(path)
    raise MinibertError(f"{path} does not exist; pass the run folder written by minibert.finetune.")


def read_input(opts: Options) -> Examples:
    if opts.input == "-":
        lines = [line.rstrip("\r\n") for line in sys.stdin]
        return Examples(lines, None, None, [("<stdin>", i) for i in range(1, len(lines) + 1)])
    table = read_table(opts.input, opts.quoted_tsv)
    columns = choose_columns(table, opts.text_column, opts.text_pair_column, opts.label_column, need_label=False)
    columns.label = columns.label or find_column(table.columns, LABEL_NAMES)
    return examples_from(table, columns)


def results(logits: torch.Tensor, labels: Labels, all_scores: bool) -> list[dict[str, Any]]:
    if labels.problem_type == "regression":
        return [{"score": value} for value in logits.view(-1).tolist()]
    multi = labels.problem_type == "multi_label_classification"
    probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
    out = []
    for row in probs.tolist():
        if multi:
            chosen = [i for i, p in enumerate(row) if p > 0.5]
            record: dict[str, Any] = {"label": [labels.names[i] for i in chosen], "score": [row[i] for i in chosen]}
        else:
            best = max(range(len(row)), key=row.__getitem__)
            record = {"label": labels.names[best], "score": row[best]}
        if all_scores:
            record["scores"] = dict(zip(labels.names, row))
        out.append(record)
    return out


def check_has_classifier(folder: Path) -> None:
    """A model without a trained classification head would label texts at random: refuse it up front."""
    shapes = read_shapes(resolve_checkpoint(folder).weight_files)
    if shapes is not None and not any(name.endswith("classifier.weight") for name in shapes):
        raise MinibertError(f"{folder} has no classification head (no classifier.weight): it is not a fine-tuned "
                            "classifier; fine-tune it first with python -m minibert.finetune, or use "
                            "python -m minibert.embed for sentence embeddings.")


def long_text_for(opts: Options, record: dict[str, Any], max_length: int, examples: Examples, problem_type: str
                  ) -> tuple[LongText, str]:
    """How this prediction reads long texts, and how its windows are pooled: the flags given, else what the model
    folder records of its fine-tuning (`record`, empty without one), else `--long-text auto`'s rule and the
    defaults."""
    how = record.get("how", "auto") if opts.long_text == "auto" else opts.long_text
    head = opts.head_tokens if opts.head_tokens is not None else record.get("head_tokens", SUN_ET_AL_HEAD)
    stride = opts.stride if opts.stride is not None else (
        record["stride"] if record.get("max_length") == max_length else None)
    long_text = resolve_long_text(how, head, stride, max_length, examples.pairs is not None, problem_type)
    how, stride, pool = long_text.how, long_text.stride, opts.pool or record.get("pool", "mean")
    if opts.long_text == "auto":
        source = "as the model was fine-tuned" if record else "no long_text.json in the model folder"
        what = {"truncate": f"first {max_length} tokens", "head-tail": f"first {head} tokens and the end",
                "chunks": f"windows of {max_length} tokens, stride {stride}, {pool}-pooled"}[how]
        print(f"--long-text auto: {how} ({what}; {source}).", file=sys.stderr)
    return long_text, pool


def predict(opts: Options) -> list[dict[str, Any]]:
    check_paths(opts)
    device = choose_device(opts.device)
    amp = autocast_dtype(opts.precision, device)
    folder = model_folder(Path(opts.model))
    if is_token_classifier(folder):  # NER: words or texts to tags and entities
        return predict_tokens(opts, folder)
    check_has_classifier(folder)
    tokenizer = BertTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder, attn_impl=opts.attn_impl).to(device)
    check_vocabulary(tokenizer, model, folder)
    labels = Labels.from_config(model.config.problem_type, model.config.id2label)
    examples = read_input(opts)
    limit = model.config.max_position_embeddings
    record = read_record(folder) or {}
    if opts.max_length is not None and opts.max_length > limit:
        print(f"--max-length {opts.max_length} is more than the model's {limit} positions; using {limit}.",
              file=sys.stderr)
    max_length = min(opts.max_length or record.get("max_length") or 512, limit)
    long_text, pool = long_text_for(opts, record, max_length, examples, labels.problem_type)
    data: Encoded = encode(tokenizer, examples, max_length, progress=not opts.no_progress, long_text=long_text)
    logits = torch.empty(len(data), model.config.num_labels)
    batches = plan_batches(data.lengths, opts.max_batch_tokens, opts.batch_size)
    show = not opts.no_progress and len(batches) > 1
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for indices in tqdm(batches, desc=f"predicting ({precision_name(amp)})", unit="batch", disable=not show,
                            file=sys.stderr):
            batch = {k: v.to(device) for k, v in collate(data, indices).items()}
            logits[indices] = model(**batch).logits.float().cpu()
    if data.doc_index is not None:  # windows of long texts: one answer per input row
        logits = pool_windows(logits, data.doc_index, len(examples), pool)
    if examples.labels is not None:  # gold labels given: score them, listing any the model never saw
        try:
            gold = labels.encode(examples, "prediction")
            metrics = compute_metrics(logits, gold, labels.problem_type)
            print(", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not isinstance(v, bool)), file=sys.stderr)
        except MinibertError as e:
            logging.getLogger("minibert").warning("%s", e)
    return results(logits, labels, opts.all_scores)


def run(opts: Options) -> int:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in predict(opts))
    if opts.output:
        atomic_write_text(opts.output, lines)
    else:
        sys.stdout.write(lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), run, argv)


if __name__ == "__main__":
    sys.exit(main())
