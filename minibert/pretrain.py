"""`python -m minibert.pretrain`: masked-language-model pre-training, from scratch or continued from a checkpoint.

    python -m minibert.pretrain --config mini --tokenizer bert-base-uncased --train-file texts.txt   # from scratch
    python -m minibert.pretrain --model FOLDER_OR_HUB_ID --train-file texts.txt.gz                   # continued
    torchrun --nproc_per_node=2 -m minibert.pretrain ...          # DDP: gloo on CPU, nccl on GPUs

A .txt file is one document per line. Documents are tokenised once (cached, see documents.py), packed into
sequences of exactly --max-length tokens and masked afresh each time a batch is drawn (masking.py); the loss is
computed on the masked positions only. The loop, its checkpoints, resume, metrics.jsonl and plot are train.py's, as
for `minibert.finetune`; the output folder is an ordinary checkpoint (BertForMaskedLM) that finetune loads.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from minibert import command, run_folder
from minibert.cli import option, options_parser
from minibert.command import (
    RunFlags,
    exit_status,
    load_options,
    report_done,
    report_interrupted,
    run_command,
    save_options,
    teardown_distributed,
    train_options,
)
from minibert.config import BertConfig
from minibert.devices import Dist, setup_distributed
from minibert.documents import Documents, fingerprint, load_documents, pack, split_documents
from minibert.errors import MinibertError
from minibert.heads import BertForMaskedLM
from minibert.masking import MaskedSequences, Masker
from minibert.tokenizer import BertTokenizer
from minibert.train import Summary, train

logger = logging.getLogger("minibert")

# Google's small BERTs (Turc et al., 2019): (layers, hidden); heads = hidden / 64, feed-forward = 4 * hidden
PRESETS = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512), "base": (12, 768)}


@dataclass
class Options(RunFlags):
    model: str | None = option(None, "Hub id or local folder of a BERT checkpoint to continue pre-training (an MLM "
                                     "head is added if it has none)")
    config: str | None = option(None, "train from scratch: a config.json, or a preset (" + ", ".join(PRESETS)
                                + ": Google's small BERTs)")
    tokenizer: str | None = option(None, "with --config: Hub id or folder of the tokenizer (its vocabulary sets "
                                         "vocab_size)")
    train_file: str | None = option(None, "text: .txt (one document per line), .txt.gz, .jsonl or .parquet")
    validation_file: str | None = option(None, "validation text (same formats); without it --validation-split "
                                               "holds out documents")
    validation_split: float = option(0.01, "fraction of the training documents held out for validation when there "
                                           "is no validation file", at_least=0.0, at_most=0.9)
    text_column: str | None = option(None, "text column of a .jsonl/.parquet file (default: detected among text, "
                                           "sentence, review, ...)")
    max_length: int = option(128, "tokens per packed sequence, [CLS] and [SEP] included", at_least=3)
    mlm_probability: float = option(0.15, "fraction of the tokens masked (BERT: 0.15; MosaicBERT: 0.3)", above=0.0,
                                   at_most=1.0)
    whole_word_masking: bool = option(False, "mask all the WordPieces of a chosen word together")
    # the loop's flags are command.RunFlags'; these defaults suit pre-training
    epochs: int = option(1, "passes over the training data", at_least=1)
    lr: float = option(1e-4, "peak learning rate of AdamW (from scratch, small models take 5e-4 to 1e-3)",
                       above=0.0)
    warmup_ratio: float = option(0.06, "fraction of the steps spent warming the learning rate up from 0",
                                 at_least=0.0, at_most=1.0)


# What --resume RUN may change, and what the optimizer and schedule were built from (see command.load_options)
RESUME_MAY_CHANGE = command.RESUME_MAY_CHANGE
RESUME_SCHEDULE = {*command.RESUME_SCHEDULE, "model", "config", "tokenizer"}


def parse_args(argv: list[str] | None = None) -> Options:
    """The options of this run; with --resume RUN, the flags the run started with, then the ones given again."""
    parser = options_parser(Options, "python -m minibert.pretrain", __doc__)
    opts = Options(**vars(parser.parse_args(argv)))
    if opts.resume and opts.resume != "auto":
        return load_options(Options, opts, parser, argv, RESUME_MAY_CHANGE, RESUME_SCHEDULE)
    if (opts.model is None) == (opts.config is None):
        parser.error("pass --model (continue pre-training a checkpoint) or --config (start from scratch), not both")
    if opts.config is not None and opts.tokenizer is None:
        parser.error("--config needs --tokenizer: a model from scratch still needs a vocabulary")
    if not opts.train_file:
        parser.error("--train-file is required: the text to pre-train on")
    if opts.mlm_probability >= 1:
        parser.error(f"--mlm-probability must be below 1, got {opts.mlm_probability}")
    return opts


# --- model -------------------------------------------------------------------------------------------------------


def config_for(name_or_path: str, vocab_size: int, max_length: int) -> BertConfig:
    """A preset's config (vocabulary from the tokenizer), or a config.json's, checked against the tokenizer."""
    if name_or_path in PRESETS:
        layers, hidden = PRESETS[name_or_path]
        return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=hidden // 64, intermediate_size=4 * hidden,
                          max_position_embeddings=max(512, max_length))
    if not Path(name_or_path).is_file():
        raise MinibertError(f"--config {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a config.json "
                            "file.")
    config = BertConfig.from_json(name_or_path)
    if config.vocab_size < vocab_size:
        raise MinibertError(f"{name_or_path} has vocab_size {config.vocab_size} but the tokenizer has {vocab_size} "
                            "tokens; raise vocab_size or use the matching tokenizer.")
    return config


def build_model(opts: Options, tokenizer: BertTokenizer) -> BertForMaskedLM:
    """From a checkpoint (its MLM head kept, or initialised and tied to the word embeddings when it has none), or
    from a config with transformers' initialisation. Seeded, so every rank and every rerun starts the same."""
    torch.manual_seed(opts.seed)
    if opts.model is not None:
        model = BertForMaskedLM.from_pretrained(opts.model, attn_impl=opts.attn_impl)
        if model.config.vocab_size < len(tokenizer):
            raise MinibertError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                                f"{model.config.vocab_size}; use the checkpoint's own tokenizer.")
    else:
        model = BertForMaskedLM(config_for(opts.config, len(tokenizer), opts.max_length), attn_impl=opts.attn_impl)
    if opts.max_length > model.config.max_position_embeddings:
        raise MinibertError(f"--max-length {opts.max_length} exceeds the model's {model.config.max_position_embeddings}"
                            " positions; lower it.")
    return model.train()


# --- data and evaluation ---------------------------------------------------------------------------------------


def sequences_of(docs: Documents, tokenizer: BertTokenizer, max_length: int) -> np.ndarray:
    return pack(docs, max_length, tokenizer.cls_token_id, tokenizer.sep_token_id)


class MaskedOnly(nn.Module):
    """What the loop trains: it calls `model(**batch).loss`; this runs the BertForMaskedLM with its decoder on the
    masked positions only (`masked_only=True`), the one difference from transformers' call."""

    def __init__(self, model: BertForMaskedLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch, masked_only=True)


@torch.no_grad()
def evaluate_mlm(model: nn.Module, data: MaskedSequences, batch_size: int, seed: int, d: Dist,
                 amp: torch.dtype | None) -> dict[str, float]:
    """MLM loss (per masked token) and masked-token accuracy over the validation sequences, with the same masks at
    every evaluation; each rank runs its share and the sums are reduced. `model` is a `MaskedOnly`."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct predictions, masked tokens
    for b, indices in enumerate(data.eval_batches(batch_size, d.rank, d.world_size)):
        batch = {k: v.to(d.device) for k, v in data.collate(indices, (seed, -1, b)).items()}
        with torch.autocast(d.device.type, dtype=amp, enabled=amp is not None):
            out = model(**batch)
        labels = batch["labels"][batch["labels"] != -100]
        sums += torch.tensor([out.loss.float().item() * len(labels),
                              (out.logits.argmax(-1) == labels).sum().item(), len(labels)], dtype=torch.float64)
    if d.world_size > 1:
        sums = sums.to(d.device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    loss, correct, n = sums.tolist()
    return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1)}


def data_fingerprint(tokenizer: BertTokenizer, opts: Options) -> dict[str, object]:
    """What must be unchanged for a resume to continue the same run (the loop adds batch and world size)."""
    files = [fingerprint(tokenizer, f, opts.text_column) for f in (opts.train_file, opts.validation_file) if f]
    return {"data": hashlib.sha256("/".join(files).encode()).hexdigest()[:16], "max_length": opts.max_length,
            "mlm_probability": opts.mlm_probability, "whole_word_masking": opts.whole_word_masking,
            "validation_split": opts.validation_split}


def run_dir_for(opts: Options) -> Path:
    if opts.output_dir:
        return Path(opts.output_dir)
    start = Path(opts.model).name if opts.model else Path(opts.config).stem
    data = Path(opts.train_file).name.split(".")[0]
    return Path("weights") / f"{start}-mlm-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


# --- one run -----------------------------------------------------------------------------------------------------


def pretrain(opts: Options, d: Dist) -> Summary:
    resume = None
    if opts.resume:
        if opts.resume == "auto" and not opts.output_dir:
            raise MinibertError("--resume auto needs --output-dir, the run folder to look for checkpoints in.")
        resume = run_folder.find_checkpoint(Path(opts.output_dir) if opts.resume == "auto" else Path(opts.resume))
    run_dir = resume.parent if resume else run_dir_for(opts)
    if not resume and d.main:
        run_folder.prepare_new_run(run_dir, opts.overwrite)
    tokenizer = BertTokenizer.from_pretrained(resume or opts.tokenizer or opts.model)
    if resume:
        model = BertForMaskedLM.from_pretrained(resume, attn_impl=opts.attn_impl).train()
    else:
        model = build_model(opts, tokenizer)

    # rank 0 tokenises and fills the cache first; the other ranks then read it
    if d.main:
        train_docs, cached = load_documents(opts.train_file, tokenizer, opts.text_column, opts.num_workers,
                                            not opts.no_progress)
    if d.world_size > 1:
        dist.barrier()
    if not d.main:
        train_docs, cached = load_documents(opts.train_file, tokenizer, opts.text_column, opts.num_workers,
                                            not opts.no_progress)
    if opts.validation_file:
        val_docs = load_documents(opts.validation_file, tokenizer, opts.text_column, opts.num_workers)[0]
    else:
        train_docs, val_docs = split_documents(train_docs, opts.validation_split, opts.seed)
    masker = Masker.for_tokenizer(tokenizer, opts.mlm_probability, opts.whole_word_masking)
    train_data = MaskedSequences(sequences_of(train_docs, tokenizer, opts.max_length), masker)
    val_data = None
    if val_docs is not None and len(val_docs.tokens) >= opts.max_length - 2:
        val_seqs = sequences_of(val_docs, tokenizer, opts.max_length)
        val_data = MaskedSequences(val_seqs[: opts.max_eval_samples or None], masker)
    if d.main:
        print(f"{len(train_docs)} documents ({'from the cache' if cached else 'tokenised'}) -> {len(train_data)} "
              f"sequences of {opts.max_length} tokens ({train_data.tokens:,} tokens); validation: "
              f"{len(val_data) if val_data else 0} sequences; {sum(p.numel() for p in model.parameters()):,} "
              "parameters.", file=sys.stderr)

    def save_model(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    train_opts = train_options(opts, output_dir=run_dir, resume=resume, best_metric="loss", greater_is_better=False,
                               fingerprint=data_fingerprint(tokenizer, opts))
    evaluate = None
    if val_data is not None:
        def evaluate(m: nn.Module, dd: Dist, amp: torch.dtype | None) -> dict[str, float]:
            return evaluate_mlm(m, val_data, opts.batch_size, opts.seed, dd, amp)
    if not resume and d.main:
        save_options(run_dir, opts)  # what --resume RUN alone continues with
    summary = train(MaskedOnly(model), train_data, evaluate, train_opts, save_model, d,
                    progress=not opts.no_progress)
    if summary.interrupted:
        if d.main:
            report_interrupted(summary, run_dir, "pretrain")
        return summary
    if d.main:
        report_done(summary, run_dir, "sequences", "masked-token accuracy")
    return summary


def run(opts: Options) -> int:
    d = setup_distributed()
    try:
        if not d.main:
            logging.getLogger("minibert").setLevel(logging.ERROR)  # say things once, from rank 0
        return exit_status(pretrain(opts, d))
    finally:
        teardown_distributed()


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), run, argv)


if __name__ == "__main__":
    sys.exit(main())
