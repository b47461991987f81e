"""Checkpoint folders that are either complete or absent: a crash, a kill or a full disk never leaves half of one.

A checkpoint is written into a hidden temporary folder (each file flushed, fsync'ed and renamed by `files.py`), a
`COMPLETE` marker is written last, and only then is the folder renamed to its final name. Resume trusts only
folders with the marker; older checkpoints are pruned only after the new one is in place.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from minibert.errors import MinibertError
from minibert.files import atomic_write_text, atomic_write_with, fsync_dir

logger = logging.getLogger("minibert")

MARKER = "COMPLETE"
STATE_FILE = "training_state.pt"
CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


def _write_folder(run_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Fill a temporary folder with `write`, mark it complete, then swap it in under `name`."""
    final, tmp = run_dir / name, run_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        for file in tmp.iterdir():  # some writers (a tokenizer's save_pretrained) do not fsync their files
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        atomic_write_text(tmp / MARKER, "complete\n")
        if final.exists():  # e.g. `best`: move the old one aside first, so that a rename never merges folders
            old = run_dir / f".old-{name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(run_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # files.py has already turned a full disk into a MinibertError about one file: name the checkpoint instead
        if any(isinstance(x, OSError) and x.errno == errno.ENOSPC for x in (e, e.__context__)):
            raise MinibertError(f"no space left on the device while saving {final}; free some space and resume "
                                "(the previous checkpoint is intact).") from None
        raise
    return final


def save_checkpoint(run_dir: Path, step: int, write_model: Callable[[Path], None], state: dict[str, Any],
                    keep: int) -> Path:
    """Write `checkpoint-<step>` (model files + training state), then prune all but the newest `keep`."""
    def write(folder: Path) -> None:
        write_model(folder)
        atomic_write_with(folder / STATE_FILE, lambda tmp: torch.save(state, tmp))

    path = _write_folder(run_dir, f"checkpoint-{step}", write)
    complete, _ = list_checkpoints(run_dir)
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in run_dir.glob(".tmp-*"):  # left by a process killed mid-save; ours has been renamed by now
        shutil.rmtree(stale, ignore_errors=True)
    return path


def save_model_folder(run_dir: Path, name: str, write_model: Callable[[Path], None], info: dict[str, Any]) -> Path:
    """Write a model-only folder (e.g. `best`) atomically, with `info` (step, metric) in `trainer_info.json`."""
    def write(folder: Path) -> None:
        write_model(folder)
        atomic_write_text(folder / "trainer_info.json", json.dumps(info, indent=2) + "\n")

    return _write_folder(run_dir, name, write)


def list_checkpoints(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete checkpoints, oldest first; incomplete ones: no marker, or a temporary folder left by a crash)."""
    complete, incomplete = [], []
    for path in run_dir.glob("checkpoint-*") if run_dir.is_dir() else []:
        if CHECKPOINT.match(path.name) and path.is_dir():
            (complete if (path / MARKER).is_file() else incomplete).append(path)
    incomplete += [p for p in run_dir.glob(".tmp-checkpoint-*")] if run_dir.is_dir() else []
    complete.sort(key=lambda p: int(CHECKPOINT.match(p.name).group(1)))
    return complete, sorted(incomplete)


def find_checkpoint(path: Path) -> Path:
    """A complete checkpoint folder, or the newest complete one in a run folder (naming the incomplete skipped)."""
    if (path / STATE_FILE).is_file():
        if not (path / MARKER).is_file():
            raise MinibertError(f"{path} is an incomplete checkpoint (no {MARKER} marker; the save was interrupted); "
                                "resume from its run folder to use the newest complete one.")
        return path
    complete, incomplete = list_checkpoints(path)
    if incomplete:
        logger.warning("skipped incomplete checkpoint(s) %s (interrupted while saving).",
                       ", ".join(p.name for p in incomplete))
    if not complete:
        raise MinibertError(f"no complete checkpoint in {path}; pass a run folder that has checkpoint-* folders, "
                            "or start without --resume.")
    return complete[-1]


def load_state(checkpoint: Path) -> dict[str, Any]:
    # weights_only=False: the state holds RNG states and plain Python values we wrote ourselves
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
