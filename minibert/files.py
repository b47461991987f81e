"""Atomic file writes: a crash, a kill or a full disk mid-write never leaves a half-written file in place.

Each file is written to a temporary name in the same folder, flushed and fsync'ed, then renamed over the target
(`os.replace` is atomic on POSIX and Windows). The folder is fsync'ed too so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from minibert.errors import MinibertError


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so that renames inside it are durable (a no-op where the OS does not allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """For writers that insist on a file name (e.g. `safetensors.torch.save_file`): `write(tmp_name)`, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it owner-only; give it what the user's umask gives
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise MinibertError(f"no space left on the device while writing {path}; free some space and retry "
                                "(the previous file, if any, is untouched).") from None
        raise
    fsync_dir(path.parent)


def write_text_stream(path: str | os.PathLike | None, write: Callable[[IO[str]], int], what: str,
                      started: float) -> int:
    """`write(out)` -> the number of records it wrote, to stdout (`path` None) or to a temporary file beside `path`
    renamed over it at the end (the output grows as it goes; an earlier file stays whole until then), with one line
    on stderr saying how many `what` went where and how long it took."""
    if path is None:
        return write(sys.stdout)
    counted: list[int] = []

    def fill(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            counted.append(write(out))

    atomic_write_with(path, fill)
    print(f"wrote {counted[0]} {what} to {path} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return counted[0]
