"""The server's answers other than 200, as one exception the routes raise and one place turns into JSON."""

from __future__ import annotations


class ApiError(Exception):
    """An answer other than 200: a status, one sentence, and headers (Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}

    def __reduce__(self) -> tuple:  # raised in a tokenizer process, it travels back whole
        return ApiError, (self.status, self.message, self.headers)
