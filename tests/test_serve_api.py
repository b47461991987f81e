"""The API clients already speak: the official `openai` client against a real server's /v1/embeddings, /tokenize and
/decode against transformers' tokenizer, /rerank against sentence-transformers' CrossEncoder.rank."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
st = pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.test_cross_encoder import tiny_passages, write_tiny_reranker  # noqa: E402
from tests.test_pooling import write_st_layout, write_tiny_encoder  # noqa: E402
from tests.test_serve import client_for  # noqa: E402
from tests.test_serve_process import start, stop  # noqa: E402

KEY = "a-test-key-0123456789"
TEXTS = ["good movie", "the plot was awful and boring", "fine"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api")
    return write_st_layout(root / "st", write_tiny_encoder(root / "base"))


@pytest.fixture(scope="module")
def server(encoder: Path) -> Iterator[str]:
    proc, url = start(encoder, "--api-key", KEY, "--tokenizer-processes", "0")
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, stop(proc)


def embed(url: str, texts: list[str]) -> torch.Tensor:
    body = httpx.post(url + "/embed", json={"inputs": texts}, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    return torch.tensor(body.json()["embeddings"])


def test_openai_client_gets_the_vectors_of_embed(server: str) -> None:
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=30)
    reference = embed(server, TEXTS)
    floats = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1, 2] and floats.model == "tiny"
    assert (torch.tensor([d.embedding for d in floats.data]) - reference).abs().max().item() < 1e-6
    default = client.embeddings.create(model="tiny", input=TEXTS)  # the client asks for base64 and decodes it
    assert (torch.tensor([d.embedding for d in default.data]) - reference).abs().max().item() < 1e-6
    tokens = httpx.post(server + "/tokenize", json={"inputs": TEXTS}, headers={"Authorization": f"Bearer {KEY}"},
                        timeout=30).json()
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == sum(len(t) for t in tokens)  # specials counted
    ids = [[t["id"] for t in text] for text in tokens]
    by_ids = client.embeddings.create(model="tiny", input=ids, encoding_format="float")
    assert (torch.tensor([d.embedding for d in by_ids.data]) - reference).abs().max().item() < 1e-6
    one = client.embeddings.create(model="tiny", input=ids[0], encoding_format="float")  # one list of ids
    assert len(one.data) == 1 and (torch.tensor(one.data[0].embedding) - reference[0]).abs().max().item() < 1e-6
    short = client.embeddings.create(model="tiny", input=TEXTS[0], dimensions=8, encoding_format="float")
    vector = torch.tensor(short.data[0].embedding)
    assert vector.shape == (8,) and abs(vector.norm().item() - 1) < 1e-5  # cut, then re-normalised
    assert (vector - torch.nn.functional.normalize(reference[0, :8], dim=0)).abs().max().item() < 1e-6


def test_openai_errors_in_openai_shape(server: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).embeddings.create(model="m", input="a")
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=30)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model="tiny", input="a", dimensions=10_000)
    assert "'dimensions' must be a whole number from 1 to the model's 32" in str(caught.value)
    headers = {"Authorization": f"Bearer {KEY}"}
    for body, status, message in [
        (b'{"input": []}', 422, "'input' must be a string"),
        (b'{"input": ["a", 3]}', 422, "input[1] is 3"),
        (b'{"input": [[1, 99999]]}', 422, "token id outside the vocabulary"),
        (b'{"input": "a", "encoding_format": "hex"}', 422, "'encoding_format' must be one of float, base64"),
        (b'{"inputs": "a"}', 422, "unknown field(s) 'inputs'"),
        (b"[", 400, "the body is not valid JSON"),
    ]:
        answer = httpx.post(server + "/v1/embeddings", content=body, timeout=30,
                            headers={**headers, "Content-Type": "application/json"})
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert message in error["message"] and error["code"] == status and error["type"] == "invalid_request_error"


def test_base64_is_little_endian_float32(encoder: Path) -> None:
    with client_for(encoder) as c:
        floats = c.post("/v1/embeddings", json={"input": TEXTS[:1], "encoding_format": "float"}).json()
        packed = c.post("/v1/embeddings", json={"input": TEXTS[:1], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == pytest.approx(floats["data"][0]["embedding"], abs=0)


def test_tokenize_and_decode_equal_transformers(minilm_dir: Path) -> None:
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    texts = ["Héllo, wörld! Naïve café-au-lait.", "An UNKNOWN token: ∰ and 日本語 too", "  spaces   between  "]
    with client_for(minilm_dir) as c:
        answer = c.post("/tokenize", json={"inputs": texts}).json()
        bare = c.post("/tokenize", json={"inputs": texts[0], "add_special_tokens": False}).json()
        ids = [[t["id"] for t in tokens] for tokens in answer]
        decoded = c.post("/decode", json={"ids": ids}).json()
        kept = c.post("/decode", json={"ids": ids[0], "skip_special_tokens": False}).json()
        bad = c.post("/decode", json={"ids": [[1, 10**9]]})
    for text, tokens in zip(texts, answer):
        enc = reference(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        assert [t["id"] for t in tokens] == enc["input_ids"]
        assert [t["special"] for t in tokens] == [bool(m) for m in enc["special_tokens_mask"]]
        for token, (begin, end), special in zip(tokens, enc["offset_mapping"], enc["special_tokens_mask"]):
            if special:
                assert token["start"] is None and token["text"] in ("[CLS]", "[SEP]")
            else:
                assert (token["start"], token["stop"]) == (begin, end) and token["text"] == text[begin:end]
    assert [t["id"] for t in bare[0]] == reference(texts[0], add_special_tokens=False)["input_ids"]
    assert decoded == [reference.decode(i, skip_special_tokens=True) for i in ids]
    assert kept == [reference.decode(ids[0], skip_special_tokens=False)]
    assert bad.status_code == 422 and "outside the vocabulary" in bad.json()["error"]


def test_rerank_equals_sentence_transformers(tmp_path: Path) -> None:
    folder = tmp_path / "reranker"
    st.CrossEncoder(str(write_tiny_reranker(tmp_path / "tiny", scale=3.0)), device="cpu").save(str(folder))
    theirs = st.CrossEncoder(str(folder), device="cpu")
    passages = tiny_passages(20) + tiny_passages(3)  # the last three repeat earlier ones: ties keep input order
    expected = theirs.rank("good movie", passages, return_documents=True)
    raw = theirs.predict([("good movie", p) for p in passages], activation_fn=torch.nn.Identity())
    with client_for(folder) as c:
        info = c.get("/info").json()
        answer = c.post("/rerank", json={"query": "good movie", "texts": passages, "return_text": True}).json()
        top = c.post("/rerank", json={"query": "good movie", "texts": passages, "top_n": 3, "raw_scores": True}).json()
        refused = c.post("/rerank", json={"query": "good", "texts": ["movie " * 600], "truncate": False})
        empty = c.post("/rerank", json={"query": "good", "texts": []})
    assert info["cross_encoder"] is True and "/rerank" in info["endpoints"]
    assert [r["index"] for r in answer] == [r["corpus_id"] for r in expected]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(answer, expected)) < 1e-5
    assert [r["text"] for r in answer] == [r["text"] for r in expected]
    assert [r["index"] for r in top] == [r["corpus_id"] for r in expected[:3]] and "text" not in top[0]
    assert max(abs(r["score"] - float(raw[r["index"]])) for r in top) < 1e-5
    assert refused.status_code == 422 and "more than the limit of 512 tokens" in refused.json()["error"]
    assert empty.status_code == 422


def test_rerank_needs_a_cross_encoder(encoder: Path) -> None:
    with client_for(encoder) as c:
        answer = c.post("/rerank", json={"query": "q", "texts": ["a"]})
    assert answer.status_code == 400 and "is not a cross-encoder" in answer.json()["error"]
