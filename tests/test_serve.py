"""The HTTP app in-process (FastAPI's TestClient, no socket): answers equal offline predict / embeddings, every bad
request gets its status and sentence, metrics count what happened; and the batcher on its own."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from minibert.config import BertConfig  # noqa: E402
from minibert.dynamic_batching import Batcher, QueueFull, Row, TooBig  # noqa: E402
from minibert.heads import BertForSequenceClassification  # noqa: E402
from minibert.inference import InferenceModel  # noqa: E402
from minibert.long_text_options import LongText, write_record  # noqa: E402
from minibert.pooling import SentenceEncoder  # noqa: E402
from minibert.predict import main as predict_main  # noqa: E402
from minibert.serve import Options, create_app, load_model, parse_args  # noqa: E402
from minibert.tokenizer import BertTokenizer  # noqa: E402
from tests.test_pooling import write_st_layout, write_tiny_encoder  # noqa: E402
from tests.tiny import write_csv, write_tiny_model  # noqa: E402

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TEXTS = ["good movie", "the plot was awful and boring", "a", "not very fun , but the actor was nice",
         "worst film", "it was fine"]


def write_classifier(folder: Path, base: Path | None = None, seed: int = 0) -> Path:
    """A 3-class classifier: the MiniLM encoder (or a tiny random one) with a seeded random head, saved with its
    tokenizer. Nothing is fine-tuned: the labels are arbitrary but deterministic, which is all a server test needs."""
    label2id = {v: k for k, v in LABELS.items()}
    torch.manual_seed(seed)
    if base is None:  # wider random weights than tiny.py's, so that texts get visibly different vectors
        base = write_tiny_model(folder.parent / f"{folder.name}-base", seed)
        config = BertConfig.from_json(base / "config.json", initializer_range=0.2, id2label=LABELS, label2id=label2id)
        model = BertForSequenceClassification(config).eval()
    else:
        model = BertForSequenceClassification.from_pretrained(base, id2label=LABELS, label2id=label2id)
    with torch.no_grad():  # centre the random head on these texts' pooled vectors, so that the labels vary
        tokenizer = BertTokenizer.from_pretrained(base)
        pooled = model.bert(**tokenizer(TEXTS, padding=True, return_tensors="pt")).pooler_output
        model.classifier.weight.normal_(0, 0.3)  # logits of std ~1.5 over these texts
        model.classifier.weight /= pooled.std(0).clamp(min=1e-6)
        model.classifier.bias.copy_(-model.classifier.weight @ pooled.mean(0))
    model.save_pretrained(folder)
    BertTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def offline_predict(folder: Path, texts: list[str], tmp: Path, pairs: list[str] | None = None,
                    max_length: int = 512, flags: tuple[str, ...] = ("--long-text", "truncate")
                    ) -> list[dict[str, Any]]:
    """`python -m minibert.predict --all-scores` on the same texts, in fp32, with `flags` (the server's)."""
    rows = [(t,) if pairs is None else (t, p) for t, p in zip(texts, pairs or texts)]
    header = ("text",) if pairs is None else ("text", "text_pair")
    csv = write_csv(tmp / "offline.csv", rows, header)
    out = tmp / "offline.jsonl"
    argv = ["--model", str(folder), "--input", str(csv), "--output", str(out), "--all-scores", "--precision", "fp32",
            "--max-length", str(max_length), "--device", "cpu", *flags]
    if pairs is not None:
        argv += ["--text-pair-column", "text_pair"]
    assert predict_main(argv) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def assert_same_predictions(served: list[dict], offline: list[dict], tol: float = 1e-5) -> None:
    assert len(served) == len(offline)
    for s, o in zip(served, offline):
        assert s["label"] == o["label"]
        assert abs(s["score"] - o["score"]) < tol
        assert s["scores"].keys() == o["scores"].keys()
        assert max(abs(s["scores"][k] - o["scores"][k]) for k in o["scores"]) < tol


def client_for(folder: Path, **options: Any) -> TestClient:
    opts = Options(model=str(folder), precision="fp32", **{"tokenizer_processes": 0, **options})
    engine, reranker = load_model(opts)
    engine.warm_up()
    return TestClient(create_app(engine, opts, reranker), base_url="http://localhost")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_classifier(tmp_path_factory.mktemp("tiny") / "classifier")


@pytest.fixture(scope="module")
def client(tiny_classifier: Path) -> Iterator[TestClient]:
    with client_for(tiny_classifier) as c:
        yield c


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- answers -----------------------------------------------------------------------------------------------------

def test_predict_equals_offline_predict(client: TestClient, tiny_classifier: Path, tmp_path: Path) -> None:
    response = client.post("/predict", json={"inputs": TEXTS})
    assert response.status_code == 200
    results = response.json()["results"]
    assert_same_predictions(results, offline_predict(tiny_classifier, TEXTS, tmp_path))
    assert not any(r["truncated"] for r in results)
    assert len({r["label"] for r in results}) > 1  # the random head does tell these texts apart
    single = client.post("/predict", json={"inputs": TEXTS[1], "tokens": True}).json()["results"]
    assert_same_predictions(single, results[1:2])
    assert single[0]["tokens"] == ["[CLS]", "the", "plot", "was", "awful", "and", "boring", "[SEP]"]


def test_predict_pairs_equal_offline_predict(client: TestClient, tiny_classifier: Path, tmp_path: Path) -> None:
    pairs = ["the film", "bad", "good good good", "x", "nice actor", "the end"]
    response = client.post("/predict", json={"inputs": [[t, p] for t, p in zip(TEXTS, pairs)], "tokens": True})
    assert response.status_code == 200
    results = response.json()["results"]
    assert_same_predictions(results, offline_predict(tiny_classifier, TEXTS, tmp_path, pairs))
    assert results[0]["tokens"] == ["[CLS]", "good", "movie", "[SEP]", "the", "film", "[SEP]"]


def test_minilm_classifier_equals_offline_predict(tmp_path: Path, minilm_dir: Path, shared_dir: Path) -> None:
    folder = write_classifier(tmp_path / "minilm-classifier", base=minilm_dir)
    lines = (shared_dir / "data" / "sst2" / "dev.tsv").read_text().splitlines()[1:33]
    texts = [line.split("\t")[0] for line in lines]
    with client_for(folder, max_batch_tokens=300) as c:  # several batches, of mixed lengths
        results = c.post("/predict", json={"inputs": texts}).json()["results"]
    assert_same_predictions(results, offline_predict(folder, texts, tmp_path))


def test_embed_equals_sentence_transformers(tmp_path: Path, minilm_dir: Path, shared_dir: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    folder = write_st_layout(tmp_path / "st", minilm_dir)
    texts = [line.split("\t")[0] for line in (shared_dir / "data" / "sst2" / "dev.tsv").read_text().splitlines()[1:17]]
    reference = st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True).cpu()
    with client_for(folder) as c:
        body = c.post("/embed", json={"inputs": texts}).json()
        assert c.get("/info").json()["task"] == "embedding"
        error = c.post("/predict", json={"inputs": ["a"]})
    assert (torch.tensor(body["embeddings"]) - reference).abs().max().item() < 1e-5
    assert body["pooling"]["mode"] == "mean" and body["pooling"]["normalize"] is True
    assert "modules.json" in body["pooling"]["source"]
    assert error.status_code == 400 and "without a classification head; use /embed." in error.json()["error"]


def test_embed_tiny_layout_and_default_pooling(tmp_path: Path, tiny_classifier: Path, client: TestClient) -> None:
    folder = write_st_layout(tmp_path / "st", write_tiny_encoder(tmp_path / "base"), mode="cls", normalize=False)
    with client_for(folder) as c:
        served = torch.tensor(c.post("/embed", json={"inputs": TEXTS}).json()["embeddings"])
        assert c.get("/info").json()["task"] == "embedding"
    assert (served - SentenceEncoder.from_pretrained(folder).encode(TEXTS)).abs().max().item() < 1e-6
    # a classifier folder has no pooling files: the answer says which pooling it used
    body = client.post("/embed", json={"inputs": TEXTS[:2]}).json()
    assert body["pooling"]["source"].startswith("default (no sentence-transformers files): mean pooling")
    expected = SentenceEncoder.from_pretrained(tiny_classifier).encode(TEXTS[:2])
    assert (torch.tensor(body["embeddings"]) - expected).abs().max().item() < 1e-6


def test_truncation(tiny_classifier: Path, tmp_path: Path) -> None:
    long_text = "the movie was good and " * 10  # 52 tokens with [CLS] and [SEP]
    texts = [long_text, "bad"]
    with client_for(tiny_classifier, max_length=16, long_text="truncate") as c:
        results = c.post("/predict", json={"inputs": texts, "tokens": True}).json()["results"]
    assert [r["truncated"] for r in results] == [True, False]
    assert len(results[0]["tokens"]) == 16 and results[0]["tokens"][-1] == "[SEP]"
    assert_same_predictions(results, offline_predict(tiny_classifier, texts, tmp_path, max_length=16))
    with client_for(tiny_classifier, max_length=16, no_truncate=True) as c:
        refused = c.post("/predict", json={"inputs": texts})
        assert c.post("/predict", json={"inputs": ["bad"]}).status_code == 200
    assert refused.status_code == 422
    assert refused.json()["error"] == ("input 0 has more than the limit of 16 tokens; shorten it, or start the "
                                       "server without --no-truncate to have it read as --long-text says.")


@pytest.fixture(scope="module")
def minilm_long_reviews(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, shared_dir: Path
                        ) -> tuple[Path, list[str]]:
    """A MiniLM classifier with a seeded head, and three IMDB reviews of 300-400 tokens plus a short text."""
    folder = write_classifier(tmp_path_factory.mktemp("long") / "minilm-classifier", base=minilm_dir)
    rows = csv.DictReader(io.StringIO((shared_dir / "data" / "imdb" / "train.csv").read_text()[:100_000]))
    reviews = [r["text"] for r in rows if 1500 < len(r["text"]) < 2000][:3]
    return folder, [*reviews, "a short one"]


def window_reference(folder: Path, texts: list[str], max_length: int, stride: int, pool: str) -> list[list[float]]:
    """Probabilities computed apart from minibert's long-text code: transformers' tokenizer cuts the windows
    (`return_overflowing_tokens`), the model scores each, the logits are pooled per text by hand."""
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(str(folder))(texts, max_length=max_length, truncation=True, stride=stride,
                                                      return_overflowing_tokens=True, padding=True,
                                                      return_tensors="pt")
    model = BertForSequenceClassification.from_pretrained(folder, attn_impl="math")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       token_type_ids=enc["token_type_ids"]).logits
    docs = enc["overflow_to_sample_mapping"].tolist()
    pooled = [torch.stack([logits[i] for i, d in enumerate(docs) if d == doc]) for doc in range(len(texts))]
    return [(p.amax(0) if pool == "max" else p.mean(0)).softmax(-1).tolist() for p in pooled]


@pytest.mark.parametrize("mode", ["truncate", "head-tail", "chunks", "recorded"])
def test_long_reviews_answer_what_predict_answers(mode: str, minilm_long_reviews: tuple[Path, list[str]],
                                                  tmp_path: Path) -> None:
    """The server reads long texts as predict does, in every mode ("recorded": no flag, the model folder's
    long_text.json as finetune writes it), to 1e-5 in fp32; each answer says how its text was read; windows are
    pooled as an independent computation pools them."""
    folder, reviews = minilm_long_reviews
    (folder / "long_text.json").unlink(missing_ok=True)
    if mode == "recorded":
        write_record(folder, LongText("chunks", 16, 24), 96, "max")
        flags: tuple[str, ...] = ()
        server: dict[str, Any] = {}
    else:
        flags = ("--long-text", mode, "--head-tokens", "40", "--stride", "24")
        server = {"long_text": mode, "head_tokens": 40, "stride": 24, "max_length": 96}
    offline = offline_predict(folder, reviews, tmp_path, max_length=96, flags=flags)
    with client_for(folder, **server) as c:
        results = c.post("/predict", json={"inputs": reviews}).json()["results"]
    assert_same_predictions(results, offline)
    if mode in ("chunks", "recorded"):
        assert all(r["windows"] > 3 for r in results[:3]) and results[3]["truncated"] is False
        reference = window_reference(folder, reviews, 96, 24, "max" if mode == "recorded" else "mean")
        for result, probs in zip(results, reference):
            assert max(abs(a - b) for a, b in zip(result["scores"].values(), probs)) < 1e-5
    else:
        assert [r["truncated"] for r in results] == [True, True, True, False]


# --- bad requests --------------------------------------------------------------------------------------------------

BAD = [
    (b"{", 400, "the body is not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    (b'{"inputs": ["caf\xe9"]}', 400, "the body is not UTF-8 (byte 16 cannot be decoded)"),
    (b"", 400, "the body is not valid JSON"),
    (b'["a"]', 422, "the body must be a JSON object"),
    (b'{"inputs": []}', 422, "'inputs' is an empty list; send at least one text."),
    (b'{"inputs": 3}', 422, "'inputs' must be a string or a list of strings"),
    (b'{"inputs": ["a", 3]}', 422, "inputs[1] is 3; every input must be a string"),
    (b'{"inputs": [["a", "b"], "c"]}', 422, 'inputs[1] is "c"; every input'),
    (b'{"inputs": [["a", "b", "c"]]}', 422, 'inputs[0] is ["a", "b", "c"]'),
    (b'{"inputs": ["a"], "top_k": 2}', 422, "unknown field(s) 'top_k'; the fields are inputs, tokens."),
    (b'{"text": "a"}', 422, "unknown field(s) 'text'"),
    (b"{}", 422, "the field 'inputs' is missing"),
    (b'{"inputs": ["a"], "tokens": "yes"}', 422, "the field 'tokens' must be true or false."),
    (json.dumps({"inputs": ["a"] * 65}).encode(), 413, "'inputs' has 65 texts, more than the limit of 64 per request"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD)
def test_bad_requests(client: TestClient, body: bytes, status: int, message: str) -> None:
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"].startswith(message)
    assert client.post("/predict", json={"inputs": ["still serving"]}).status_code == 200


def test_bad_embed_requests_and_unknown_routes(client: TestClient) -> None:
    pairs = client.post("/embed", json={"inputs": [["a", "b"]]})
    assert pairs.status_code == 422
    assert pairs.json()["error"] == "/embed takes texts, not pairs; send a list of strings."
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"].startswith("there is no /nowhere")
    assert client.get("/predict").status_code == 405


def test_body_limit_and_full_queue(tiny_classifier: Path) -> None:
    with client_for(tiny_classifier, max_body_bytes=100, max_queue_tokens=9, max_inputs=2, max_length=4) as c:
        big = c.post("/predict", json={"inputs": ["good " * 30]})
        assert big.status_code == 413
        assert big.json()["error"] == ("the body has 165 bytes, more than the limit of 100; send fewer or shorter "
                                       "texts per request.")
        # no Content-Length (chunked): the limit is enforced while reading
        chunked = c.post("/predict", content=iter([b'{"inputs": ["', b"good " * 30, b'"]}']),
                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and "over the limit of 100 bytes" in chunked.json()["error"]
        # the queue counts tokens: two texts of 4 tokens fit in 9, and a request alone over 9 can never be queued
        assert c.post("/predict", json={"inputs": ["a b", "c d"]}).status_code == 200
        c.app.state.batcher.admit(5)  # as if a request of 40 bytes were being tokenised
        full = c.post("/predict", json={"inputs": ["a b", "c"]})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["error"] == ("the server is busy (5 tokens are waiting, and 7 more would pass the limit "
                                        "of 9); retry in a second.")
        c.app.state.batcher.release(5)
        assert c.post("/predict", json={"inputs": ["a b", "c"]}).status_code == 200


def test_client_disconnect_drops_its_texts(tiny_classifier: Path) -> None:
    """A client that goes away while its texts wait: 499 in the metrics, the texts never reach the model."""
    with client_for(tiny_classifier, max_wait_ms=1500) as c:
        app = c.app
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": b'{"inputs": ["good", "bad"]}', "more_body": False},
                    {"type": "http.disconnect"}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(60)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"host", b"localhost")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        texts_before = metric(c, 'minibert_texts_total{kind="predict"}')
        asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
        assert sent[0]["status"] == 499
        time.sleep(1.6)  # past the batch's wait: the worker found nothing left to run
        assert app.state.batcher.depth() == 0
        assert metric(c, 'minibert_texts_total{kind="predict"}') == texts_before
        assert metric(c, 'minibert_requests_total{endpoint="/predict",status="499"}') == 1
        assert c.post("/predict", json={"inputs": ["good"]}).status_code == 200


def test_failed_forward_is_a_500_and_the_server_serves_on(tiny_classifier: Path) -> None:
    with client_for(tiny_classifier) as c:
        batcher = c.app.state.batcher
        forward = batcher.forward

        def failing(kind: str, rows: list[Row]) -> list:
            if any(len(r) == 3 for r in rows):  # [CLS] word [SEP]
                raise RuntimeError("out of memory")
            return forward(kind, rows)

        batcher.forward = failing
        failed = c.post("/predict", json={"inputs": ["good"]})
        assert failed.status_code == 500
        assert failed.json()["error"] == ("the model failed on this request (RuntimeError); the server logged the "
                                          "details.")
        assert metric(c, 'minibert_requests_total{endpoint="/predict",status="500"}') == 1
        assert metric(c, 'minibert_failures_total{kind="forward"}') == 1
        assert c.post("/predict", json={"inputs": ["good movie"]}).status_code == 200


# --- health, info, metrics, page ---------------------------------------------------------------------------------

def test_health_info_metrics_page(tiny_classifier: Path) -> None:
    with client_for(tiny_classifier, max_batch_tokens=1000, max_wait_ms=50) as c:
        assert c.get("/health").json() == {"status": "ok"}
        info = c.get("/info").json()
        assert info["task"] == "single_label_classification" and info["labels"] == list(LABELS.values())
        assert info["max_length"] == {"predict": 512, "embed": 512} and info["precision"] == "fp32"
        assert info["workers"] == 1 and info["threads"] == torch.get_num_threads()
        for _ in range(3):
            c.post("/predict", json={"inputs": TEXTS})
        c.post("/predict", content=b"{", headers={"content-type": "application/json"})
        c.post("/predict", content=b"{")  # not JSON by its Content-Type: 415
        c.post("/embed", json={"inputs": TEXTS[:2]})
        assert metric(c, 'minibert_requests_total{endpoint="/predict",status="200"}') == 3
        assert metric(c, 'minibert_requests_total{endpoint="/predict",status="400"}') == 1
        assert metric(c, 'minibert_requests_total{endpoint="/predict",status="415"}') == 1
        assert metric(c, 'minibert_texts_total{kind="predict"}') == 3 * len(TEXTS)
        tokens = sum(len(r) for r in InferenceModel.load(str(tiny_classifier)).prepare("predict", TEXTS).rows)
        assert metric(c, 'minibert_tokens_total{kind="predict"}') == 3 * tokens
        assert metric(c, 'minibert_batch_texts_count{kind="predict"}') == 3
        assert metric(c, 'minibert_batch_texts_sum{kind="predict"}') == 3 * len(TEXTS)
        assert metric(c, 'minibert_queue_seconds_count{kind="predict"}') == 3 * len(TEXTS)
        assert metric(c, 'minibert_model_seconds_count{kind="embed"}') == 1
        assert 0 < metric(c, 'minibert_batch_padding_fraction_sum{kind="predict"}') < 3
        assert metric(c, "minibert_tokens_per_second") > 0
        assert metric(c, "minibert_queue_depth") == 0
        page = c.get("/")
        assert page.status_code == 200 and "<script>" in page.text and "/predict" in page.text
        assert set(c.get("/openapi.json").json()["paths"]) >= {"/predict", "/embed", "/health", "/info", "/metrics"}
        assert c.get("/docs").status_code == 200


def test_missing_serve_extra_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    from minibert.errors import MinibertError
    from minibert.serve import require_serve_extra

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what `import uvicorn` meets when it is not installed
    with pytest.raises(MinibertError) as caught:
        require_serve_extra()
    assert str(caught.value) == ("python -m minibert.serve needs uvicorn, which is not installed; run pip install "
                                 "'minibert[serve]' (fastapi, uvicorn, prometheus-client).")


MALLOC_PROBE = """
import ctypes, sys
from minibert.malloc import tune_malloc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mapped(size):  # whether glibc serves a block of this size with its own mmap (hblks: mapped blocks in use)
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    after = libc.mallinfo2().hblks
    libc.free(block)
    return after > before

libc.mallopt(-3, 64 << 10)  # whatever the mmap threshold was before (here 64 KiB), tune_malloc sets its own
tune_malloc()
print(mapped(1 << 20), mapped(8 << 20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc tuning is Linux-only")
@pytest.mark.parametrize(("env", "expected"), [({}, "False True"), ({"MALLOC_MMAP_THRESHOLD_": "131072"}, "True True")])
def test_tune_malloc_keeps_activation_sized_blocks_in_the_heap(env: dict[str, str], expected: str) -> None:
    """The server's malloc: a 1 MiB block (a batch's hidden states) comes from the heap, an 8 MiB one is mapped;
    a threshold set in the environment wins (tune_malloc leaves the probe's 64 KiB)."""
    import os
    import subprocess

    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env}, check=True).stdout
    assert out.strip() == expected


TRIM_PROBE = """
import ctypes
from pathlib import Path
from minibert.malloc import HeapTrimmer, tune_malloc

def rss_mb():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
tune_malloc()
blocks = [libc.malloc(1 << 20) for _ in range(300)]  # 300 MiB from the heap (below the 4 MiB threshold)
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
for b in blocks[::2]:  # every other block freed: holes the heap's top cannot give back
    libc.free(b)
before = rss_mb()
trimmer = HeapTrimmer(interval=0)
trimmer.maybe_trim()
print(round(before - rss_mb()), trimmer.trims)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc tuning is Linux-only")
def test_heap_trimmer_gives_freed_heap_pages_back() -> None:
    """150 MiB freed in holes of the heap stay resident until the trimmer runs malloc_trim(0)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    released, trims = map(int, out.split())
    assert released >= 140 and trims == 1


def test_heap_trimmer_trims_at_most_once_per_interval() -> None:
    from minibert.malloc import HeapTrimmer

    trimmer = HeapTrimmer(interval=0.3)
    calls = [threading.Thread(target=trimmer.maybe_trim) for _ in range(8)]
    for t in calls:
        t.start()
    for t in calls:
        t.join()
    assert trimmer.trims == 0  # within the first interval
    time.sleep(0.35)
    calls = [threading.Thread(target=trimmer.maybe_trim) for _ in range(8)]
    for t in calls:
        t.start()
    for t in calls:
        t.join()
    assert trimmer.trims == (1 if sys.platform.startswith("linux") else 0)


# --- the batcher alone -------------------------------------------------------------------------------------------

def rows_of(*lengths: int) -> list[Row]:
    return [Row([n] * n, [0] * n) for n in lengths]


def test_batcher_budget_wait_and_scatter() -> None:
    seen: list[list[int]] = []

    def forward(kind: str, rows: list[Row]) -> list[tuple[str, int]]:
        seen.append([len(r) for r in rows])
        return [(kind, r.input_ids[0]) for r in rows]

    batcher = Batcher(forward, max_batch_tokens=20, max_wait_ms=200, order="longest")
    tickets = [batcher.submit("predict", rows_of(3, 9)), batcher.submit("embed", rows_of(4)),
               batcher.submit("predict", rows_of(12, 5, 30))]
    assert [t.future.result(5) for t in tickets] == [[("predict", 3), ("predict", 9)], [("embed", 4)],
                                                     [("predict", 12), ("predict", 5), ("predict", 30)]]
    batcher.close()
    # one kind per batch, at most 20 real tokens unless a text alone is longer, the oldest text always first
    assert seen[0] == [3, 12, 5] and seen[1] == [9] and sorted(map(sorted, seen[2:])) == [[4], [30]]


@pytest.mark.parametrize("workers", [1, 3])
def test_batcher_concurrent_submitters_get_their_own_results(workers: int) -> None:
    batcher = Batcher(lambda kind, rows: [sum(r.input_ids) for r in rows], max_batch_tokens=64, max_wait_ms=2,
                      workers=workers)
    errors: list[str] = []

    def client(k: int) -> None:
        for j in range(20):
            lengths = [1 + (k * 7 + j * 3 + i) % 13 for i in range(1 + (k + j) % 4)]
            got = batcher.submit("predict", rows_of(*lengths)).future.result(10)
            if got != [n * n for n in lengths]:
                errors.append(f"client {k} request {j}: {got}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    batcher.close()
    assert not errors


def test_batcher_queue_limit_cancel_errors_and_drain() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def forward(kind: str, rows: list[Row]) -> list[int]:
        gate.wait(5)
        if any(r.input_ids[0] == 99 for r in rows):
            raise RuntimeError("boom")
        ran.extend(len(r) for r in rows)
        return [len(r) for r in rows]

    batcher = Batcher(forward, max_batch_tokens=4, max_wait_ms=0, max_queue_tokens=8)
    first = batcher.submit("predict", rows_of(1))  # taken by the worker, which then blocks on the gate
    time.sleep(0.2)
    waiting = batcher.submit("predict", rows_of(2, 2))
    dropped = batcher.submit("predict", rows_of(3))
    assert batcher.waiting_tokens() == 7
    with pytest.raises(QueueFull):  # the budget counts tokens: 7 waiting + 2 > 8
        batcher.submit("predict", rows_of(1, 1))
    with pytest.raises(TooBig):  # more than the whole queue: no retry can help
        batcher.submit("predict", rows_of(9))
    batcher.cancel(dropped)
    assert batcher.waiting_tokens() == 4
    batcher.admit(3)  # a request being tokenised holds its estimate
    with pytest.raises(QueueFull):
        batcher.admit(2)
    failing = batcher.submit("predict", [Row([99] * 4, [0] * 4)], reserved=3)
    assert batcher.waiting_tokens() == 8
    gate.set()
    assert first.future.result(5) == [1] and waiting.future.result(5) == [2, 2]
    with pytest.raises(RuntimeError, match="boom"):
        failing.future.result(5)
    assert dropped.future.cancelled() and 3 not in ran
    assert batcher.waiting_tokens() == 0
    late = batcher.submit("predict", rows_of(4))  # the worker survived the failed batch
    batcher.close(drain=True)
    assert late.future.result(0) == [4]


@pytest.mark.parametrize("workers", [1, 2])
def test_batcher_workers_run_batches_side_by_side(workers: int) -> None:
    """Each forward waits for a second one to be running: only two workers get both batches through."""
    both_running = threading.Barrier(2, timeout=2)

    def forward(kind: str, rows: list[Row]) -> list[str]:
        both_running.wait()
        return [threading.current_thread().name] * len(rows)

    batcher = Batcher(forward, max_wait_ms=0, workers=workers)
    tickets = [batcher.submit("predict", rows_of(3)), batcher.submit("embed", rows_of(4))]
    if workers == 1:
        with pytest.raises(threading.BrokenBarrierError):
            tickets[0].future.result(5)
    else:
        names = [t.future.result(5)[0] for t in tickets]
        assert len(set(names)) == 2 and all(n.startswith("minibert-batcher-") for n in names)
    batcher.close()


def test_batcher_wakes_a_second_worker_for_what_one_batch_leaves() -> None:
    """One request of more texts than a batch holds: the worker that takes the first batch wakes the other for the
    rest (one submit wakes one worker), and both batches run at the same time."""
    sizes: list[int] = []
    both_running = threading.Barrier(2, timeout=2)

    def forward(kind: str, rows: list[Row]) -> list[int]:
        sizes.append(len(rows))
        both_running.wait()
        return [len(r) for r in rows]

    batcher = Batcher(forward, max_batch_tokens=30, max_wait_ms=0, workers=2)
    ticket = batcher.submit("predict", rows_of(*[10] * 6))
    assert ticket.future.result(5) == [10] * 6
    batcher.close()
    assert sizes == [3, 3]


def test_batcher_sets_torch_threads_in_its_worker() -> None:
    for threads in (1, 2):
        batcher = Batcher(lambda kind, rows: [torch.get_num_threads()] * len(rows), threads=threads)
        assert batcher.submit("predict", rows_of(1)).future.result(5) == [threads]
        batcher.close()


@pytest.mark.parametrize(("flag", "value"), [("--workers", "0"), ("--threads", "-1"), ("--max-batch-tokens", "0")])
def test_bad_serve_flags_are_one_line_exit_2(flag: str, value: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model", "m", flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: argument {flag}: "), err


def test_a_full_request_must_fit_in_the_queue(tiny_classifier: Path) -> None:
    """--max-inputs texts of the model's max length must fit in --max-queue-tokens, or no such request could ever be
    queued: the server refuses to start, in one sentence."""
    from minibert.errors import MinibertError

    opts = Options(model=str(tiny_classifier), precision="fp32", max_inputs=64, max_length=512,
                   max_queue_tokens=32767, tokenizer_processes=0)
    with pytest.raises(MinibertError) as caught:
        create_app(load_model(opts)[0], opts)
    assert str(caught.value) == ("--max-inputs 64 texts of 512 tokens (the max length) make 32768 tokens, more than "
                                 "--max-queue-tokens 32767: such a request could never be queued; raise "
                                 "--max-queue-tokens or lower --max-inputs or --max-length.")
