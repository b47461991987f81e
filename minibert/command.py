"""What every command line shares: errors as one sentence and exit statuses; the training loop's flags (declared
once for finetune and pretrain), the run options kept in a run folder for `--resume RUN` alone; `--max-length`
fitted to the model; the vocabulary check; leaving the process group.

Exit statuses: 0 done; 1 a user's mistake (a `MinibertError`, printed alone as `error: ...`); 2 a flag argparse
cannot read; 130 / 143 interrupted by SIGINT / SIGTERM (after saving what can be resumed).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from minibert import run_folder
from minibert.attention import ATTN_IMPLS
from minibert.checkpoint_files import resolve_checkpoint
from minibert.cli import given_flags, option
from minibert.config import BertConfig
from minibert.devices import PRECISIONS
from minibert.errors import MinibertError
from minibert.files import atomic_write_text
from minibert.plot import plot_metrics
from minibert.train import TrainOptions

logger = logging.getLogger("minibert")

Opts = TypeVar("Opts")
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@dataclass
class RunFlags:
    """The training loop's flags, declared once for `finetune` and `pretrain` (same names, same meaning; a command
    may redeclare a field to change its default)."""

    batch_size: int = option(32, "examples (sequences) per batch and per process", at_least=1)
    grad_accum: int = option(1, "batches accumulated per optimizer step", at_least=1)
    epochs: int = option(3, "passes over the training data", at_least=1)
    max_steps: int = option(0, "stop after this many optimizer steps (0: run all --epochs)", at_least=0)
    lr: float = option(2e-5, "peak learning rate of AdamW", above=0.0)
    weight_decay: float = option(0.01, "AdamW weight decay (never applied to biases and LayerNorm)", at_least=0.0)
    warmup_ratio: float = option(0.1, "fraction of the steps spent warming the learning rate up from 0",
                                 at_least=0.0, at_most=1.0)
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)", at_least=0.0)
    precision: str = option("auto", "bf16 autocast, fp32, or auto (bf16 where the GPU or CPU computes it natively, "
                                    "else fp32)", choices=PRECISIONS)
    attn_impl: str = option("auto", "attention kernel", choices=ATTN_IMPLS)
    seed: int = option(42, "random seed (data order, dropout, initialisation of new weights, masks)")
    max_eval_samples: int = option(0, "use only the first N validation (and test) examples (0: all)", at_least=0)
    eval_every: int = option(0, "also evaluate (and checkpoint) every N steps (0: once per epoch)", at_least=0)
    save_every: int = option(0, "also checkpoint every N steps (0: at evaluations only)", at_least=0)
    keep_checkpoints: int = option(1, "complete resumable checkpoints kept in the run folder besides best/ (0: all)",
                                   at_least=0)
    log_every: int = option(10, "write the training loss to metrics.jsonl every N steps", at_least=1)
    output_dir: str | None = option(None, "run folder (default: a new folder under weights/)")
    overwrite: bool = option(False, "replace the earlier run in a non-empty --output-dir")
    resume: str | None = option(None, "continue a run: its run folder (the flags it started with are reused), a "
                                      "checkpoint folder, or auto (the newest in --output-dir)")
    allow_resume_mismatch: bool = option(False, "resume even if data, batch size or world size differ (the result "
                                                "is then not exact)")
    num_workers: int = option(1, "processes used to tokenize", at_least=1)
    no_progress: bool = option(False, "no progress bar")
    debug: bool = option(False, "show the full traceback of errors")


# What --resume RUN may change (see load_options): flags that do not change which run this is; and the flags the
# optimizer and schedule were built from (a new --lr would be ignored by the restored optimizer, a new --max-steps
# would make the learning rate jump), which it may not. A command adds its own to each.
RESUME_MAY_CHANGE = {"max_grad_norm", "precision", "attn_impl", "eval_every", "save_every", "keep_checkpoints",
                     "log_every", "num_workers", "no_progress", "debug", "allow_resume_mismatch"}
RESUME_SCHEDULE = {"lr", "weight_decay", "warmup_ratio", "epochs", "max_steps", "seed"}


def train_options(flags: RunFlags, **run: Any) -> TrainOptions:
    """The loop's options: every flag the loop shares by name, copied; `run` gives the rest (output_dir, resume,
    best_metric, greater_is_better, fingerprint)."""
    shared = {f.name for f in dataclasses.fields(TrainOptions)} & {f.name for f in dataclasses.fields(RunFlags)}
    return TrainOptions(**{name: getattr(flags, name) for name in shared - set(run)}, **run)


def teardown_distributed() -> None:
    """Leave the process group, if any. DDP's wrapper sits in a reference cycle, so only the cyclic collector frees
    it and its hold on the group; left to interpreter exit, gloo's teardown can abort the process (SIGABRT) after
    a good run."""
    if torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()


def run_command(parse: Callable[[], Opts], run: Callable[[Opts], int], argv: Sequence[str] | None) -> int:
    """Parse, run, and turn a user's mistake into one line on stderr and status 1 (`--debug`: the traceback)."""
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return run(parse())
    except MinibertError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: the user chose not to wait for the checkpoint
        print("aborted without saving; the last checkpoint is unchanged.", file=sys.stderr)
        return 130


def metrics_line(metrics: Mapping[str, Any]) -> str:
    """`name value` pairs for the lines that report metrics (flags such as `collapsed` are said apart)."""
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not isinstance(v, bool))


def report_interrupted(summary: Any, run_dir: Path, command: str) -> None:
    """The last line of a run stopped by a signal: where it stopped and the command that continues it."""
    print(f"interrupted by {summary.stop_signal} at step {summary.steps}, checkpoint saved; continue with: "
          f"python -m minibert.{command} --resume {run_dir}", file=sys.stderr)


def report_done(summary: Any, run_dir: Path, unit: str, accuracy: str = "accuracy") -> None:
    """The last line of a finished run: steps, speed in `unit`/s, the best metrics, where the model and the plot
    are (the plot drawn now; `accuracy` names its accuracy line)."""
    plot = plot_metrics(run_dir, accuracy) if (run_dir / run_folder.METRICS_FILE).is_file() else None
    best = metrics_line(summary.best_metric or {})
    print(f"done: {summary.steps} steps in {summary.wall_s:.1f} s ({summary.samples_per_s:.1f} {unit}/s, "
          f"{summary.precision}); best: {best or 'no validation data'}; model in {summary.best_dir}"
          + (f"; plot in {plot}" if plot else ""), file=sys.stderr)


def exit_status(summary: Any) -> int:
    """0 for a finished run, 130 / 143 for one stopped by SIGINT / SIGTERM after saving its checkpoint."""
    return EXIT_CODES.get(summary.stop_signal, 130) if summary.interrupted else 0


def save_options(run_dir: Path, opts: Any) -> None:
    """The options a run started with, so that `--resume RUN` alone continues it; a run on local files names no Hub
    dataset (the `--dataset` default would say it read one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in dataclasses.asdict(opts).items() if k not in ("resume", "overwrite")}
    if values.get("train_file") and "dataset" in values:
        values["dataset"] = None
    atomic_write_text(run_dir / run_folder.OPTIONS_FILE, json.dumps(values, indent=2) + "\n")


def load_options(kind: type[Opts], opts: Opts, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                 may_change: Collection[str], schedule: Collection[str],
                 added_later: Mapping[str, Any] | None = None) -> Opts:
    """`--resume RUN`: the options RUN started with, then the flags given again with other values: a flag in
    `may_change` is applied with a warning; one in `schedule` (the optimizer and learning-rate schedule were built
    from it, so a new value would be half-applied) is refused with the reason; any other (data, batches) is refused
    unless --allow-resume-mismatch, which applies it with a warning. A flag in `added_later` that RUN's file lacks
    (it predates the flag) takes the value given there, what such runs did, not today's default."""
    resume = Path(opts.resume)
    run_dir = resume.parent if (resume / run_folder.STATE_FILE).is_file() else resume
    stored_file = run_dir / run_folder.OPTIONS_FILE
    if not stored_file.is_file():
        if not run_dir.is_dir():
            raise MinibertError(f"--resume {resume} does not exist; pass the run folder to continue.")
        return opts  # a run folder from before run_options.json: every flag comes from the command line
    try:
        stored = json.loads(stored_file.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(kind)}
        merged = kind(**{**(added_later or {}), **{k: v for k, v in stored.items() if k in known}})
    except (ValueError, TypeError, AttributeError, OSError) as e:
        raise MinibertError(f"{stored_file} cannot be read ({e}); pass every flag of the run again with --resume.") \
            from None
    changes = {}
    for name in sorted(given_flags(parser, argv) - {"resume"}):
        new, old = getattr(opts, name), getattr(merged, name)
        flag = "--" + name.replace("_", "-")
        if name == "output_dir":
            if Path(new).resolve() != run_dir.resolve():
                raise MinibertError(f"--output-dir {new} is not the run folder being resumed ({run_dir}); leave "
                                    "--output-dir out to continue the run where it is.")
            continue
        if new == old:
            continue
        if name in schedule:
            raise MinibertError(f"{flag} {new} differs from the run's {old}, and the optimizer and learning-rate "
                                "schedule were built from it when the run started; resume with the same value, or "
                                "start a new run.")
        if name not in may_change and not opts.allow_resume_mismatch:
            raise MinibertError(f"{flag} {new} differs from the run's {old}, so the resumed run would not continue "
                                "the same one; resume with the same value, or pass --allow-resume-mismatch.")
        logger.warning("%s changed from %s to %s for the rest of this run.", flag, old, new)
        changes[name] = new
    return dataclasses.replace(merged, **changes, resume=opts.resume, output_dir=str(run_dir))


def fit_max_length(source: str | Path, max_length: int, say: bool) -> int:
    """`--max-length`, capped at the positions of the model in `source` (`BertConfig.fit_max_length`)."""
    return BertConfig.from_json(resolve_checkpoint(source).config_file).fit_max_length(max_length, say)


def check_vocabulary(tokenizer: Any, model: Any, source: str | Path) -> None:
    """A vocab.txt of another size than the checkpoint's embeddings: ids would be [UNK]-only or out of range."""
    if len(tokenizer) != model.config.vocab_size:
        raise MinibertError(f"the tokenizer in {source} has {len(tokenizer)} tokens but the model's vocab_size is "
                            f"{model.config.vocab_size}; use the vocab.txt the checkpoint was trained with.")
