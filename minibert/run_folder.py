"""A training run's folder: its checkpoints, `best/`, `metrics.jsonl`, the options it was started with, its lock.

Checkpoint folders are either complete or absent: a crash, a kill or a full disk never leaves half of one. A
checkpoint is written into a hidden temporary folder (each file flushed, fsync'ed and renamed by `files.py`), a
`COMPLETE` marker is written last, and only then is the folder renamed to its final name. Resume trusts only
folders with the marker; older checkpoints are pruned only after the new one is in place.

One run per folder: a fresh run refuses a folder that holds another run's files (unless told to overwrite them),
and a lock file with the owner's pid keeps a second process out while a run writes there.

(Not to be confused with a Hugging Face model folder: `checkpoint-N/` holds one, plus the training state.)
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from minibert.errors import MinibertError
from minibert.files import atomic_write_text, atomic_write_with, fsync_dir

logger = logging.getLogger("minibert")

MARKER = "COMPLETE"
STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"
OPTIONS_FILE = "run_options.json"
LOCK_FILE = ".lock"
CHECKPOINT = re.compile(r"checkpoint-(\d+)$")
# What a run writes into its folder: an earlier run's files that --overwrite removes (nothing else is touched).
RUN_FILES = ("checkpoint-*", "best", METRICS_FILE, "metrics.png", OPTIONS_FILE, ".tmp-*", ".old-*")


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
    """The training state of a checkpoint, read as data only (`weights_only=True`): a state file whose pickle would
    run code is refused, and nothing in it runs."""
    path = checkpoint / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MinibertError(f"{path} holds Python objects that could run code when loaded, which minibert never "
                            "writes; refusing it. Resume only from run folders you trust, or start without "
                            "--resume.") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise MinibertError(f"{path} is not a readable training state ({type(e).__name__}); resume from an "
                            "earlier checkpoint of the run folder, or start without --resume.") from None


# --- the run folder ----------------------------------------------------------------------------------------------


def check_readable_file(path: Path, flag: str) -> None:
    """A file to read: it exists, is a file, and we may read it; else one sentence naming `flag`."""
    if path.is_symlink() and not path.exists():
        raise MinibertError(f"{flag} {path} is a symbolic link that leads nowhere; pass the file itself.")
    if not path.exists():
        raise MinibertError(f"{flag} {path} does not exist; check the path.")
    if path.is_dir():
        raise MinibertError(f"{flag} {path} is a folder; pass a file.")
    if not os.access(path, os.R_OK):
        raise MinibertError(f"{flag} {path}: permission denied; make it readable or pass another file.")


def check_writable_folder(path: Path, flag: str) -> None:
    """An output folder that exists as a folder we can write, or can be created: else one sentence naming `flag`."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == path else f"is under {parent}, which is a file"
                raise MinibertError(f"{flag} {path} {what}; pass a folder.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise MinibertError(f"{flag} {path}: no permission to write in {parent}; choose another folder.")
            return


def earlier_run_files(run_dir: Path) -> list[Path]:
    """The files of an earlier run in `run_dir` (checkpoints, best/, metrics, options)."""
    if not run_dir.is_dir():
        return []
    return sorted(p for pattern in RUN_FILES for p in run_dir.glob(pattern))


def prepare_new_run(run_dir: Path, overwrite: bool) -> None:
    """A fresh run's folder: refuse one that holds another run, or with `overwrite` remove that run's files."""
    check_writable_folder(run_dir, "--output-dir")
    earlier = earlier_run_files(run_dir)
    if earlier and not overwrite:
        raise MinibertError(f"--output-dir {run_dir} already holds a run ({', '.join(p.name for p in earlier[:4])}"
                            f"{', ...' if len(earlier) > 4 else ''}); continue it with --resume {run_dir}, pass "
                            "--overwrite to replace it, or choose another --output-dir.")
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


class RunLock:
    """`run_dir/.lock`, holding the owner's pid, for as long as a run writes there: a second process refuses.

    A lock left by a process that no longer exists (killed with SIGKILL, say) is taken over with a warning.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise MinibertError(f"{self.path.parent} is in use by another run (process {owner}); wait for it "
                                        "to finish or choose another --output-dir.") from None
                logger.warning("taking over %s, left by process %s, which is no longer running.", self.path, owner)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self
        raise MinibertError(f"could not lock {self.path.parent}: another process keeps taking it; choose another "
                            "--output-dir.")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc: Any) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a kill during an append) is left out with a warning."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise MinibertError(f"line {number} of {path} is not valid JSON; the metrics log is damaged (only "
                                    "its last line can be torn by an interrupted write).") from None
            logger.warning("ignoring the torn last line of %s (the run was interrupted while writing it).", path)
    return records


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def forget_after(path: Path, step: int) -> None:
    """Keep the log lines of steps up to the checkpoint's (a killed run got further, or tore its last line), so that
    each step is logged once."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
