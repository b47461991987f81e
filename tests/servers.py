"""A real `python -m minibert.serve` for the tests that need one: a free port on 127.0.0.1 (never another address)
and a bounded wait for /health."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, seconds: float) -> str | None:
    """None once `url`/health answers 200; else why not: the server exited first, or `seconds` went by."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"the server exited with {proc.returncode} before /health answered"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return f"/health did not answer 200 within {seconds:g} s"
