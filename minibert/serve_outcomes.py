"""Every answer counted by route and status, and no exception left to the framework.

Starlette answers an exception that escapes a route with a plain-text 500 and uvicorn logs its whole traceback, once
per request; such 500s were also missing from `minibert_requests_total`. This outermost middleware turns any
exception into a JSON 500 (the traceback logged through the rate-limited FailureLog) and counts every status.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

from minibert.serve_logs import FailureLog

SERVER_ERROR = json.dumps({"error": "the server failed on this request; it logged the details."}).encode()


class Outcomes:
    """ASGI middleware: `count(route, status)` for each answer (`other` for unknown paths), JSON 500 on a failure."""

    def __init__(self, app: Any, count: Callable[[str, int], None], failures: FailureLog,
                 routes: Collection[str]) -> None:
        self.app, self.count, self.failures, self.routes = app, count, failures, set(routes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def send_counted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        route = scope["path"] if scope["path"] in self.routes else "other"
        try:
            await self.app(scope, receive, send_counted)
        except Exception as e:  # noqa: BLE001 - the one place an unexpected failure becomes an answer
            self.failures.failure("server-error", f"{type(e).__name__} on {route}", exc_info=e)
            if status is None:
                status = 500
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(SERVER_ERROR)).encode()),
                                        (b"x-content-type-options", b"nosniff"), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": SERVER_ERROR})
        finally:
            self.count(route, status if status is not None else 499)
