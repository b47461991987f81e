"""`python -m minibert.finetune`: fine-tune a BERT checkpoint for text classification or regression.

    python -m minibert.finetune --model FOLDER --train-file train.csv --validation-file dev.csv
    torchrun --nproc_per_node=2 -m minibert.finetune ...          # DDP: gloo on CPU, nccl on GPUs

This file parses flags and wires data, model and loop together; the work is in data.py and train.py.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from minibert import checkpoint
from minibert.attention import ATTN_IMPLS
from minibert.cli import options_parser
from minibert.data import Encoded, Examples, Labels, encode, hub_dataset_files, read_examples, read_hub_split, split_off
from minibert.errors import MinibertError
from minibert.models import BertForSequenceClassification
from minibert.tokenizer import BertTokenizer
from minibert.train import Dist, Summary, TrainOptions, evaluate, plot_metrics, setup_distributed, train

logger = logging.getLogger("minibert")


@dataclass
class Options:
    model: str = "bert-base-uncased"
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    dataset: str = "stanfordnlp/imdb"
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    validation_split: float = 0.1
    quoted_tsv: bool = False
    problem_type: str = "auto"
    max_length: int = 128
    batch_size: int = 32
    grad_accum: int = 1
    epochs: int = 3
    max_steps: int = 0
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "auto"
    attn_impl: str = "auto"
    seed: int = 42
    seeds: str | None = None
    max_train_samples: int = 0
    max_eval_samples: int = 0
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    output_dir: str | None = None
    resume: str | None = None
    allow_resume_mismatch: bool = False
    num_workers: int = 1
    no_progress: bool = False
    debug: bool = False


HELP = {
    "model": "Hub id or local folder of the BERT checkpoint to start from",
    "train_file": "training data: .csv, .tsv, .jsonl or .parquet (.gz accepted for the text formats)",
    "validation_file": "validation data (same formats); without it --validation-split holds out part of train",
    "test_file": "test data, evaluated once with the best model at the end",
    "dataset": "Hub dataset id whose parquet files are read when no --train-file is given",
    "text_column": "text column (default: detected among text, sentence, review, content, ...)",
    "text_pair_column": "second text column for sentence pairs (default: sentence2 etc. when the text is sentence1)",
    "label_column": "label column (default: detected among label, labels, sentiment, class, ...)",
    "validation_split": "fraction of the training rows held out for validation when there is no validation data",
    "quoted_tsv": "process quotes in TSV files (off by default: SST-2-style texts contain bare quotes)",
    "problem_type": "auto (from the labels: ints/strings, lists, floats), or force one",
    "max_length": "tokens per example (longer texts are truncated)",
    "batch_size": "examples per batch and per process",
    "grad_accum": "batches accumulated per optimizer step",
    "epochs": "passes over the training data",
    "max_steps": "stop after this many optimizer steps (0: run all --epochs)",
    "lr": "peak learning rate of AdamW",
    "weight_decay": "AdamW weight decay (never applied to biases and LayerNorm)",
    "warmup_ratio": "fraction of the steps spent warming the learning rate up from 0",
    "max_grad_norm": "clip the gradient norm to this (0: no clipping)",
    "precision": "bf16 autocast, fp32, or auto (bf16 where the GPU or CPU computes it natively, else fp32)",
    "attn_impl": "attention kernel: auto, math, sdpa or unpadded",
    "seed": "random seed (data order, dropout, head initialisation)",
    "seeds": "comma-separated seeds: repeat the run for each and report mean ± std",
    "max_train_samples": "use only the first N training rows (0: all)",
    "max_eval_samples": "use only the first N validation/test rows (0: all)",
    "eval_every": "also evaluate (and checkpoint) every N steps (0: once per epoch)",
    "save_every": "also checkpoint every N steps (0: at evaluations only)",
    "keep_checkpoints": "complete checkpoints kept in the run folder",
    "log_every": "write the training loss to metrics.jsonl every N steps",
    "output_dir": "run folder (default: weights/<model>-<data>-<time>)",
    "resume": "continue a run: a run folder, a checkpoint folder, or auto (newest in --output-dir)",
    "allow_resume_mismatch": "resume even if data, batch size or world size differ (the result is then not exact)",
    "num_workers": "processes used to tokenize",
    "no_progress": "no progress bar",
    "debug": "show the full traceback of errors",
}
CHOICES = {"precision": ("auto", "bf16", "fp32"), "attn_impl": sorted(ATTN_IMPLS),
           "problem_type": ("auto", "single_label_classification", "multi_label_classification", "regression")}


def parse_args(argv: list[str] | None = None) -> Options:
    parser = options_parser(Options, "python -m minibert.finetune", __doc__, HELP, CHOICES)
    return Options(**vars(parser.parse_args(argv)))


# --- data --------------------------------------------------------------------------------------------------------


def load_splits(opts: Options, main: bool) -> tuple[Examples, Examples | None, Examples | None, str]:
    """(train, validation, test examples, a short name of the data for the run folder)."""
    cols = (opts.text_column, opts.text_pair_column, opts.label_column)
    if opts.train_file:
        train, columns = read_examples(opts.train_file, *cols, quoted_tsv=opts.quoted_tsv)
        named = (columns.text, columns.pair, columns.label)
        val = read_examples(opts.validation_file, *named, quoted_tsv=opts.quoted_tsv)[0] \
            if opts.validation_file else None
        test = read_examples(opts.test_file, *named, quoted_tsv=opts.quoted_tsv)[0] if opts.test_file else None
        name = Path(opts.train_file).name.split(".")[0]
    else:
        try:
            files = hub_dataset_files(opts.dataset)
        except MinibertError as e:
            local = "" if Path(opts.model).is_dir() else " and --model FOLDER"
            raise MinibertError(f"could not read dataset {opts.dataset!r} ({str(e).split(';')[0]}); for local files "
                                f"pass --train-file FILE [--validation-file FILE]{local}.") from None
        train, columns = read_hub_split(files["train"], None, *cols)
        val = read_hub_split(files["validation"], columns, *cols)[0] if "validation" in files else None
        test = read_hub_split(files["test"], columns, *cols)[0] if "test" in files else None
        name = opts.dataset.split("/")[-1]
    if main:
        pair = f", text pair {columns.pair!r}" if columns.pair else ""
        print(f"columns: text {columns.text!r}{pair}, label {columns.label!r}", file=sys.stderr)
    if opts.max_train_samples:
        train = train.select(range(min(opts.max_train_samples, len(train))))
    if val is None and opts.validation_split > 0:
        train, val = split_off(train, opts.validation_split, opts.seed)
        if main:
            print(f"validation: {len(val)} rows held out of the training data (--validation-split "
                  f"{opts.validation_split}).", file=sys.stderr)
    if opts.max_eval_samples:
        val = val.select(range(min(opts.max_eval_samples, len(val)))) if val else None
        test = test.select(range(min(opts.max_eval_samples, len(test)))) if test else None
    return train, val, test, name


def fingerprint(train: Examples, labels: Labels, opts: Options) -> dict[str, object]:
    """What must be unchanged for a resume to continue the same run (the loop adds batch and world size)."""
    digest = hashlib.sha256()
    for i in range(len(train)):
        row = (train.texts[i], train.pairs[i] if train.pairs else None, train.labels[i])
        digest.update(repr(row).encode())
    return {"data": digest.hexdigest()[:16], "max_length": opts.max_length, "labels": labels.names}


# --- one run -----------------------------------------------------------------------------------------------------


def run_dir_for(opts: Options, data_name: str) -> Path:
    if opts.output_dir:
        return Path(opts.output_dir)
    if opts.resume and opts.resume != "auto":
        resume = Path(opts.resume)
        return resume.parent if (resume / checkpoint.STATE_FILE).is_file() else resume
    model = Path(opts.model).name or "model"
    return Path("weights") / f"{model}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def finetune(opts: Options, d: Dist) -> Summary:
    train_ex, val_ex, test_ex, data_name = load_splits(opts, d.main)
    problem_type = None if opts.problem_type == "auto" else opts.problem_type
    labels = Labels.from_training(train_ex.labels, problem_type)
    train_y = labels.encode(train_ex, "training")
    val_y = labels.encode(val_ex, "validation") if val_ex else None
    test_y = labels.encode(test_ex, "test") if test_ex else None
    run_dir = run_dir_for(opts, data_name)
    resume = None
    if opts.resume:
        if opts.resume == "auto" and not opts.output_dir:
            raise MinibertError("--resume auto needs --output-dir, the run folder to look for checkpoints in.")
        resume = checkpoint.find_checkpoint(run_dir if opts.resume == "auto" else Path(opts.resume))
    source = str(resume) if resume else opts.model
    tokenizer = BertTokenizer.from_pretrained(source)
    if resume:
        model = BertForSequenceClassification.from_pretrained(resume, attn_impl=opts.attn_impl)
    else:
        torch.manual_seed(opts.seed)  # the new classifier head starts the same on every rank and every rerun
        model = BertForSequenceClassification.from_pretrained(
            opts.model, num_labels=labels.num_labels, id2label=labels.id2label,
            label2id={v: k for k, v in labels.id2label.items()}, problem_type=labels.problem_type,
            attn_impl=opts.attn_impl, ignore_mismatched_sizes=True)
    if d.main:
        print(f"{labels.problem_type}: {labels.num_labels} label(s) {', '.join(labels.names)}; "
              f"{len(train_ex)} training rows, {len(val_ex) if val_ex else 0} validation rows.", file=sys.stderr)

    def tokens(examples: Examples, y: torch.Tensor) -> Encoded:
        return encode(tokenizer, examples, opts.max_length, y, opts.num_workers)

    train_data = tokens(train_ex, train_y)
    val_data = tokens(val_ex, val_y) if val_ex else None

    def save_model(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    train_opts = TrainOptions(
        output_dir=run_dir, epochs=opts.epochs, max_steps=opts.max_steps, batch_size=opts.batch_size,
        grad_accum=opts.grad_accum, lr=opts.lr, weight_decay=opts.weight_decay, warmup_ratio=opts.warmup_ratio,
        max_grad_norm=opts.max_grad_norm, precision=opts.precision, seed=opts.seed, eval_every=opts.eval_every,
        save_every=opts.save_every, keep_checkpoints=opts.keep_checkpoints, log_every=opts.log_every,
        pad_token_id=tokenizer.pad_token_id, problem_type=labels.problem_type, resume=resume,
        allow_resume_mismatch=opts.allow_resume_mismatch, fingerprint=fingerprint(train_ex, labels, opts))
    summary = train(model, train_data, val_data, train_opts, save_model, d, progress=not opts.no_progress)
    if summary.interrupted:
        if d.main:
            print(f"interrupted at step {summary.steps}; continue with: --resume {run_dir}", file=sys.stderr)
        return summary
    if test_ex is not None and summary.best_dir is not None:
        best = BertForSequenceClassification.from_pretrained(summary.best_dir, attn_impl=opts.attn_impl).to(d.device)
        test = evaluate(best, tokens(test_ex, test_y), opts.batch_size, train_opts, d, None)
        if d.main:
            print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items() if not isinstance(v, bool)),
                  file=sys.stderr)
    if d.main:
        plot = plot_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else None
        best = ", ".join(f"{k} {v:.4f}" for k, v in (summary.best_metric or {}).items() if not isinstance(v, bool))
        print(f"done: {summary.steps} steps in {summary.wall_s:.1f} s ({summary.samples_per_s:.1f} samples/s); "
              f"best: {best or 'no validation data'}; model in {summary.best_dir}"
              + (f"; plot in {plot}" if plot else ""), file=sys.stderr)
    return summary


def run_seeds(opts: Options, d: Dist) -> list[Summary]:
    """The same run once per seed, each in its own sub-folder; reports mean ± std of the best metrics."""
    seeds = [int(s) for s in opts.seeds.split(",") if s.strip()]
    base = Path(opts.output_dir) if opts.output_dir else None
    summaries = []
    for seed in seeds:
        out = str(base / f"seed-{seed}") if base else None
        summaries.append(finetune(replace(opts, seed=seed, seeds=None, output_dir=out), d))
    if d.main:
        metrics = [s.best_metric for s in summaries if s.best_metric]
        for key in (metrics[0] if metrics else {}):
            if isinstance(metrics[0][key], bool):
                continue
            values = [m[key] for m in metrics]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{key}: {statistics.mean(values):.4f} ± {spread:.4f} over seeds {opts.seeds}", file=sys.stderr)
        collapsed = [seed for seed, s in zip(seeds, summaries) if s.best_metric and s.best_metric.get("collapsed")]
        if collapsed:
            print(f"warning: the run(s) with seed {', '.join(map(str, collapsed))} collapsed to predicting one "
                  "class.", file=sys.stderr)
    return summaries


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    try:
        d = setup_distributed()
        if not d.main:
            logging.getLogger("minibert").setLevel(logging.ERROR)  # say things once, from rank 0
        if opts.seeds:
            run_seeds(opts, d)
        else:
            finetune(opts, d)
    except MinibertError as e:
        if opts.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: the user chose not to wait for the checkpoint
        print("aborted without saving; the last checkpoint is unchanged.", file=sys.stderr)
        return 130
    finally:
        if torch.distributed.is_initialized():
            # DDP's wrapper sits in a reference cycle, so only the cyclic collector frees it and its hold on the
            # group; left to interpreter exit, gloo's teardown can abort the process (SIGABRT) after a good run
            gc.collect()
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
