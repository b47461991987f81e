"""What every command line shares: errors as one sentence and exit statuses, the run options kept in a run folder
for `--resume RUN` alone, and `--max-length` fitted to the model.

Exit statuses: 0 done; 1 a user's mistake (a `MinibertError`, printed alone as `error: ...`); 2 a flag argparse
cannot read; 130 / 143 interrupted by SIGINT / SIGTERM (after saving what can be resumed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from minibert import run_folder
from minibert.checkpoint_files import resolve_checkpoint
from minibert.cli import given_flags
from minibert.config import BertConfig
from minibert.errors import MinibertError
from minibert.files import atomic_write_text

logger = logging.getLogger("minibert")

Opts = TypeVar("Opts")
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


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


def exit_status(summary: Any) -> int:
    """0 for a finished run, 130 / 143 for one stopped by SIGINT / SIGTERM after saving its checkpoint."""
    return EXIT_CODES.get(summary.stop_signal, 130) if summary.interrupted else 0


def save_options(run_dir: Path, opts: Any) -> None:
    """The options a run started with, so that `--resume RUN` alone continues it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in dataclasses.asdict(opts).items() if k not in ("resume", "overwrite")}
    atomic_write_text(run_dir / run_folder.OPTIONS_FILE, json.dumps(values, indent=2) + "\n")


def load_options(kind: type[Opts], opts: Opts, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                 may_change: Collection[str], schedule: Collection[str]) -> Opts:
    """`--resume RUN`: the options RUN started with, then the flags given again with other values: a flag in
    `may_change` is applied with a warning; one in `schedule` (the optimizer and learning-rate schedule were built
    from it, so a new value would be half-applied) is refused with the reason; any other (data, batches) is refused
    unless --allow-resume-mismatch, which applies it with a warning."""
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
        merged = kind(**{k: v for k, v in stored.items() if k in known})
    except (ValueError, TypeError, OSError) as e:
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
    """`--max-length`, capped at the model's max_position_embeddings (read from its config.json), saying so."""
    config = BertConfig.from_json(resolve_checkpoint(source).config_file)
    limit = config.max_position_embeddings
    if max_length > limit:
        if say:
            print(f"--max-length {max_length} is more than the model's {limit} positions; using {limit}.",
                  file=sys.stderr)
        return limit
    return max_length


def check_vocabulary(tokenizer: Any, model: Any, source: str | Path) -> None:
    """A vocab.txt of another size than the checkpoint's embeddings: ids would be [UNK]-only or out of range."""
    if len(tokenizer) != model.config.vocab_size:
        raise MinibertError(f"the tokenizer in {source} has {len(tokenizer)} tokens but the model's vocab_size is "
                            f"{model.config.vocab_size}; use the vocab.txt the checkpoint was trained with.")
