"""The server as a real process (`python -m minibert.serve` on 127.0.0.1, a free port): concurrent clients, a client
that hangs up, SIGTERM under load, a second signal, and startup errors. Every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests.servers import HOST, free_port, wait_healthy  # noqa: E402
from tests.test_serve import assert_same_predictions, offline_predict, write_classifier  # noqa: E402
from tests.tiny import NEGATIVE, POSITIVE  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def start(model: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "minibert.serve", "--model", str(model), "--host", HOST,
                             "--port", str(port), "--precision", "fp32", "--threads", "1", *flags],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://{HOST}:{port}"
    problem = wait_healthy(proc, url, 90)
    if problem is not None:
        raise AssertionError(f"{problem}: {stop(proc)}")
    return proc, url


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    return out


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_classifier(tmp_path_factory.mktemp("process") / "classifier")


@pytest.fixture(scope="module")
def pool(classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """60 texts and what offline predict says of each."""
    texts = [f"the movie was {POSITIVE[i % 7]} {NEGATIVE[(i * 3) % 7]} " + "very " * (i % 9) + NEGATIVE[i % 5]
             for i in range(60)]
    return dict(zip(texts, offline_predict(classifier, texts, tmp_path_factory.mktemp("offline"))))


@pytest.fixture(scope="module")
def server(classifier: Path) -> Iterator[str]:
    proc, url = start(classifier, "--max-wait-ms", "5", "--max-batch-tokens", "256", "--workers", "2")
    assert httpx.get(url + "/info", timeout=5).json()["workers"] == 2
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_concurrent_clients_get_their_own_answers(server: str, pool: dict[str, dict]) -> None:
    """32 clients at once, each with texts of one label, another label than its neighbours: no cross-talk, with two
    model workers running batches side by side."""
    by_label: dict[str, list[str]] = {}
    for text, expected in pool.items():
        by_label.setdefault(expected["label"], []).append(text)
    labels = sorted(by_label)
    assert len(labels) >= 2, "the test classifier should give these texts at least two labels"

    async def client(k: int, http: httpx.AsyncClient) -> int:
        mine = by_label[labels[k % len(labels)]]
        for j in range(6):
            texts = [mine[(k + j + i) % len(mine)] for i in range(1 + (k + j) % 4)]
            response = await http.post(server + "/predict", json={"inputs": texts}, timeout=60)
            assert response.status_code == 200
            assert_same_predictions(response.json()["results"], [pool[t] for t in texts])
        return k

    async def run() -> list[int]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.gather(*(client(k, http) for k in range(32)))

    assert asyncio.run(asyncio.wait_for(run(), 120)) == list(range(32))
    assert metric(server, 'minibert_batch_texts_count{kind="predict"}') < 32 * 6  # requests did share batches


def test_client_that_hangs_up(classifier: Path) -> None:
    proc, url = start(classifier, "--max-wait-ms", "1500")
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/predict", json={"inputs": ["good", "bad"]}, timeout=0.5)
        deadline = time.monotonic() + 10
        while metric(url, 'minibert_requests_total{endpoint="/predict",status="499"}') != 1:
            assert time.monotonic() < deadline, "the server never noticed the client had gone"
            time.sleep(0.1)
        time.sleep(1.5)
        assert metric(url, 'minibert_texts_total{kind="predict"}') == 0  # its texts never reached the model
        assert httpx.post(url + "/predict", json={"inputs": ["good"]}, timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_sigterm_finishes_every_accepted_request(classifier: Path, pool: dict[str, dict]) -> None:
    """All requests queued (the worker waits 1.5 s to fill its batch), then SIGTERM: each still gets its answer,
    new connections are refused, and the process exits 0."""
    proc, url = start(classifier, "--max-wait-ms", "1500", "--max-batch-tokens", "100000")
    texts = list(pool)
    requests = [texts[i:i + 3] for i in range(0, 48, 3)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as http:
            sent = [asyncio.ensure_future(http.post(url + "/predict", json={"inputs": r}, timeout=60))
                    for r in requests]
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(metric, url, "minibert_queue_depth") < 48:
                assert time.monotonic() < deadline, "the requests were not all queued"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(httpx.TransportError):
                await http.get(url + "/health", timeout=2, headers={"connection": "close"})
            return await asyncio.gather(*sent)

    try:
        responses = asyncio.run(asyncio.wait_for(run(), 60))
        for r, texts_sent in zip(responses, requests):
            assert r.status_code == 200
            assert_same_predictions(r.json()["results"], [pool[t] for t in texts_sent])
        assert proc.wait(timeout=20) == 0
        assert "SIGTERM: finishing the accepted requests" in proc.stdout.read()
    finally:
        stop(proc)


def test_second_signal_exits_at_once(classifier: Path) -> None:
    proc, url = start(classifier, "--max-wait-ms", "20000", "--shutdown-timeout", "60")
    try:
        # a request that keeps the server busy for 20 s: its batch waits that long for company
        pending = subprocess.Popen([sys.executable, "-c", f"import httpx; httpx.post('{url}/predict', "
                                    "json={'inputs': ['good']}, timeout=60)"], stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # still finishing the accepted request
        start_time = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 1
        assert time.monotonic() - start_time < 5
        assert "second SIGINT: exiting now" in proc.stdout.read()
        pending.wait(timeout=30)
    finally:
        stop(proc)


def test_startup_errors_are_one_sentence(classifier: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "minibert.serve", "--host", HOST, *args], cwd=REPO, text=True,
                              capture_output=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})

    missing = run("--model", str(tmp_path / "nowhere"), "--port", str(free_port()))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nowhere'} does not exist; check the path " \
                                                      "(it is not a Hub id either)."
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = run("--model", str(classifier), "--port", str(port))
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines()[-1] == (f"error: port {port} on {HOST} is in use by another process; "
                                                    "stop that server or pass another --port.")
