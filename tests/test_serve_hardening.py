"""The server as an attacker meets it: a real `python -m minibert.serve` on 127.0.0.1 (never another address), one
process per group of tests. Large bodies and stalled connections must not stall anyone else; every bad body is a
JSON 4xx; strangers (no key, a foreign Host, a cross-site form) stay out; no answer shows a local path; shutdown past
its timeout answers 503 and exits 0. Every loop and wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests.test_serve import write_classifier  # noqa: E402
from tests.test_serve_process import metric, start, stop  # noqa: E402

KEY = "s3cret-key-for-tests"
TIMEOUT = 2  # --header-timeout and --body-timeout of the test server


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_classifier(tmp_path_factory.mktemp("hardening") / "classifier")


@pytest.fixture(scope="module")
def server(classifier: Path) -> Iterator[str]:
    """One server for the module, with short read timeouts. At the end, its whole log: no traceback, and at most
    one line per kind of failure (hundreds of timeouts and hang-ups happened)."""
    proc, url = start(classifier, "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT),
                      "--max-connections", "1000", "--keep-alive-timeout", "1")
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = proc.stdout.read()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("header-timeout") <= 1, log[-3000:]
    assert len(log.splitlines()) < 30, log[-3000:]


def post(url: str, body: bytes, content_type: str = "application/json", **headers: str) -> httpx.Response:
    return httpx.post(url + "/predict", content=body, headers={"content-type": content_type, **headers}, timeout=30)


def raw_socket(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_answer(sock: socket.socket, deadline: float) -> bytes:
    """Whatever the server sends until it closes the connection, or until `deadline` (time.monotonic())."""
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


# --- nothing stalls the loop ----------------------------------------------------------------------------------------

def test_a_1mb_body_does_not_stall_health(server: str) -> None:
    """One text of 1 MB of fresh words (the tiny vocabulary spells them letter by letter: about a million tokens to
    find): /health keeps answering within a fraction of a second the whole time it is tokenised."""
    words = " ".join(f"q{i:x}zv" for i in range(160_000))[:990_000]
    body = json.dumps({"inputs": [words]}).encode()
    result: dict[str, httpx.Response] = {}
    sender = threading.Thread(target=lambda: result.update(big=post(server, body)))
    sender.start()
    latencies = []
    deadline = time.monotonic() + 60
    while sender.is_alive() and time.monotonic() < deadline:
        began = time.monotonic()
        assert httpx.get(server + "/health", timeout=10).status_code == 200
        latencies.append(time.monotonic() - began)
        time.sleep(0.05)
    sender.join(60)
    # read in windows as predict would, it is more work than the whole queue holds: refused in one sentence
    assert result["big"].status_code == 413
    assert result["big"].json()["error"].startswith("this request is too large for the server (it has ")
    # on a shared machine one probe may wait for a core; tokenising on the event loop stalled it for seconds
    slow = sorted(latencies)[len(latencies) // 2]
    assert max(latencies) < 1.5 and slow < 0.2, f"/health took {slow:.2f} s (median), up to {max(latencies):.2f} s"
    assert len(latencies) >= 5, "the large request was too quick to measure anything"


def test_large_bodies_tokenised_in_the_tokenizer_process_answer_as_small_ones(server: str) -> None:
    """Bodies over 64 KiB go to the tokenizer process, the others to threads: both read a text the same way (here
    both texts are cut at the same 512th token, so their vectors and their windows' predictions agree)."""
    large, small = "good movie " * 10_000, "good movie " * 300  # 110 KB and 3.3 KB, both over 512 tokens
    vectors = [httpx.post(server + "/embed", json={"inputs": [t]}, timeout=60).json() for t in (large, small)]
    assert vectors[0]["inputs"] == vectors[1]["inputs"] == [{"truncated": True}]
    assert max(abs(a - b) for a, b in zip(vectors[0]["embeddings"][0], vectors[1]["embeddings"][0])) < 1e-6
    predicted = httpx.post(server + "/predict", json={"inputs": [large]}, timeout=60).json()["results"][0]
    assert predicted["windows"] == 53  # 20,000 tokens in windows of 512 sharing 128


def test_stalled_connections_are_closed_and_health_answers(server: str) -> None:
    """300 connections that send their headers and one byte of a 100-byte body, 50 that send half a request line:
    /health answers throughout, and others' requests get through; after the timeouts each gets 408 JSON and is
    closed."""
    body_stalled, header_stalled = [], []
    for _ in range(300):
        sock = raw_socket(server)
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"content-length: 100\r\n\r\n{")
        body_stalled.append(sock)
    for _ in range(50):
        sock = raw_socket(server)
        sock.sendall(b"POST /pre")
        header_stalled.append(sock)
    # one that announces a body of almost 1 MB: a body not yet read holds no room in the queue, so a request of
    # 8,000 tokens still fits beside it (when unread bodies reserved their size, this one took 125,000 of 131,072)
    big = raw_socket(server)
    big.sendall(b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"content-length: 999999\r\n\r\n{")
    body_stalled.append(big)
    before = metric(server, 'minibert_requests_total{endpoint="/predict",status="408"}')
    for _ in range(5):
        began = time.monotonic()
        assert httpx.get(server + "/health", timeout=5).status_code == 200
        assert time.monotonic() - began < 0.5
        time.sleep(0.1)
    fits = post(server, json.dumps({"inputs": ["the movie was good and " * 25] * 64}).encode())
    assert fits.status_code == 200, fits.text
    deadline = time.monotonic() + TIMEOUT + 8  # one deadline for all: the answers come at the same time
    answers = [read_answer(sock, deadline) for sock in body_stalled + header_stalled]
    for sock in body_stalled + header_stalled:
        sock.close()
    for answer in answers:
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"connection: close" in head.lower()
        assert json.loads(payload)["error"].startswith("the ")
    assert metric(server, 'minibert_requests_total{endpoint="/predict",status="408"}') - before == 301
    assert metric(server, 'minibert_failures_total{kind="header-timeout"}') >= 50
    assert httpx.get(server + "/health", timeout=5).status_code == 200


def test_an_idle_kept_alive_connection_is_closed(server: str) -> None:
    sock = raw_socket(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    began = time.monotonic()
    answer = read_answer(sock, began + 5)  # the answer, then the close after --keep-alive-timeout 1
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')
    assert 0.8 < time.monotonic() - began < 4


def test_the_soft_file_limit_is_raised_to_the_hard_one(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"minibert.serve" in cmdline and str(port).encode() in cmdline:
            line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open"))
            soft, hard = line.split()[3:5]
            assert soft == hard, line
            return
    pytest.fail("the server process was not found")


# --- every bad body is a JSON 4xx ---------------------------------------------------------------------------------

BAD_BODIES = [
    (b"[" * 100_000, 400, "the body nests arrays or objects more than 16 deep"),
    (b'{"inputs": ' + b"[" * 50 + b'"a"' + b"]" * 50 + b"}", 400, "the body nests arrays or objects more than 16 deep"),
    (b'{"inputs": ["a"], "tokens": ' + b"7" * 5000 + b"}", 400, "the body holds a number of 5000 characters"),
    (b'{"inputs": ["a"], "tokens": NaN}', 400, "the body holds NaN, which is not JSON"),
    (b'{"inputs": ["a"], "tokens": -Infinity}', 400, "the body holds -Infinity, which is not JSON"),
    (b'{"inputs": ["a"], "tokens": 1e999}', 422, "the field 'tokens' must be true or false."),
    (b"3", 422, "the body must be a JSON object"),
    (b'"text"', 422, "the body must be a JSON object"),
    (b"null", 422, "the body must be a JSON object"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_BODIES)
def test_bad_bodies_are_json_4xx(server: str, body: bytes, status: int, message: str) -> None:
    response = post(server, body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"].startswith(message)


@pytest.mark.parametrize("request_bytes", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nx: " + b"a" * 20_000 + b"\r\n\r\n"])
def test_what_is_not_http_gets_json_400(server: str, request_bytes: bytes) -> None:
    sock = raw_socket(server)
    sock.sendall(request_bytes)
    head, _, payload = read_answer(sock, time.monotonic() + 5).partition(b"\r\n\r\n")
    sock.close()
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head
    assert json.loads(payload)["error"].startswith("the request is not valid HTTP/1.1")


def test_a_client_that_hangs_up_mid_upload_is_counted_not_logged(server: str) -> None:
    before = metric(server, 'minibert_requests_total{endpoint="/predict",status="499"}')
    for _ in range(3):
        sock = raw_socket(server)
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n{\"inputs\": [\"a")
        time.sleep(0.2)
        sock.close()
    deadline = time.monotonic() + 5
    while metric(server, 'minibert_requests_total{endpoint="/predict",status="499"}') - before < 3:
        assert time.monotonic() < deadline, "the hang-ups were not counted"
        time.sleep(0.1)
    assert post(server, b'{"inputs": ["still serving"]}').status_code == 200


# --- strangers stay out -------------------------------------------------------------------------------------------

def test_only_json_bodies_run_the_model(server: str) -> None:
    """A cross-site form or a text/plain fetch (sent by browsers without asking first) gets 415, not a prediction."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        response = post(server, b'{"inputs": ["a"]}', content_type)
        assert response.status_code == 415, content_type
        assert response.json()["error"].startswith("the body must be sent as application/json")
    assert post(server, b'{"inputs": ["a"]}', "application/json; charset=utf-8").status_code == 200


def test_a_foreign_host_is_refused(server: str) -> None:
    """Bound to 127.0.0.1, the server answers to local names only: a DNS-rebinding page cannot read /info."""
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        response = httpx.get(server + "/info", headers={"host": host}, timeout=5)
        assert response.status_code == 400, host
        assert response.json()["error"].startswith("this server does not answer to the Host")
    port = server.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(server + "/info", headers={"host": host}, timeout=5).status_code == 200


def test_no_answer_shows_a_local_path(server: str, classifier: Path) -> None:
    bodies = [httpx.get(server + path, timeout=5).text for path in ("/info", "/openapi.json", "/docs", "/")]
    bodies.append(post(server, b'{"inputs": ["a"]}').text)
    bodies.append(httpx.post(server + "/embed", json={"inputs": ["a"]}, timeout=10).text)
    for text in bodies:
        assert str(classifier.parent) not in text and "/tmp" not in text, text[:300]
    assert httpx.get(server + "/info", timeout=5).json()["model"] == classifier.name


def test_docs_and_page_need_no_other_origin(server: str) -> None:
    """/docs is a page of its own (no Swagger UI from a CDN): nothing it loads comes from elsewhere, and the pages
    send a Content-Security-Policy that forbids it anyway."""
    for path in ("/docs", "/"):
        response = httpx.get(server + path, timeout=5)
        assert response.status_code == 200
        assert "<script src" not in response.text and "<link" not in response.text
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server + "/info", timeout=5).headers["x-frame-options"] == "DENY"


@pytest.fixture(scope="module")
def keyed(classifier: Path) -> Iterator[str]:
    """A second server: an API key (from the environment), CORS for one origin, and a cap of 20 connections."""
    proc, url = start(classifier, "--max-connections", "20", "--cors-origins", "http://app.example",
                      env={"MINIBERT_API_KEY": KEY})
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_the_api_key(keyed: str) -> None:
    assert httpx.get(keyed + "/health", timeout=5).status_code == 200  # load balancers need no key
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"authorization": f"Basic {KEY}"}):
        response = httpx.post(keyed + "/predict", json={"inputs": ["a"]}, headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="minibert"'
        assert response.json()["error"] == "this server needs an API key: send the header Authorization: Bearer KEY."
        for path in ("/info", "/metrics", "/openapi.json"):
            assert httpx.get(keyed + path, headers=headers, timeout=5).status_code == 401
    auth = {"authorization": f"Bearer {KEY}"}
    assert httpx.post(keyed + "/predict", json={"inputs": ["a"]}, headers=auth, timeout=10).status_code == 200
    info = httpx.get(keyed + "/info", headers=auth, timeout=5).json()
    assert info["api_key"] is True and KEY not in json.dumps(info)
    for page in ("/", "/docs"):  # the pages ask for the key themselves
        assert httpx.get(keyed + page, timeout=5).status_code == 200


def test_cors_only_for_the_named_origin(keyed: str, server: str) -> None:
    preflight = {"origin": "http://app.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    allowed = httpx.options(keyed + "/predict", headers=preflight, timeout=5)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(keyed + "/predict", headers={**preflight, "origin": "http://evil.example"}, timeout=5)
    assert "access-control-allow-origin" not in other.headers
    default = httpx.options(server + "/predict", headers=preflight, timeout=5)  # no --cors-origins: no CORS at all
    assert "access-control-allow-origin" not in default.headers


def test_connections_beyond_the_cap_get_503(keyed: str) -> None:
    held = [raw_socket(keyed) for _ in range(20)]
    try:
        time.sleep(0.3)
        extra = raw_socket(keyed)
        extra.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        head, _, payload = read_answer(extra, time.monotonic() + 5).partition(b"\r\n\r\n")
        extra.close()
        assert head.startswith(b"HTTP/1.1 503"), head
        assert json.loads(payload)["error"] == "the server has 20 connections open, its limit; retry in a second."
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the held connections are gone: new ones are served again
        try:
            if httpx.get(keyed + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not serve again after the connections closed"
        time.sleep(0.1)


# --- shutdown keeps its promise -----------------------------------------------------------------------------------

def test_shutdown_past_its_timeout_answers_503_and_exits_0(classifier: Path) -> None:
    """A backlog far longer than --shutdown-timeout (960 texts of 512 tokens, one per forward), then SIGTERM: the
    requests answered in time get 200, every other one a 503 JSON, and the process exits 0 soon after the deadline
    (it used to answer plain-text 500s and die with `terminate called without an active exception`, status 134)."""
    import asyncio

    proc, url = start(classifier, "--shutdown-timeout", "1", "--max-batch-tokens", "512", "--max-wait-ms", "0",
                      "--max-queue-tokens", "1000000", "--max-inputs", "16")
    text = "the movie was good and " * 120  # over 512 tokens: truncated to 512

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as http:
            sent = [asyncio.ensure_future(http.post(url + "/predict", json={"inputs": [text] * 16}, timeout=60))
                    for _ in range(60)]
            deadline = time.monotonic() + 20
            while await asyncio.to_thread(metric, url, "minibert_queue_depth") < 400:
                assert time.monotonic() < deadline, "the backlog never built up"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            responses = await asyncio.gather(*sent)
            assert time.monotonic() - signalled < 1 + 5  # the deadline, and the batch in the model then
            return responses

    try:
        responses = asyncio.run(asyncio.wait_for(run(), 60))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503} and 503 in statuses, statuses
        for r in responses:
            assert r.headers["content-type"] == "application/json"
            if r.status_code == 503:
                assert r.json()["error"].startswith("the server stopped before this request")
        assert proc.wait(timeout=15) == 0
        log = proc.stdout.read()
        assert "terminate called" not in log and "Traceback" not in log, log[-3000:]
    finally:
        stop(proc)
