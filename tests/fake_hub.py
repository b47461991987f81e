"""A stand-in for the Hugging Face Hub on 127.0.0.1, so Hub code runs for real with no network.

It answers `huggingface_hub`'s HEAD/GET requests for `/{repo}/resolve/{revision}/{file}` (and `/datasets/...`)
from local folders, and fails the way the Hub does (an `X-Error-Code` header: RepoNotFound, RevisionNotFound,
EntryNotFound). Point a process at it with `HF_ENDPOINT=server.url`.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Path]] = {}  # "datasets/org/name" or "org/name" -> revision -> folder
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self.respond(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self.respond(body=True)

            def respond(self, body: bool) -> None:
                hub.requests.append(self.path)
                path = unquote(self.path.split("?")[0]).lstrip("/")
                if "/resolve/" not in path:
                    return self.error("RepoNotFound")
                repo, rest = path.split("/resolve/", 1)
                revision, filename = rest.split("/", 1)
                if repo not in hub.repos:
                    return self.error("RepoNotFound")
                if revision not in hub.repos[repo]:
                    return self.error("RevisionNotFound")
                file = hub.repos[repo][revision] / filename
                if not file.is_file():
                    return self.error("EntryNotFound")
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest())
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def error(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo_id: str, folder: Path, revision: str = "main", repo_type: str = "model") -> None:
        key = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
        self.repos.setdefault(key, {})[revision] = Path(folder)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
