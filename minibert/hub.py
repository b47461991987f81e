"""Local folder or Hub repo id, fetching one file from the Hub, and the Hub's failures as one sentence each:
shared by the model, tokenizer and dataset loaders. huggingface_hub is imported only when a Hub id is used."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from minibert.errors import MinibertError

PROBE_SECONDS = 3.0  # how long the one reachability probe of a process waits for the Hub's host
_probed = False


def hub_reachable(endpoint: str) -> bool:
    """Whether the Hub's host (HF_ENDPOINT, else huggingface.co) accepts a TCP connection within PROBE_SECONDS."""
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def go_offline_if_unreachable() -> None:
    """Before this process's first Hub request: huggingface_hub retries an unreachable Hub for about 30 s with two
    warnings per try, so probe its host once instead and, when it does not answer, switch huggingface_hub to
    offline mode: models in the local cache still load, others fail at once with one sentence."""
    global _probed
    from huggingface_hub import constants

    if _probed or constants.is_offline_mode():
        return
    _probed = True
    if not hub_reachable(constants.ENDPOINT):
        constants.HF_HUB_OFFLINE = True


def local_folder_or_repo_id(name_or_path: str | os.PathLike, needs: str) -> Path | str:
    """An existing folder as a Path, else the text as a Hub repo id; a path that cannot be either is an error.
    `needs` says what the folder must hold, for the message."""
    path = Path(name_or_path)
    if path.is_symlink() and not path.exists():
        raise MinibertError(f"{path} is a symbolic link that leads nowhere (a loop or a missing target); pass the "
                            "folder itself.")
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise MinibertError(f"{path}: permission denied; make the folder readable or pass another one.")
        return path
    if path.exists():
        raise MinibertError(f"{path} is a file; pass the folder that holds {needs}.")
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", ""):
        raise MinibertError(f"{text} does not exist; check the path (it is not a Hub id either).")
    return text


def hub_file(repo_id: str, filename: str, revision: str | None, cache_dir: str | os.PathLike | None,
             required: bool) -> Path | None:
    """The local path of one file of a Hub repo (downloaded, or from the cache), or None when the repo lacks it.
    Offline and not cached: None for an optional file, the error (for `hub_errors` to word) for a required one."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    go_offline_if_unreachable()
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: keep it first
        if required:
            raise
        return None
    except EntryNotFoundError:
        return None


class hub_errors:  # noqa: N801 - used as a `with` block, reads like one
    """Turn huggingface_hub's exceptions into one sentence each: offline and not cached, no such repo, no such
    revision, or the network failing."""

    def __init__(self, repo_id: str, revision: str | None, repo_type: str = "model") -> None:
        self.repo_id, self.revision, self.repo_type = repo_id, revision, repo_type

    def __enter__(self) -> None:
        go_offline_if_unreachable()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if exc is None:
            return False
        what = f"{self.repo_type} {self.repo_id!r}"
        if isinstance(exc, RevisionNotFoundError):
            raise MinibertError(f"revision {self.revision!r} of {what} does not exist on the Hub; "
                                "check the branch, tag or commit name.") from None
        if isinstance(exc, GatedRepoError):
            raise MinibertError(f"{what} is gated; accept its terms on the Hub and log in "
                                "(`hf auth login`).") from None
        if isinstance(exc, RepositoryNotFoundError):
            raise MinibertError(f"{what} was not found on the Hub (or is private); check the id, or pass a "
                                "local folder.") from None
        if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            raise MinibertError(f"{what} is not in the local Hugging Face cache and the Hub cannot be reached "
                                "(offline); pass a local folder, or download it once with network access "
                                "(HF_HUB_OFFLINE=1 skips the Hub and reads the cache).") from None
        if isinstance(exc, OSError) and not isinstance(exc, MinibertError):
            raise MinibertError(f"could not fetch {what} from the Hub ({exc}); check the network or pass a "
                                "local folder.") from None
        return False
