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

from minibert import checkpoint
from minibert.attention import ATTN_IMPLS
from minibert.cli import options_parser
from minibert.data import (
    LABEL_NAMES,
    Encoded,
    Examples,
    Labels,
    choose_columns,
    collate,
    encode,
    examples_from,
    find_column,
    read_table,
    sorted_batches,
)
from minibert.errors import MinibertError
from minibert.files import atomic_write_text
from minibert.models import BertForSequenceClassification
from minibert.tokenizer import BertTokenizer
from minibert.train import autocast_dtype, compute_metrics


@dataclass
class Options:
    model: str = ""
    input: str = "-"
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    output: str | None = None
    batch_size: int = 64
    max_length: int = 512
    all_scores: bool = False
    quoted_tsv: bool = False
    attn_impl: str = "auto"
    precision: str = "auto"
    device: str = "auto"
    debug: bool = False


HELP = {
    "model": "a run folder of minibert.finetune (its best/ model is used), or any fine-tuned model folder",
    "input": "a .csv, .tsv, .jsonl or .parquet file (.gz accepted), or - for one text per line on stdin",
    "text_column": "text column (default: detected among text, sentence, review, content, ...)",
    "text_pair_column": "second text column for sentence pairs",
    "label_column": "gold label column: if present, unknown labels are listed and accuracy printed",
    "output": "write the JSON lines here (default: stdout)",
    "batch_size": "examples per forward pass",
    "max_length": "tokens per example (longer texts are truncated)",
    "all_scores": "also output the probability of every label",
    "quoted_tsv": "process quotes in TSV files",
    "attn_impl": "attention kernel: auto, math, sdpa or unpadded",
    "precision": "bf16 autocast, fp32, or auto (bf16 where the GPU or CPU computes it natively, else fp32)",
    "device": "cpu, cuda or cuda:N (auto: the GPU when there is one)",
    "debug": "show the full traceback of errors",
}


def parse_args(argv: list[str] | None = None) -> Options:
    parser = options_parser(Options, "python -m minibert.predict", __doc__, HELP,
                            {"attn_impl": sorted(ATTN_IMPLS), "precision": ("auto", "bf16", "fp32")},
                            required={"model"})
    return Options(**vars(parser.parse_args(argv)))


def model_folder(path: Path) -> Path:
    """The model in a run folder (`best/`, else the newest checkpoint), or the folder itself."""
    if (path / "best" / "config.json").is_file():
        return path / "best"
    if (path / "config.json").is_file():
        return path
    if path.is_dir():
        return checkpoint.find_checkpoint(path)
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


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MinibertError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MinibertError(f"--device {name} asks for a GPU, but torch sees none here; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MinibertError(f"--device {name}: torch sees only {torch.cuda.device_count()} GPU(s) here; use cuda:0 "
                            "or another index below that.")
    if device.type not in ("cpu", "cuda"):
        raise MinibertError(f"--device {name}: only cpu and cuda are supported.")
    return device


def predict(opts: Options) -> list[dict[str, Any]]:
    device = choose_device(opts.device)
    amp = autocast_dtype(opts.precision, device)
    folder = model_folder(Path(opts.model))
    tokenizer = BertTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder, attn_impl=opts.attn_impl).to(device)
    labels = Labels.from_config(model.config.problem_type, model.config.id2label)
    examples = read_input(opts)
    max_length = min(opts.max_length, model.config.max_position_embeddings)
    data: Encoded = encode(tokenizer, examples, max_length)
    logits = torch.empty(len(data), model.config.num_labels)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for indices in sorted_batches(data.lengths, opts.batch_size):
            batch = {k: v.to(device) for k, v in collate(data, indices, tokenizer.pad_token_id).items()}
            logits[indices] = model(**batch).logits.float().cpu()
    if examples.labels is not None:  # gold labels given: score them, listing any the model never saw
        try:
            gold = labels.encode(examples, "prediction")
            metrics = compute_metrics(logits, gold, labels.problem_type)
            print(", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not isinstance(v, bool)), file=sys.stderr)
        except MinibertError as e:
            logging.getLogger("minibert").warning("%s", e)
    return results(logits, labels, opts.all_scores)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    try:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in predict(opts))
        if opts.output:
            atomic_write_text(opts.output, lines)
        else:
            sys.stdout.write(lines)
    except MinibertError as e:
        if opts.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
