"""`python -m minibert.finetune`: fine-tune a BERT checkpoint for text classification or regression, or for
token classification (NER: `--task token-classification`, wired in token_finetune.py).

    python -m minibert.finetune --model FOLDER --train-file train.csv --validation-file dev.csv
    python -m minibert.finetune --resume weights/RUN            # continue a run, with the flags it started with
    torchrun --nproc_per_node=2 -m minibert.finetune ...          # DDP: gloo on CPU, nccl on GPUs

Exit status: 0 when the run finished; 1 for a mistake in the flags, files or data (one sentence on stderr);
2 for a flag argparse cannot read; 130 (Ctrl-C) or 143 (SIGTERM) when the run was interrupted after saving a
checkpoint that --resume continues.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from minibert import command, run_folder
from minibert.cli import int_list, option, options_parser
from minibert.command import (
    RunFlags,
    check_vocabulary,
    exit_status,
    fit_max_length,
    load_options,
    metrics_line,
    report_done,
    report_interrupted,
    run_command,
    save_options,
    teardown_distributed,
    train_options,
)
from minibert.data import Examples, hub_dataset_files, read_examples, read_hub_split, split_off
from minibert.devices import Dist, setup_distributed
from minibert.errors import MinibertError
from minibert.heads import BertForSequenceClassification
from minibert.hub import local_folder_or_repo_id
from minibert.labels import PROBLEM_TYPES, Labels, name_labels, parse_label_names
from minibert.long_text import SUN_ET_AL_HEAD
from minibert.long_text_options import LONG_TEXT_CHOICES, POOLS, resolve_long_text, write_record
from minibert.metrics import best_key, evaluate_classifier
from minibert.ranking import BINARY, TOP_K, binary_targets, query_groups
from minibert.st_files import write_cross_encoder_files
from minibert.token_finetune import TASKS, detect_task, finetune_tokens
from minibert.tokenizer import BertTokenizer
from minibert.train import Summary, train
from minibert.training_data import BATCH_ORDERS, Encoded, batch_order_fingerprint, encode

logger = logging.getLogger("minibert")


@dataclass
class Options(RunFlags):
    model: str = option("bert-base-uncased", "Hub id or local folder of the BERT checkpoint to start from")
    train_file: str | None = option(None, "training data: .csv, .tsv, .jsonl or .parquet (.gz accepted for the text "
                                          "formats); for token classification also .conll, .iob, .txt")
    validation_file: str | None = option(None, "validation data (same formats); without it --validation-split "
                                               "holds out part of train")
    test_file: str | None = option(None, "test data, evaluated once with the best model at the end")
    dataset: str = option("stanfordnlp/imdb", "Hub dataset id whose parquet files are read when no --train-file "
                                              "is given")
    text_column: str | None = option(None, "text column (default: detected among text, sentence, review, ...)")
    text_pair_column: str | None = option(None, "second text column for sentence pairs (default: sentence2 etc. "
                                                "when the text is sentence1)")
    label_column: str | None = option(None, "label column (default: detected among label, labels, sentiment, ...)")
    validation_split: float = option(0.1, "fraction of the training rows held out for validation when there is "
                                          "no validation data", at_least=0.0, at_most=0.9)
    split_seed: int | None = option(None, "seed that picks the rows --validation-split holds out (default: --seed; "
                                          "fix it to compare seeds on one validation set)")
    quoted_tsv: bool = option(False, "process quotes in TSV files (off by default: SST-2-style texts contain bare "
                                     "quotes)")
    problem_type: str = option("auto", "auto (from the labels: ints/strings, lists, floats), or force one; binary: a "
                                       "reranker, one logit trained with binary cross-entropy on 0/1 labels of "
                                       "(query, passage) rows, saved as a sentence-transformers CrossEncoder",
                               choices=("auto", *PROBLEM_TYPES, "binary"))
    max_length: int = option(128, "tokens per sequence, specials included (at most the model's "
                                  "max_position_embeddings); longer texts: see --long-text", at_least=2)
    long_text: str = option("auto", "texts longer than --max-length: keep the first tokens (truncate), the first "
                                    "--head-tokens and the last ones (head-tail), or cut them into windows "
                                    "overlapping by --stride, each labelled with its document's label, whose "
                                    "logits are pooled per document in evaluation (chunks); auto: chunks for single "
                                    "texts with one label each (best on IMDB), truncate for pairs, regression and "
                                    "multi-label", choices=LONG_TEXT_CHOICES)
    head_tokens: int = option(SUN_ET_AL_HEAD, "head-tail: tokens kept from the start (the rest from the end)",
                              at_least=0)
    stride: int | None = option(None, "chunks: tokens each window shares with the previous one (default: a quarter "
                                      "of --max-length, 128 at 512)", at_least=0)
    pool: str = option("mean", "chunks: how a document's window logits are pooled", choices=POOLS)
    windows: str = option("one", "chunks: train on one window per document, drawn at random each epoch (one, best "
                                 "on IMDB), or on every window of every document each epoch (all)",
                          choices=("one", "all"))
    batch_order: str = option("grouped", "training batches. grouped: sentences of similar length batched together, "
                                         "little padding (fastest); random: batches of random sentences, as "
                                         "transformers' Trainer draws them", choices=tuple(BATCH_ORDERS))
    seeds: list[int] | None = option(None, "comma-separated seeds: repeat the run for each and report mean ± std",
                                     parse=int_list)
    max_train_samples: int = option(0, "use only the first N training rows (0: all)", at_least=0)
    task: str = option("auto", "sequence-classification (a label per text) or token-classification (a tag per word, "
                               "NER); auto: token-classification for CoNLL-style files (.conll, .iob, .txt) and rows "
                               "holding lists of words, else sequence-classification", choices=TASKS)
    tag_column: int = option(-1, "token-classification, CoNLL files: the column holding the tag (0 is the word; "
                                 "negative counts from the end)")
    label_names: str | None = option(None, "names of integer labels, id 0 first, separated by commas (SST-2: "
                                           "negative,positive; tags: O,B-PER,I-PER,...); the model, predict and "
                                           "the server then answer with the names")
    label_all_tokens: bool = option(False, "token-classification: every sub-token of a word carries its tag (B- "
                                           "turned into I-), not only the first")


# What --resume RUN may change (see command.load_options): flags that do not change which run this is, and flags
# the optimizer and schedule were built from (a new --lr would be ignored by the restored optimizer, a new
# --max-steps would make the learning rate jump). Any other flag (data, batches) needs --allow-resume-mismatch.
RESUME_MAY_CHANGE = {*command.RESUME_MAY_CHANGE, "test_file"}
RESUME_SCHEDULE = {*command.RESUME_SCHEDULE, "model", "seeds"}
# Flags newer than some run folders' run_options.json, with the values those runs used.
ADDED_LATER = {"long_text": "truncate", "stride": 128, "windows": "all", "task": "sequence-classification",
               "tag_column": -1, "label_names": None, "label_all_tokens": False, "batch_order": "grouped"}


def parse_args(argv: list[str] | None = None) -> Options:
    """The options of this run; with --resume RUN, the flags the run started with, then the ones given again."""
    parser = options_parser(Options, "python -m minibert.finetune", __doc__)
    opts = Options(**vars(parser.parse_args(argv)))
    if opts.resume and opts.resume != "auto":
        opts = load_options(Options, opts, parser, argv, RESUME_MAY_CHANGE, RESUME_SCHEDULE, ADDED_LATER)
    return opts


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
        split_seed = opts.seed if opts.split_seed is None else opts.split_seed
        train, val = split_off(train, opts.validation_split, split_seed)
        if main:
            print(f"validation: {len(val)} rows held out of the training data (--validation-split "
                  f"{opts.validation_split}, chosen by seed {split_seed}).", file=sys.stderr)
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
    long_text: list[object] = [opts.long_text, opts.head_tokens, opts.stride]
    if opts.long_text == "chunks" and opts.windows != "all":  # runs saved before --windows keep their fingerprint
        long_text.append(opts.windows)
    return {"data": digest.hexdigest()[:16], "max_length": opts.max_length, "labels": labels.names,
            "long_text": long_text, **batch_order_fingerprint(opts.batch_order)}


# --- one run -----------------------------------------------------------------------------------------------------


def run_dir_for(opts: Options, data_name: str) -> Path:
    if opts.output_dir:
        return Path(opts.output_dir)
    model = Path(opts.model).name or "model"
    return Path("weights") / f"{model}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_paths(opts: Options) -> None:
    """What can be checked before any data is read or model loaded: files to read, the folder to write."""
    for flag, path in (("--train-file", opts.train_file), ("--validation-file", opts.validation_file),
                       ("--test-file", opts.test_file)):
        if path is not None:
            run_folder.check_readable_file(Path(path), flag)
    if opts.output_dir:
        run_folder.check_writable_folder(Path(opts.output_dir), "--output-dir")
    if not opts.resume:
        local_folder_or_repo_id(opts.model, "config.json and the weights")  # a bad local path, before the data
    # checked as for single-label single texts, where auto picks chunks and the stride matters
    resolve_long_text(opts.long_text, opts.head_tokens, opts.stride, opts.max_length, False,
                      "single_label_classification")
    if opts.resume == "auto" and not opts.output_dir:
        raise MinibertError("--resume auto needs --output-dir, the run folder to look for checkpoints in.")


def finetune(opts: Options, d: Dist) -> Summary:
    check_paths(opts)
    resume = None
    if opts.resume:
        resume = run_folder.find_checkpoint(Path(opts.output_dir) if opts.resume == "auto" else Path(opts.resume))
        run_folder.load_state(resume)  # refuse a state file that is unsafe or corrupt before any other work
    task, why = detect_task(opts.task, opts.train_file, opts.dataset)
    if d.main:
        print(f"task: {task} ({why}).", file=sys.stderr)
    if task == "token-classification":
        return finetune_tokens(opts, d, resume, run_dir_for)
    source = str(resume) if resume else opts.model
    train_ex, val_ex, test_ex, data_name = load_splits(opts, d.main)
    opts = replace(opts, max_length=fit_max_length(source, opts.max_length, d.main))
    problem_type = None if opts.problem_type == "auto" else opts.problem_type
    names = parse_label_names(opts.label_names) if opts.label_names else None
    if names is not None:
        if problem_type not in (None, "single_label_classification"):
            raise MinibertError(f"--label-names names the classes of single-label data; it does not apply to "
                                f"--problem-type {problem_type}.")
        train_ex, val_ex, test_ex = (name_labels(ex, names) if ex else ex for ex in (train_ex, val_ex, test_ex))
    binary = problem_type == "binary"
    labels = BINARY if binary else Labels.from_training(train_ex.labels, problem_type, names)
    targets = binary_targets if binary else labels.encode
    train_y = targets(train_ex, "training")
    val_y = targets(val_ex, "validation") if val_ex else None
    test_y = targets(test_ex, "test") if test_ex else None
    run_dir = resume.parent if resume else run_dir_for(opts, data_name)
    if not resume and d.main:
        run_folder.prepare_new_run(run_dir, opts.overwrite)
    tokenizer = BertTokenizer.from_pretrained(source)
    if resume:
        model = BertForSequenceClassification.from_pretrained(resume, attn_impl=opts.attn_impl)
    else:
        torch.manual_seed(opts.seed)  # the new classifier head starts the same on every rank and every rerun
        model = BertForSequenceClassification.from_pretrained(
            opts.model, num_labels=labels.num_labels, id2label=labels.id2label,
            label2id={v: k for k, v in labels.id2label.items()}, problem_type=labels.problem_type,
            attn_impl=opts.attn_impl, ignore_mismatched_sizes=True)
    check_vocabulary(tokenizer, model, source)
    if d.main:
        print(f"{labels.problem_type}: {labels.num_labels} label(s) {', '.join(labels.names)}; "
              f"{len(train_ex)} training rows, {len(val_ex) if val_ex else 0} validation rows.", file=sys.stderr)
    if opts.long_text == "chunks" and labels.problem_type != "single_label_classification" and d.main:
        logger.warning("--long-text chunks pools window logits per document; with %s labels it averages their "
                       "scores, which is rarely what you want.", labels.problem_type)
    long_text = resolve_long_text(opts.long_text, opts.head_tokens, opts.stride, opts.max_length,
                                  train_ex.pairs is not None, labels.problem_type, opts.windows)
    opts = replace(opts, long_text=long_text.how, stride=long_text.stride)

    def tokens(examples: Examples, y: torch.Tensor, what: str) -> Encoded:
        return encode(tokenizer, examples, opts.max_length, y, opts.num_workers, not opts.no_progress, what,
                      long_text)

    train_data = replace(tokens(train_ex, train_y, "tokenizing training data"), batch_order=opts.batch_order)
    if train_data.longer and d.main:  # said only when some text is longer than --max-length
        what = (f"{len(train_data)} windows (stride {opts.stride}); each epoch trains on "
                f"{'all of them' if opts.windows == 'all' else 'one per document'}" if opts.long_text == "chunks" else
                "cut to that length" + (f" (their first {opts.head_tokens} tokens and their end)"
                                        if opts.long_text == "head-tail" else ""))
        print(f"--long-text {opts.long_text}: {train_data.longer} of {len(train_ex)} training texts are longer than "
              f"{opts.max_length} tokens: {what}.", file=sys.stderr)
    evaluate = None
    groups = query_groups(val_ex, val_y) if binary and val_ex else None  # a reranker's validation queries
    if val_ex:
        evaluate = partial(evaluate_classifier, data=tokens(val_ex, val_y, "tokenizing validation data"),
                           batch_size=opts.batch_size, problem_type=labels.problem_type, pool=opts.pool, groups=groups,
                           progress=not opts.no_progress)

    def save_model(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_record(folder, long_text, opts.max_length, opts.pool)  # predict reads long texts the same way
        if binary:
            write_cross_encoder_files(folder, opts.max_length)


    metric, sign = (f"ndcg@{TOP_K}", 1.0) if groups else best_key(labels.problem_type)
    train_opts = train_options(opts, output_dir=run_dir, resume=resume, best_metric=metric,
                               greater_is_better=sign > 0, fingerprint=fingerprint(train_ex, labels, opts))
    if not resume and d.main:
        save_options(run_dir, opts)  # what --resume RUN alone continues with
    summary = train(model, train_data, evaluate, train_opts, save_model, d, progress=not opts.no_progress)
    if summary.interrupted:
        if d.main:
            report_interrupted(summary, run_dir, "finetune")
        return summary
    if test_ex is not None and summary.best_dir is not None:
        best = BertForSequenceClassification.from_pretrained(summary.best_dir, attn_impl=opts.attn_impl).to(d.device)
        amp = torch.bfloat16 if summary.precision == "bf16 autocast" else None
        test = evaluate_classifier(best, d, amp, data=tokens(test_ex, test_y, "tokenizing test data"),
                                   batch_size=opts.batch_size, problem_type=labels.problem_type, pool=opts.pool,
                                   groups=query_groups(test_ex, test_y) if binary else None,
                                   progress=not opts.no_progress)
        if d.main:
            print(f"test ({summary.precision}, as validation): {metrics_line(test)}", file=sys.stderr)
    if d.main:
        report_done(summary, run_dir, "samples")
    return summary


def run_seeds(opts: Options, d: Dist) -> list[Summary]:
    """The same run once per seed, each in its own sub-folder; reports mean ± std of the best metrics."""
    base = Path(opts.output_dir) if opts.output_dir else None
    summaries = []
    for seed in opts.seeds:
        out = str(base / f"seed-{seed}") if base else None
        summaries.append(finetune(replace(opts, seed=seed, seeds=None, output_dir=out), d))
        if summaries[-1].interrupted:
            return summaries
    if d.main:
        shown = ",".join(map(str, opts.seeds))
        metrics = [s.best_metric for s in summaries if s.best_metric]
        for key in (metrics[0] if metrics else {}):
            if isinstance(metrics[0][key], bool):
                continue
            values = [m[key] for m in metrics]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{key}: {statistics.mean(values):.4f} ± {spread:.4f} over seeds {shown}", file=sys.stderr)
        collapsed = [seed for seed, s in zip(opts.seeds, summaries) if s.best_metric and s.best_metric.get("collapsed")]
        if collapsed:
            print(f"warning: the run(s) with seed {', '.join(map(str, collapsed))} collapsed to predicting one "
                  "class.", file=sys.stderr)
    return summaries


def run(opts: Options) -> int:
    d = setup_distributed()
    try:
        if not d.main:
            logging.getLogger("minibert").setLevel(logging.ERROR)  # say things once, from rank 0
        if opts.seeds and opts.resume:
            raise MinibertError("--seeds and --resume do not go together; resume each seed's run folder "
                                "(OUTPUT_DIR/seed-N) on its own.")
        summaries = run_seeds(opts, d) if opts.seeds else [finetune(opts, d)]
        return exit_status(summaries[-1])
    finally:
        teardown_distributed()


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), run, argv)


if __name__ == "__main__":
    sys.exit(main())
