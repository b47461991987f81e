"""Who may talk to the server, and what a browser may do with its answers: one ASGI middleware, checked in order.

1. `Host` must be one of the allowed names (a DNS-rebinding page reaches a loopback server under its own domain
   name: refusing foreign Host headers is what keeps it from reading the answers); 400 otherwise.
2. With an API key, every route but the public ones needs `Authorization: Bearer KEY`, compared in constant time;
   401 with `WWW-Authenticate` otherwise.
3. A POST body must be `application/json`: a cross-site form or a `text/plain` fetch (which a browser sends without
   asking the server first) cannot run the model; 415 otherwise.
Every answer gets nosniff, no framing and no referrer, and a Content-Security-Policy (`page_csp` for the pages).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Collection
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"), (b"cross-origin-resource-policy", b"same-origin")]
API_CSP = b"default-src 'none'; frame-ancestors 'none'"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(flag: str, bind_host: str) -> list[str] | None:
    """The Host names to answer (None: any). `flag` is --allowed-hosts (comma-separated, `*` for any); empty means
    the local names when bound to a loopback address, any otherwise."""
    names = [n.strip().lower() for n in flag.split(",") if n.strip()]
    if "*" in names:
        return None
    if names:
        return names
    return list(LOOPBACK_NAMES) if is_loopback(bind_host) else None


def host_name(header: str) -> str:
    """`example.com:8000` -> `example.com`, `[::1]:8000` -> `::1`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def page_csp(html: str) -> str:
    """A policy for a self-contained page: its own inline scripts and styles (by hash) and calls to this server."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)
    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Guard:
    """The ASGI middleware: Host, key, media type; security headers on every answer."""

    def __init__(self, app: Any, hosts: list[str] | None, api_key: str, public: Collection[str]) -> None:
        self.app, self.hosts, self.public = app, hosts, set(public)
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", API_CSP))
                message = {**message, "headers": headers}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send_secured)
            return
        status, message, extra = refusal
        body = json.dumps({"error": message}).encode()
        await send_secured({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()), *extra]})
        await send_secured({"type": "http.response.body", "body": body})

    def refusal(self, scope: dict) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """(status, sentence, headers) of the first check that fails, or None."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.lower(), value)
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if self.hosts is not None and host not in self.hosts:
            return 400, (f"this server does not answer to the Host {host[:64]!r}; start it with --allowed-hosts "
                         "naming the host clients use."), []
        if self.key is not None and scope["path"] not in self.public:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
                return 401, "this server needs an API key: send the header Authorization: Bearer KEY.", [
                    (b"www-authenticate", b'Bearer realm="minibert"')]
        if scope["method"] == "POST":
            media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if media != b"application/json":
                shown = media.decode("latin-1")[:64] or "none"
                return 415, (f"the body must be sent as application/json (the Content-Type was {shown}); send the "
                             "header Content-Type: application/json."), [(b"connection", b"close")]
        return None
