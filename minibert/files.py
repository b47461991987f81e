"""Atomic file writes: a crash, a kill or a full disk mid-write never leaves a half-written file in place.

Each file is written to a temporary name in the same folder, flushed and fsync'ed, then renamed over the target
(`os.replace` is atomic on POSIX and Windows). The folder is fsync'ed too so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

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
