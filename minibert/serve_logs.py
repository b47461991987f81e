"""Failure logging that cannot flood: one line per kind of failure per interval, every occurrence counted.

An attacker controls how often a failure happens (stalled connections, malformed requests, a full file-descriptor
table), so a log line per occurrence lets them fill the disk: 1,100 stalled connections once logged asyncio's
"socket.accept() out of system resource" 145,000 times in 25 s. Here the first occurrence of a kind is logged, then
at most one line per `interval` seconds saying how many more there were; `/metrics` has the exact counts
(`minibert_failures_total{kind}`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

INTERVAL_SECONDS = 60.0


class FailureLog:
    """`failure(kind, message)`: counted always, logged at most once per `interval` seconds per kind."""

    def __init__(self, logger: logging.Logger, count: Callable[[str], None],
                 interval: float = INTERVAL_SECONDS) -> None:
        self.logger, self.count, self.interval = logger, count, interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()  # the batcher's worker threads report failures too

    def failure(self, kind: str, message: str, exc_info: BaseException | None = None) -> None:
        self.count(kind)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        more = f" ({suppressed} more since the last such line)" if suppressed else ""
        self.logger.warning("%s: %s%s", kind, message, more, exc_info=exc_info)

    def loop_exception_handler(self, loop: Any, context: dict[str, Any]) -> None:
        """For `loop.set_exception_handler`: asyncio's own errors (accept() out of file descriptors, a transport
        that failed) through the same limit, instead of a traceback each."""
        exc = context.get("exception")
        message = context.get("message", "asyncio error")
        detail = f"{message} ({type(exc).__name__}: {exc})" if exc is not None else message
        self.failure("asyncio", detail)


class RateLimitFilter(logging.Filter):
    """Routes uvicorn's own warnings and errors ("Invalid HTTP request received.", "Exception in ASGI application")
    through a FailureLog: the record is dropped here and reported there."""

    def __init__(self, failures: FailureLog) -> None:
        super().__init__()
        self.failures = failures

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.failures.failure("uvicorn", record.getMessage())
        return False
