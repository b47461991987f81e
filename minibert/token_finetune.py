"""`python -m minibert.finetune --task token-classification`: the wiring for taggers (NER), beside finetune.py's.

The task is chosen from the data where that is unambiguous: CoNLL-style files (`.conll`, `.iob`, `.txt`) and rows
holding lists of words are token classification; anything else is sequence classification. The saved model is a
`BertForTokenClassification` folder with `id2label`, which transformers loads as it is.
"""

from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from minibert import run_folder
from minibert.command import (
    check_vocabulary,
    fit_max_length,
    metrics_line,
    report_done,
    report_interrupted,
    save_options,
    train_options,
)
from minibert.conll import TaggedSentences, has_word_lists, is_conll, read_tagged, read_tagged_rows
from minibert.data import hub_dataset_files
from minibert.devices import Dist
from minibert.errors import MinibertError
from minibert.heads import BertForTokenClassification
from minibert.ner_metrics import evaluate_tagger, is_iob
from minibert.token_labels import check_known_tags, encode_words
from minibert.tokenizer import BertTokenizer
from minibert.train import Summary, train
from minibert.training_data import batch_order_fingerprint

TASKS = ("auto", "sequence-classification", "token-classification")


def detect_task(task: str, train_file: str | None, dataset: str) -> tuple[str, str]:
    """(the task, why): as asked, or from the training data's layout."""
    if task != "auto":
        return task, "--task"
    if train_file:
        if is_conll(train_file):
            return "token-classification", f"{Path(train_file).name} is a CoNLL-style file"
        if Path(train_file.lower().removesuffix(".gz")).suffix in (".jsonl", ".json", ".parquet") \
                and has_word_lists(train_file):
            return "token-classification", f"the rows of {Path(train_file).name} hold lists of words"
        return "sequence-classification", f"the rows of {Path(train_file).name} hold texts"
    try:
        files = hub_dataset_files(dataset)
    except MinibertError:  # the text-classification path says why, with the flags to pass instead
        return "sequence-classification", f"the default, as {dataset} could not be read"
    if has_word_lists(files["train"][0]):
        return "token-classification", f"the rows of {dataset} hold lists of words"
    return "sequence-classification", f"the rows of {dataset} hold texts"


def label_names_flag(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",")] if value else None


def read_split(opts: Any, path: str) -> TaggedSentences:
    return read_tagged(path, opts.tag_column, opts.text_column, opts.label_column, label_names_flag(opts.label_names))


def hub_split(opts: Any, files: list[Path]) -> TaggedSentences:
    parts = [read_tagged_rows(f, opts.text_column, opts.label_column, label_names_flag(opts.label_names))
             for f in files]
    merged = TaggedSentences([], [], [])
    for part in parts:
        merged.words += part.words
        merged.tags += part.tags
        merged.sources += part.sources
    return merged


def load_splits(opts: Any, main: bool
                ) -> tuple[TaggedSentences, TaggedSentences | None, TaggedSentences | None, str]:
    """(train, validation, test sentences, a short name of the data)."""
    if opts.train_file:
        train_s = read_split(opts, opts.train_file)
        val = read_split(opts, opts.validation_file) if opts.validation_file else None
        test = read_split(opts, opts.test_file) if opts.test_file else None
        name = Path(opts.train_file).name.split(".")[0]
    else:
        files = hub_dataset_files(opts.dataset)
        train_s = hub_split(opts, files["train"])
        val = hub_split(opts, files["validation"]) if "validation" in files else None
        test = hub_split(opts, files["test"]) if "test" in files else None
        name = opts.dataset.split("/")[-1]
    if opts.max_train_samples:
        train_s = train_s.select(range(min(opts.max_train_samples, len(train_s))))
    if val is None and opts.validation_split > 0:
        split_seed = opts.seed if opts.split_seed is None else opts.split_seed
        order = list(range(len(train_s)))
        random.Random(split_seed).shuffle(order)  # the rows data.split_off holds out for text classification
        n = max(1, round(len(order) * opts.validation_split))
        if n >= len(order):
            raise MinibertError(f"--validation-split {opts.validation_split} leaves no training data out of "
                                f"{len(order)} sentences; use a smaller fraction or pass --validation-file.")
        train_s, val = train_s.select(sorted(order[n:])), train_s.select(sorted(order[:n]))
        if main:
            print(f"validation: {len(val)} sentences held out of the training data (--validation-split "
                  f"{opts.validation_split}, chosen by seed {split_seed}).", file=sys.stderr)
    if opts.max_eval_samples:
        val = val.select(range(min(opts.max_eval_samples, len(val)))) if val else None
        test = test.select(range(min(opts.max_eval_samples, len(test)))) if test else None
    return train_s, val, test, name


def tag_names(train_s: TaggedSentences, given: list[str] | None) -> list[str]:
    """The label of each id: --label-names in their order, else the training tags sorted (as run_ner.py does)."""
    return given if given else sorted({tag for tags in train_s.tags or [] for tag in tags})


def fingerprint(train_s: TaggedSentences, names: list[str], opts: Any) -> dict[str, object]:
    digest = hashlib.sha256()
    for words, tags in zip(train_s.words, train_s.tags or []):
        digest.update(repr((words, tags)).encode())
    return {"data": digest.hexdigest()[:16], "max_length": opts.max_length, "labels": names, "stride": opts.stride,
            "label_all_tokens": opts.label_all_tokens, **batch_order_fingerprint(opts.batch_order)}


def finetune_tokens(opts: Any, d: Dist, resume: Path | None, run_dir_for: Any) -> Summary:
    """One fine-tuning run of a token classifier (`opts`: finetune.Options; `resume`: the checkpoint, or None)."""
    source = str(resume) if resume else opts.model
    train_s, val_s, test_s, data_name = load_splits(opts, d.main)
    max_length = fit_max_length(source, opts.max_length, d.main)
    opts = replace(opts, max_length=max_length, stride=max_length // 4 if opts.stride is None else opts.stride)
    names = tag_names(train_s, label_names_flag(opts.label_names))
    for sentences, what in ((train_s, "training"), (val_s, "validation"), (test_s, "test")):
        if sentences is not None:  # before the run folder is made: a mistake in the data leaves nothing behind
            check_known_tags(sentences, {name: i for i, name in enumerate(names)}, what)
    run_dir = resume.parent if resume else run_dir_for(opts, data_name)
    if not resume and d.main:
        run_folder.prepare_new_run(run_dir, opts.overwrite)
    tokenizer = BertTokenizer.from_pretrained(source)
    if resume:
        model = BertForTokenClassification.from_pretrained(resume, attn_impl=opts.attn_impl)
    else:
        torch.manual_seed(opts.seed)  # the new head starts the same on every rank and every rerun
        model = BertForTokenClassification.from_pretrained(
            opts.model, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)}, attn_impl=opts.attn_impl,
            ignore_mismatched_sizes=True)
    check_vocabulary(tokenizer, model, source)

    def windows(sentences: TaggedSentences, what: str) -> Any:
        return encode_words(tokenizer, sentences, opts.max_length, opts.stride, names, opts.label_all_tokens, what,
                            not opts.no_progress)

    train_data = replace(windows(train_s, "training"), batch_order=opts.batch_order)
    if d.main:
        n_words = sum(map(len, train_s.words))
        print(f"token-classification: {len(names)} tags {', '.join(names)}; {len(train_s)} training sentences "
              f"({n_words} words, {len(train_data)} windows of at most {opts.max_length} tokens, stride "
              f"{opts.stride}), {len(val_s) if val_s else 0} validation sentences.", file=sys.stderr)
    evaluate = None
    if val_s:
        evaluate = partial(evaluate_tagger, data=windows(val_s, "validation"), gold=val_s.tags, names=names,
                           batch_size=opts.batch_size)

    def save_model(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    metric = "f1" if is_iob(names) else "accuracy"  # entity F1 picks best/; tags that are no entities: accuracy
    train_opts = train_options(opts, output_dir=run_dir, resume=resume, best_metric=metric, greater_is_better=True,
                               fingerprint=fingerprint(train_s, names, opts))
    if not resume and d.main:
        save_options(run_dir, opts)
    summary = train(model, train_data, evaluate, train_opts, save_model, d, progress=not opts.no_progress)
    if summary.interrupted:
        if d.main:
            report_interrupted(summary, run_dir, "finetune")
        return summary
    if test_s is not None and summary.best_dir is not None:
        best = BertForTokenClassification.from_pretrained(summary.best_dir, attn_impl=opts.attn_impl).to(d.device)
        amp = torch.bfloat16 if summary.precision == "bf16 autocast" else None
        test = evaluate_tagger(best, d, amp, data=windows(test_s, "test"), gold=test_s.tags, names=names,
                               batch_size=opts.batch_size)
        if d.main:
            print(f"test ({summary.precision}, as validation): {metrics_line(test)}", file=sys.stderr)
    if d.main:
        report_done(summary, run_dir, "windows")
    return summary
