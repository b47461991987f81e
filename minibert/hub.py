"""The Hub's failures, as one sentence each: shared by the model, tokenizer and dataset loaders."""

from __future__ import annotations

from minibert.errors import MinibertError


class hub_errors:  # noqa: N801 - used as a `with` block, reads like one
    """Turn huggingface_hub's exceptions into one sentence each: offline and not cached, no such repo, no such
    revision, or the network failing."""

    def __init__(self, repo_id: str, revision: str | None, repo_type: str = "model") -> None:
        self.repo_id, self.revision, self.repo_type = repo_id, revision, repo_type

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
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
        if isinstance(exc, LocalEntryNotFoundError):
            raise MinibertError(f"{what} is not in the local Hugging Face cache and the Hub cannot be reached "
                                "(offline); download it once with network access, or pass a local folder.") from None
        if isinstance(exc, OSError) and not isinstance(exc, MinibertError):
            raise MinibertError(f"could not fetch {what} from the Hub ({exc}); check the network or pass a "
                                "local folder.") from None
        return False
