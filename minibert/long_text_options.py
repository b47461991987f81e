"""How finetune and predict read texts longer than --max-length: the `--long-text` flags, what `auto` picks, and the
record a fine-tuned model folder keeps of how it was trained, so that predict reads long texts the same way.

`--long-text auto` (the default) picks `chunks` for single texts with one label each: on IMDB, windows with one drawn
per review per epoch beat truncation by 1.85 points at 512 tokens (ahead on every seed) and by 3.6 at 128, and two
epochs of them at 128 reach 92.3 % (README, "IMDB at full length"). For sentence pairs it picks `truncate`, as
before: a window must repeat the whole pair, which fails when the pair alone fills --max-length. For regression and
multi-label scores it picks `truncate` too: averaging their window scores was not measured. Texts that fit in
--max-length are one window each, so on short texts `chunks` trains and scores exactly as `truncate` does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from minibert.errors import MinibertError
from minibert.files import atomic_write_text
from minibert.long_text import LONG_TEXT_MODES, SUN_ET_AL_HEAD

LONG_TEXT_CHOICES = ("auto", *LONG_TEXT_MODES)
POOLS = ("mean", "max")
RECORD_FILE = "long_text.json"  # in a fine-tuned model folder: how it was trained on long texts


@dataclass
class LongText:
    """How texts longer than max_length become sequences (`--long-text`, `--head-tokens`, `--stride`)."""

    how: str = "truncate"  # truncate | head-tail | chunks
    head_tokens: int = SUN_ET_AL_HEAD
    stride: int = 128
    windows: str = "all"  # chunks, training: all of a document's windows each epoch, or one drawn at random


def auto_long_text(has_pairs: bool, problem_type: str) -> str:
    """The mode `--long-text auto` picks (see the module docstring for why)."""
    return "chunks" if not has_pairs and problem_type == "single_label_classification" else "truncate"


def default_stride(max_length: int) -> int:
    """A quarter of the window: 128 tokens at 512, the stride measured on IMDB."""
    return max_length // 4


def check_long_text(how: str, head_tokens: int, stride: int, max_length: int) -> None:
    """The long-text flags against --max-length ([CLS] and [SEP] take two of its tokens), before any work."""
    room = max_length - 2
    if how == "head-tail" and head_tokens > room:
        raise MinibertError(f"--head-tokens {head_tokens} leaves no room within --max-length {max_length} ({room} "
                            "tokens besides [CLS] and [SEP]); use fewer head tokens.")
    if how == "chunks" and stride >= room:
        raise MinibertError(f"--stride {stride} must be smaller than the {room} tokens a window of --max-length "
                            f"{max_length} holds besides [CLS] and [SEP], or windows would not advance.")


def resolve_long_text(how: str, head_tokens: int, stride: int | None, max_length: int, has_pairs: bool,
                      problem_type: str, windows: str = "all") -> LongText:
    """The flags as a run uses them: `auto` replaced by its pick, no stride by the default one, checked against
    max_length (finetune and predict share this)."""
    if how == "auto":
        how = auto_long_text(has_pairs, problem_type)
    long_text = LongText(how, head_tokens, default_stride(max_length) if stride is None else stride, windows)
    check_long_text(long_text.how, long_text.head_tokens, long_text.stride, max_length)
    return long_text


def write_record(folder: Path, long_text: LongText, max_length: int, pool: str) -> None:
    """What predict's `--long-text auto` reads back from this model folder."""
    record = {"max_length": max_length, **asdict(long_text), "pool": pool}
    atomic_write_text(folder / RECORD_FILE, json.dumps(record, indent=2) + "\n")


def read_record(folder: Path) -> dict[str, object] | None:
    """The record finetune wrote in `folder`, or None for a model fine-tuned elsewhere (or before records)."""
    path = folder / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        valid = (record["how"] in LONG_TEXT_MODES and record["pool"] in POOLS
                 and all(isinstance(record[k], int) and record[k] >= 0
                         for k in ("max_length", "head_tokens", "stride")))
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError):
        valid = False
    if not valid:
        raise MinibertError(f"{path} is not a long-text record written by minibert.finetune; delete it, or pass "
                            "--long-text truncate, head-tail or chunks to choose.")
    return record
