"""Load test of `python -m minibert.serve` against the server people write with transformers, on 127.0.0.1.

    python bench/serve.py --seconds 20 --clients 1,8,64 --threads 1
    python bench/serve.py --seconds 20 --clients 1,8,64 --threads 1 --workers 2   # two model workers per server
    python bench/serve.py --servers minibert@auto,hf,hf@auto      # each server at its own precision
    python bench/serve.py --soak 300          # 64 clients, 5 % malformed requests, answers checked, RSS watched
    python bench/serve.py --api --clients 64 --workers 2   # /v1/embeddings against /embed; /rerank against
                                                           # sentence-transformers' CrossEncoder behind FastAPI
    python bench/serve.py --attack 20         # small requests and /health while 1 MB bodies and stalled
                                              # connections arrive; and thread vs process pools for tokenising

Servers, each its own process with the same torch threads and precision (--precision, fp32 by default, or
NAME@PRECISION in --servers; `auto` is bf16 autocast where the CPU computes bf16 natively, as minibert.serve's
default; the transformers servers then run their forward under the same autocast; minibert@int8 is
`minibert.serve --quantize int8`):
  minibert     python -m minibert.serve (dynamic batching by token budget, packed forward)
  hf           transformers BertForSequenceClassification (sdpa) behind FastAPI, one forward per request
               (a plain `def` route: FastAPI's thread pool runs the forwards side by side)
  hf-batched   the same transformers model behind minibert's batcher (the batching win without the kernel's)
  ort-batched  ONNX Runtime (transformers' model exported and fused, bench/onnx_engine.py) behind the same batcher
Clients (asyncio + httpx) send 1-4 texts per request, SST-2 dev sentences or IMDB reviews, for a fixed time; the
table gives texts/s and latency percentiles. The model is MiniLM-L6 with a seeded random 2-class head (speed does
not depend on the head's values), or --model.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from common import MINILM, REPO, imdb, setup, sst2, table, write_json

HOST = "127.0.0.1"
SERVERS = ("minibert", "hf", "hf-batched", "ort-batched")
RERANK_SERVERS = (("minibert", "auto"), ("minibert", "fp32"), ("st-rerank", "fp32"))  # --api's /rerank rows
PASSAGES = 32  # --api: texts per /rerank request


# --- the servers (run in their own process: python bench/serve.py --serve NAME ...) -------------------------------

def hf_app(model_dir: str, precision: str):
    """The server people write: tokenizer + model, one forward per request, no batching across requests."""
    import torch
    import transformers
    from fastapi import FastAPI
    from pydantic import BaseModel

    from minibert.devices import autocast_dtype

    amp = autocast_dtype(precision, torch.device("cpu"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.BertForSequenceClassification.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    app = FastAPI()

    class Request(BaseModel):
        inputs: list[str]

    @app.post("/predict")
    def predict(request: Request) -> dict:
        enc = tokenizer(request.inputs, padding=True, truncation=True, max_length=512, return_tensors="pt")
        with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            probs = torch.softmax(model(**enc).logits.float(), dim=-1).tolist()
        results = []
        for row in probs:
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"label": names[best], "score": row[best], "scores": dict(zip(names, row))})
        return {"results": results}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


def st_rerank_app(model_dir: str, precision: str):
    """The reranking server people write with sentence-transformers: `CrossEncoder.rank` of the request's query and
    texts, one call per request (its own batches of 32 pairs), in FastAPI's thread pool; TEI's /rerank answer."""
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from sentence_transformers import CrossEncoder

    from minibert.devices import autocast_dtype

    amp = autocast_dtype(precision, torch.device("cpu"))
    encoder = CrossEncoder(model_dir, device="cpu")
    app = FastAPI()

    class Request(BaseModel):
        query: str
        texts: list[str]

    @app.post("/rerank")
    def rerank(request: Request) -> list[dict]:
        with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            ranked = encoder.rank(request.query, request.texts)
        return [{"index": int(r["corpus_id"]), "score": float(r["score"])} for r in ranked]

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


def batched_app(model_dir: str, opts, backend: str):
    """minibert's app and batcher, with another engine doing the forward passes on its padded batches:
    transformers' model ("hf-batched": the batching win without the kernel's) or ONNX Runtime's fused export of it
    ("ort-batched", bench/onnx_engine.py)."""
    import torch
    import transformers

    from minibert.dynamic_batching import collate_rows
    from minibert.serve import create_app, load_model

    engine, _ = load_model(opts)
    hf = transformers.BertForSequenceClassification.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    if backend == "ort-batched":
        from onnx_engine import OrtClassifier

        if engine.precision.dtype is not None:
            raise SystemExit("ort-batched runs fp32 only (the ONNX export is fp32); use ort-batched@fp32")
        logits = OrtClassifier(hf, opts.threads).logits
    else:
        logits = lambda batch: hf(**batch).logits.float()  # noqa: E731

    @torch.inference_mode()
    def forward(kind: str, rows: list) -> list:
        with engine.precision.autocast():
            return list(logits(collate_rows(rows, engine.tokenizer.pad_token_id)).float())

    engine.forward = forward  # the other library runs the batches; tokenising and answers stay minibert's
    engine.warm_up()
    return create_app(engine, opts)


def run_server(name: str, model_dir: str, port: int, threads: int, workers: int, precision: str) -> None:
    import torch
    import uvicorn

    from minibert.serve import Options

    torch.set_num_threads(threads)
    opts = Options(model=model_dir, port=port, threads=threads, workers=workers, precision=precision)
    if name == "hf":
        app = hf_app(model_dir, precision)
    elif name == "st-rerank":
        app = st_rerank_app(model_dir, precision)
    else:
        app = batched_app(model_dir, opts, name)
    uvicorn.run(app, host=HOST, port=port, log_level="warning")


# --- the client side ---------------------------------------------------------------------------------------------

def precision_name(precision: str) -> str:
    """What `precision` computes in on this CPU, as minibert.serve resolves it (`int8`: minibert's --quantize int8)."""
    import torch

    from minibert.devices import autocast_dtype

    if precision == "int8":
        return "int8"

    return "bf16 autocast" if autocast_dtype(precision, torch.device("cpu")) is not None else "fp32"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(name: str, model_dir: Path, threads: int, precision: str, extra: list[str],
          workers: int = 1) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    if name == "minibert":
        how = ["--quantize", "int8"] if precision == "int8" else ["--precision", precision]
        cmd = [sys.executable, "-m", "minibert.serve", "--model", str(model_dir), "--host", HOST, "--port", str(port),
               "--threads", str(threads), "--workers", str(workers), *how, *extra]
    else:
        cmd = [sys.executable, __file__, "--serve", name, "--model", str(model_dir), "--port", str(port),
               "--threads", str(threads), "--workers", str(workers), "--precision", precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{name} server not healthy within 180 s")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


BAD_BODIES = [b"{", b'{"inputs": []}', b'{"inputs": [3]}', b'{"inputs": ["a"], "x": 1}', b"\xff\xfe"]


def predict_requests(texts: list[str]) -> Callable[[random.Random], tuple[str, dict, list[str]]]:
    """/predict requests of 1-4 random texts: (route, body, the texts it carries)."""
    def make(rng: random.Random) -> tuple[str, dict, list[str]]:
        batch = [rng.choice(texts) for _ in range(rng.randint(1, 4))]
        return "/predict", {"inputs": batch}, batch

    return make


async def load(url: str, texts: list[str], clients: int, seconds: float, seed: int = 0, bad_fraction: float = 0.0,
               expected: dict[str, dict] | None = None, tolerance: float = 1e-4,
               requests_of: Callable | None = None) -> dict:
    """`clients` loops posting 1-4 random texts each for `seconds`: texts/s, latency percentiles, errors.

    `requests_of(texts)` makes the requests (default: /predict of 1-4 texts; "texts" counts what each carries: texts,
    or pairs for /rerank). With `expected` (offline predict's answer per text), an answer is wrong when a probability
    differs by more than `tolerance` or the label differs where offline predict's top two probabilities are more than
    2·tolerance apart (a near-tie may go either way under rounding); near-tie flips are counted apart."""
    import httpx

    latencies: list[float] = []
    counts = {"texts": 0, "errors": 0, "bad_sent": 0, "bad_answered": 0, "wrong": 0, "near_tie_flips": 0}
    max_diff = 0.0
    stop_at = time.monotonic() + seconds
    make = (requests_of or predict_requests)(texts)

    async def client(k: int) -> None:
        async with httpx.AsyncClient() as http:  # a connection pool of its own: one shared pool scans all 64
            await requests(k, http)

    async def requests(k: int, http: httpx.AsyncClient) -> None:
        nonlocal max_diff
        rng = random.Random(seed * 1000 + k)
        while time.monotonic() < stop_at:
            if rng.random() < bad_fraction:
                counts["bad_sent"] += 1
                r = await http.post(url + "/predict", content=rng.choice(BAD_BODIES), timeout=120,
                                    headers={"content-type": "application/json"})
                counts["bad_answered"] += r.status_code in (400, 422)
                continue
            route, body, batch = make(rng)
            start = time.perf_counter()
            try:
                r = await http.post(url + route, json=body, timeout=120)
            except httpx.HTTPError:
                counts["errors"] += 1
                continue
            if r.status_code != 200:
                counts["errors"] += 1
                continue
            latencies.append(time.perf_counter() - start)
            counts["texts"] += len(batch)
            if expected is not None:
                for text, got in zip(batch, r.json()["results"]):
                    want = expected[text]
                    diff = max(abs(got["scores"][k] - want["scores"][k]) for k in want["scores"])
                    max_diff = max(max_diff, diff)
                    top, second = sorted(want["scores"].values())[-1:-3:-1]
                    flip = got["label"] != want["label"]
                    counts["near_tie_flips"] += flip and top - second <= 2 * tolerance
                    counts["wrong"] += diff > tolerance or (flip and top - second > 2 * tolerance)

    began = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.monotonic() - began
    ms = [1000 * x for x in latencies]
    return {"texts_per_s": counts["texts"] / elapsed, "requests": len(ms), "p50_ms": percentile(ms, 0.5),
            "p95_ms": percentile(ms, 0.95), "p99_ms": percentile(ms, 0.99), "max_score_diff": max_diff, **counts}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_model(folder: Path) -> Path:
    """MiniLM-L6 with a seeded random 2-class head, saved with its tokenizer (a stand-in for a fine-tuned model)."""
    import torch

    from minibert import BertForSequenceClassification, BertTokenizer

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(MINILM, id2label={0: "negative", 1: "positive"},
                                                          label2id={"negative": 0, "positive": 1})
    model.save_pretrained(folder)
    BertTokenizer.from_pretrained(MINILM).save_pretrained(folder)
    return folder


def soak(model_dir: Path, args: argparse.Namespace) -> dict:
    """64 clients for args.soak seconds with 5 % malformed requests; every good answer against offline predict."""
    from minibert.predict import main as predict_main

    texts = sst2("dev")
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.txt", Path(tmp) / "out.jsonl"
        inp.write_text("".join(t + "\n" for t in texts))
        sys.stdin = open(inp)  # predict reads `-` from stdin
        assert predict_main(["--model", str(model_dir), "--input", "-", "--output", str(out), "--all-scores",
                             "--long-text", "truncate", "--precision", args.precision]) == 0  # as the server does
        expected = dict(zip(texts, (json.loads(line) for line in out.read_text().splitlines())))
    proc, url = start("minibert", model_dir, args.threads, args.precision, args.minibert_flags.split(),
                      args.workers)
    # bf16 answers move with the batch a text lands in (other padding, other matrix shapes): 8-bit mantissas
    tolerance = 1e-4 if precision_name(args.precision) == "fp32" else 5e-3
    asyncio.run(load(url, texts, 64, 10, seed=1, bad_fraction=0.05, expected=expected, tolerance=tolerance))
    rss_start = rss_mb(proc.pid)
    series: list[float] = []

    async def watch_rss() -> dict:  # RSS every 10 s, to tell a leak (steady growth) from a plateau
        task = asyncio.ensure_future(load(url, texts, 64, args.soak, seed=2, bad_fraction=0.05, expected=expected,
                                          tolerance=tolerance))
        while not task.done():
            series.append(round(rss_mb(proc.pid), 1))
            await asyncio.wait({task}, timeout=10)
        return task.result()

    result = asyncio.run(watch_rss())
    result.update(tolerance=tolerance, rss_start_mb=rss_start, rss_end_mb=rss_mb(proc.pid), rss_every_10s_mb=series,
                  exit_code=stop(proc))
    result["rss_growth"] = result["rss_end_mb"] / rss_start - 1
    # the server trims its heap every 30 s (minibert/malloc.py): RSS is a saw-tooth, and a leak shows in its lows
    result["rss_low_per_minute_mb"] = [min(series[i:i + 6]) for i in range(0, len(series) - 5, 6)]
    return result


# --- attack mode ---------------------------------------------------------------------------------------------------

def fresh_words_body(size: int) -> bytes:
    """A JSON body of `size` bytes: 8 texts of random 8-letter hex words, new ones each time (the tokenizer caches
    the words it has seen, so repeated bodies would cost it nothing)."""
    import secrets

    per_text = size // 8 - 16
    texts = []
    for _ in range(8):
        letters = secrets.token_hex(per_text // 2)
        texts.append(" ".join(letters[i:i + 8] for i in range(0, len(letters), 9)))
    return json.dumps({"inputs": texts}).encode()


async def attacked_load(url: str, texts: list[str], seconds: float, clients: int, big_senders: int,
                        stalled: int) -> dict:
    """`clients` loops of small requests (1-4 SST-2 sentences) and a /health probe every 50 ms for `seconds`, while
    `big_senders` loops post 1 MB bodies of fresh words and `stalled` connections (reopened when the server closes
    them) each send their headers and one byte of a body. Latencies of the small requests and of /health."""
    import httpx

    host, port = url.removeprefix("http://").split(":")
    small_ms: list[float] = []
    health_ms: list[float] = []
    counts = {"small_errors": 0, "health_errors": 0, "big_sent": 0, "big_answers": {}, "stalled_opened": 0}
    stop_at = time.monotonic() + seconds

    async def timed(request: Awaitable, latencies: list[float], errors: str) -> None:
        """One request: its latency when it is answered 200, else one more of `errors`."""
        began = time.perf_counter()
        try:
            ok = (await request).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append(1000 * (time.perf_counter() - began))
        else:
            counts[errors] += 1

    async def small(k: int) -> None:
        rng = random.Random(k)
        async with httpx.AsyncClient() as http:
            while time.monotonic() < stop_at:
                batch = [rng.choice(texts) for _ in range(rng.randint(1, 4))]
                await timed(http.post(url + "/predict", json={"inputs": batch}, timeout=60), small_ms,
                            "small_errors")

    async def health() -> None:
        async with httpx.AsyncClient() as http:
            while time.monotonic() < stop_at:
                await timed(http.get(url + "/health", timeout=30), health_ms, "health_errors")
                await asyncio.sleep(0.05)

    async def big() -> None:
        async with httpx.AsyncClient() as http:
            while time.monotonic() < stop_at:
                body = await asyncio.to_thread(fresh_words_body, 1_000_000)
                counts["big_sent"] += 1
                try:
                    r = await http.post(url + "/predict", content=body, timeout=120,
                                        headers={"content-type": "application/json"})
                    status = str(r.status_code)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                counts["big_answers"][status] = counts["big_answers"].get(status, 0) + 1

    async def stall() -> None:
        while time.monotonic() < stop_at:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.1)
                continue
            counts["stalled_opened"] += 1
            writer.write(b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                         b"content-length: 1000\r\n\r\n{")
            try:
                await asyncio.wait_for(reader.read(), max(0.0, stop_at - time.monotonic()))
            except (TimeoutError, OSError):
                pass
            writer.close()

    tasks = [small(k) for k in range(clients)] + [health()]
    tasks += [big() for _ in range(big_senders)] + [stall() for _ in range(stalled)]
    await asyncio.gather(*tasks)
    return {"small_requests": len(small_ms), "small_p50_ms": percentile(small_ms, 0.5),
            "small_p99_ms": percentile(small_ms, 0.99), "health_requests": len(health_ms),
            "health_p50_ms": percentile(health_ms, 0.5), "health_p99_ms": percentile(health_ms, 0.99), **counts}


def tokenize_in(pool_kind: str, model_dir: str, texts: list[str]) -> dict:
    """How a pool of 2 threads or 2 processes tokenising for the event loop serves it: the loop's lag (a 5 ms timer's
    lateness) while a 1 MB body of fresh words is tokenised, and requests of 1-4 SST-2 sentences tokenised per s."""
    import concurrent.futures

    from minibert.inference import InferenceModel

    if pool_kind == "threads":
        model = InferenceModel.load(model_dir, precision="fp32")
        pool = concurrent.futures.ThreadPoolExecutor(2)
        prepare = model.prepare
    else:
        pool = concurrent.futures.ProcessPoolExecutor(2, initializer=_load_for_process, initargs=(model_dir,))
        prepare = _prepare_in_process
    rng = random.Random(0)
    requests = [[rng.choice(texts) for _ in range(rng.randint(1, 4))] for _ in range(400)]
    list(pool.map(prepare, ["predict"] * 4, [["warm-up"]] * 4))  # the processes start and load the tokenizer

    async def lag() -> list[float]:
        big = json.loads(fresh_words_body(1_000_000))["inputs"]
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(pool, prepare, "predict", big)
        late = []
        while not work.done():
            began = time.perf_counter()
            await asyncio.sleep(0.005)
            late.append(1000 * (time.perf_counter() - began - 0.005))
        await work
        return late

    late = asyncio.run(lag())
    began = time.perf_counter()
    list(pool.map(prepare, ["predict"] * len(requests), requests))
    per_s = len(requests) / (time.perf_counter() - began)
    pool.shutdown()
    return {"pool": pool_kind, "loop_lag_p50_ms": percentile(late, 0.5), "loop_lag_p99_ms": percentile(late, 0.99),
            "loop_lag_max_ms": max(late), "small_requests_per_s": per_s}


_process_model = None


def _load_for_process(model_dir: str) -> None:
    global _process_model
    from minibert.inference import InferenceModel

    _process_model = InferenceModel.load(model_dir, precision="fp32")


def _prepare_in_process(kind: str, texts: list[str]):
    return _process_model.prepare(kind, texts)


def attack(model_dir: Path, args: argparse.Namespace) -> list[dict]:
    texts = sst2("dev")
    rows = [{"part": "pools", **tokenize_in(kind, str(model_dir), texts)} for kind in ("threads", "processes")]
    proc, url = start("minibert", model_dir, args.threads, args.precision, args.minibert_flags.split(), args.workers)
    try:
        asyncio.run(load(url, texts, 4, 3))  # warm-up
        for condition, big_senders, stalled in (("quiet", 0, 0), ("attacked", 2, 300)):
            r = asyncio.run(attacked_load(url, texts, args.attack, 4, big_senders, stalled))
            rows.append({"part": "attack", "condition": condition, "clients": 4, "big_senders": big_senders,
                         "stalled": stalled, **r, "big_answers": json.dumps(r["big_answers"], sort_keys=True)})
    finally:
        rows.append({"part": "exit", "exit_code": stop(proc)})
    return rows


# --- API mode: the routes clients already speak ---------------------------------------------------------------------

def embedding_requests(route: str) -> Callable:
    """/embed or /v1/embeddings requests of 1-4 random texts (the same texts for both routes at the same seed)."""
    def requests_of(texts: list[str]) -> Callable[[random.Random], tuple[str, dict, list[str]]]:
        def make(rng: random.Random) -> tuple[str, dict, list[str]]:
            batch = [rng.choice(texts) for _ in range(rng.randint(1, 4))]
            body = {"inputs": batch} if route == "/embed" else {"input": batch, "model": "all-MiniLM-L6-v2"}
            return route, body, batch

        return make

    return requests_of


def rerank_requests(texts: list[str]) -> Callable[[random.Random], tuple[str, dict, list[str]]]:
    """/rerank requests: one random text as the query, PASSAGES others as the passages ("texts" counts pairs)."""
    def make(rng: random.Random) -> tuple[str, dict, list[str]]:
        passages = rng.sample(texts, PASSAGES)
        return "/rerank", {"query": rng.choice(texts), "texts": passages}, passages

    return make


def build_reranker(folder: Path) -> Path:
    """MiniLM-L6 with a seeded one-logit head, saved by sentence-transformers' CrossEncoder (a stand-in for a trained
    reranker: speed does not depend on the head's values)."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    encoder = CrossEncoder(str(MINILM), num_labels=1, device="cpu")
    with torch.no_grad():
        encoder.model.classifier.weight.normal_(0, 0.5)
    encoder.save(str(folder))
    return folder


def embedding_diff(url: str, texts: list[str]) -> float:
    """The largest difference between /embed's and /v1/embeddings' vectors for the same texts."""
    import httpx

    ours = httpx.post(url + "/embed", json={"inputs": texts}, timeout=120).json()["embeddings"]
    openai = httpx.post(url + "/v1/embeddings", json={"input": texts}, timeout=120).json()["data"]
    return max(abs(x - y) for u, d in zip(ours, openai) for x, y in zip(u, d["embedding"]))


def ranking_diff(ours: list[dict], theirs: list[dict]) -> tuple[bool, float]:
    """Whether two /rerank answers order the texts the same, and their largest score difference per text."""
    by_index = {r["index"]: r["score"] for r in theirs}
    same_order = [r["index"] for r in ours] == [r["index"] for r in theirs]
    return same_order, max(abs(r["score"] - by_index[r["index"]]) for r in ours)


def api(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """/v1/embeddings against /embed on one minibert server (MiniLM, the server's default precision), in alternating
    rounds; then /rerank of 1 query x PASSAGES texts on minibert's server against sentence-transformers'
    CrossEncoder.rank behind FastAPI, on the same reranker folder."""
    data = {"sst2": sst2("dev"), "imdb": imdb(500)}
    rows: list[dict] = []
    parts = args.api_parts.split(",")
    if "embeddings" in parts:
        rows += api_embeddings(args, data)
    if "rerank" in parts:
        rows += api_rerank(args, data["sst2"], tmp)
    return rows


def api_embeddings(args: argparse.Namespace, data: dict[str, list[str]]) -> list[dict]:
    rows: list[dict] = []
    proc, url = start("minibert", MINILM, args.threads, "auto", args.minibert_flags.split(), args.workers)
    try:
        diff = embedding_diff(url, data["sst2"][:8])
        for dataset in args.data.split(","):
            asyncio.run(load(url, data[dataset], 4, 3, requests_of=embedding_requests("/embed")))  # warm-up
            for clients in map(int, args.clients.split(",")):
                for round_ in range(args.rounds):
                    for route in ("/embed", "/v1/embeddings"):
                        r = asyncio.run(load(url, data[dataset], clients, args.seconds, seed=round_,
                                             requests_of=embedding_requests(route)))
                        rows.append({"part": "embeddings", "server": "minibert", "route": route, "data": dataset,
                                     "clients": clients, "round": round_, "precision": precision_name("auto"),
                                     "max_vector_diff": diff, **r})
                        print(table(rows[-1:], API_COLUMNS).splitlines()[-1], flush=True)
    finally:
        stop(proc)
    return rows


def api_rerank(args: argparse.Namespace, passages: list[str], tmp: Path) -> list[dict]:
    import httpx

    rows: list[dict] = []
    folder = build_reranker(tmp / "reranker")
    probe = {"query": passages[0], "texts": passages[1:1 + PASSAGES]}
    answers = {}
    for name, precision in RERANK_SERVERS:
        flags = args.minibert_flags.split() if name == "minibert" else []
        proc, url = start(name, folder, args.threads, precision, flags, args.workers)
        try:
            answers[name, precision] = httpx.post(url + "/rerank", json=probe, timeout=120).json()
            asyncio.run(load(url, passages, 4, 3, requests_of=rerank_requests))  # warm-up
            for clients in map(int, args.clients.split(",")):
                r = asyncio.run(load(url, passages, clients, args.rerank_seconds, requests_of=rerank_requests))
                rows.append({"part": "rerank", "server": name, "data": "sst2", "clients": clients,
                             "precision": precision_name(precision), "answer_of": f"{name}@{precision}", **r})
                print(table(rows[-1:], API_COLUMNS).splitlines()[-1], flush=True)
        finally:
            stop(proc)
    reference = answers[RERANK_SERVERS[-1]]  # sentence-transformers' server runs last
    for row in (r for r in rows if r["part"] == "rerank"):
        server, _, precision = row.pop("answer_of").partition("@")
        row["same_order_as_st"], row["max_score_diff_vs_st"] = ranking_diff(answers[server, precision], reference)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=(*SERVERS[1:], "st-rerank"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help="a classifier folder (default: MiniLM-L6 with a random head, in a tmp folder)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--data", default="sst2,imdb")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (of each model worker)")
    parser.add_argument("--workers", type=int, default=1,
                        help="model workers of each batched server (minibert, hf-batched, ort-batched); the hf server "
                             "runs its forwards in FastAPI's thread pool whatever this says")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--minibert-flags", default="", help="extra flags for minibert.serve, e.g. '--max-wait-ms 2'")
    parser.add_argument("--api", action="store_true",
                        help="measure the API routes instead: /v1/embeddings against /embed, and /rerank against "
                             "sentence-transformers' CrossEncoder.rank behind FastAPI")
    parser.add_argument("--rounds", type=int, default=2, help="--api: alternating rounds of /embed and /v1/embeddings")
    parser.add_argument("--api-parts", default="embeddings,rerank", help="--api: which comparisons to run")
    parser.add_argument("--rerank-seconds", type=float, default=90,
                        help="--api: seconds per /rerank server and client count (64 clients keep 2,048 pairs in "
                             "flight: many seconds of work each round)")
    parser.add_argument("--soak", type=float, default=0, help="run the soak for this many seconds instead")
    parser.add_argument("--attack", type=float, default=0,
                        help="run the attack mode for this many seconds per condition instead")
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve, args.model, args.port, args.threads, args.workers, args.precision)
        return
    setup(args.threads)  # the record's "threads" are the servers' (this process only sends requests)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_model(Path(tmp) / "minilm-classifier")
        if args.api:
            rows = api(args, Path(tmp))
            print(table(rows, API_COLUMNS))
            for line in api_summary(rows):
                print(line)
            write_json("serve_api", {"rows": rows, "seconds": args.seconds, "workers": args.workers})
            return
        if args.attack:
            rows = attack(model_dir, args)
            print(json.dumps(rows, indent=2))
            write_json("serve_attack", {"rows": rows, "seconds": args.attack})
            return
        if args.soak:
            result = soak(model_dir, args)
            print(json.dumps(result, indent=2))
            write_json("serve_soak", {"soak": result})
            return
        data = {"sst2": sst2("dev"), "imdb": imdb(500)}
        rows = []
        for spec in args.servers.split(","):
            name, _, precision = spec.partition("@")
            precision = precision or args.precision
            proc, url = start(name, model_dir, args.threads, precision, args.minibert_flags.split(), args.workers)
            label = name if precision == args.precision else spec
            try:
                for dataset in args.data.split(","):
                    asyncio.run(load(url, data[dataset], 4, 3))  # warm-up
                    for clients in map(int, args.clients.split(",")):
                        r = asyncio.run(load(url, data[dataset], clients, args.seconds))
                        rows.append({"server": label, "data": dataset, "clients": clients,
                                     "precision": precision_name(precision), **r})
                        print(table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
            finally:
                stop(proc)
    print(table(rows, COLUMNS))
    for dataset in args.data.split(","):
        for clients in map(int, args.clients.split(",")):
            cell = {r["server"]: r for r in rows if r["data"] == dataset and r["clients"] == clients}
            for ours in (s for s in cell if s.startswith("minibert")):
                ratios = [f"{cell[ours]['texts_per_s'] / cell[o]['texts_per_s']:.2f}x {o} (p99 "
                          f"{cell[ours]['p99_ms']:.0f} vs {cell[o]['p99_ms']:.0f} ms)"
                          for o in cell if not o.startswith("minibert")]
                print(f"{dataset} {clients} clients: {ours} throughput {', '.join(ratios)}")
    write_json("serve", {"rows": rows, "seconds": args.seconds, "workers": args.workers})


def api_summary(rows: list[dict]) -> list[str]:
    """The issue's two ratios per data set and client count: /v1/embeddings ÷ /embed texts/s (mean of the rounds),
    and minibert's /rerank pairs/s and p99 against sentence-transformers'."""
    lines = []
    for dataset, clients in dict.fromkeys((r["data"], r["clients"]) for r in rows):
        cell = [r for r in rows if r["data"] == dataset and r["clients"] == clients]
        per_route = {route: [r["texts_per_s"] for r in cell if r.get("route") == route]
                     for route in ("/embed", "/v1/embeddings")}
        if all(per_route.values()):
            ratio = (sum(per_route["/v1/embeddings"]) / len(per_route["/v1/embeddings"])) / (
                sum(per_route["/embed"]) / len(per_route["/embed"]))
            lines.append(f"{dataset} {clients} clients: /v1/embeddings ÷ /embed texts/s {ratio:.3f}")
        reranks = [r for r in cell if r["part"] == "rerank"]
        theirs = next((r for r in reranks if r["server"] == "st-rerank"), None)
        for ours in (r for r in reranks if r["server"] == "minibert" and theirs):
            lines.append(f"{dataset} {clients} clients: /rerank minibert ({ours['precision']}) ÷ sentence-transformers "
                         f"pairs/s {ours['texts_per_s'] / theirs['texts_per_s']:.2f}x, p99 {ours['p99_ms']:.0f} vs "
                         f"{theirs['p99_ms']:.0f} ms")
    return lines


API_COLUMNS = ["part", "server", "route", "precision", "data", "clients", "texts_per_s", "p50_ms", "p99_ms",
               "requests", "errors"]
COLUMNS = ["server", "precision", "data", "clients", "texts_per_s", "p50_ms", "p95_ms", "p99_ms", "requests", "errors"]

if __name__ == "__main__":
    main()
