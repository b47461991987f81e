"""Connections bounded in number and in time, below uvicorn's HTTP parser (h11).

uvicorn alone waits forever for a request's headers and accepts connections until the process runs out of file
descriptors; then asyncio's accept loop fails (and logs) on every turn, and `/health` stops answering. Here:
- the soft RLIMIT_NOFILE is raised to the hard one at startup, and the connection cap stays under it
  (`connection_cap`), so the process never reaches the limit;
- a connection beyond the cap gets a 503 JSON answer as soon as it sends anything (or is closed after a second)
  and holds its descriptor no longer;
- a connection that has not sent a whole request line and headers within `header_timeout` seconds of its first
  byte (or of opening) gets 408 and is closed; bytes that are not HTTP get 400, in JSON like every other answer.
  The body's own timeout is the app's (`read_body` in serve.py), and an idle keep-alive connection is closed by
  uvicorn's keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

FD_RESERVE = 128  # descriptors kept for what is not a client: model files, logs, the tokenizer pool, pipes
OVER_CAP_GRACE_SECONDS = 1.0  # how long a connection over the cap may take to send its first bytes


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # a container may forbid it: live with the soft limit
        return soft
    return target


def connection_cap(requested: int, fd_limit: int) -> int:
    """`requested` connections at most, and never so many that the process runs out of descriptors."""
    return max(1, min(requested, fd_limit - FD_RESERVE))


def raw_answer(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer, JSON body, that closes the connection: for refusals made before any request is
    parsed (h11 cannot answer a request it has not read)."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "x-content-type-options: nosniff\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def guarded_protocol(max_connections: int, header_timeout: float, on_refusal: Callable[[str, str], None]) -> type:
    """uvicorn's h11 protocol class with the cap and the header timeout; `on_refusal(kind, message)` is told of
    each refusal (for the metrics and the rate-limited log)."""

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._over_cap = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._over_cap = True
                self._arm(OVER_CAP_GRACE_SECONDS)
            else:
                self._arm(header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._over_cap:
                self._refuse(503, "Service Unavailable", "connection-cap",
                             f"the server has {max_connections} connections open, its limit; retry in a second.")
                return
            waiting_for_headers = self.conn.their_state is h11.IDLE
            if waiting_for_headers and self._header_timer is None:  # a new request on a kept-alive connection
                self._arm(header_timeout)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            self._disarm()  # between requests, uvicorn's keep-alive timeout applies
            super().on_response_complete()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self._over_cap:
                on_refusal("connection-cap", f"a connection over the cap of {max_connections} sent nothing")
                self.transport.close()
            elif self.conn.their_state is h11.IDLE:  # still no whole request line and headers
                self._refuse(408, "Request Timeout", "header-timeout",
                             f"the request line and headers did not arrive within {header_timeout:g} s.")

        def send_400_response(self, msg: str) -> None:  # uvicorn's answer to bytes that are not HTTP: JSON too
            self._refuse(400, "Bad Request", "bad-http", "the request is not valid HTTP/1.1 (or its headers are "
                         "over 16 KiB); send a well-formed request.")

        def _refuse(self, status: int, reason: str, kind: str, message: str) -> None:
            self._disarm()
            on_refusal(kind, message)
            self.transport.write(raw_answer(status, reason, message))
            self.transport.close()

    return GuardedH11Protocol
