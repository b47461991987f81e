"""Documents: reading, the token cache (hit, invalidation, never beside the data), held-out split, and packing into
sequences of exactly max_length tokens that never join two documents without a [SEP]."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from minibert import documents
from minibert.documents import Documents, load_documents, pack, split_documents
from minibert.errors import MinibertError
from minibert.tokenizer import BertTokenizer
from tests.tiny import write_tiny_model

CLS, SEP = 2, 3


def docs_of(lengths: list[int]) -> Documents:
    """Documents whose tokens are distinct ids >= 10 (never CLS/SEP), so each token's origin is known."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Documents(np.arange(10, 10 + offsets[-1], dtype=np.int32), offsets)


def check_packing(docs: Documents, seqs: np.ndarray, max_length: int) -> None:
    assert seqs.shape[1] == max_length
    assert (seqs[:, 0] == CLS).all() and (seqs[:, -1] == SEP).all()
    # split each sequence's inside at [SEP]: every piece must be a contiguous run of ONE document, in order
    where = {int(t): (d, k) for d in range(len(docs)) for k, t in enumerate(docs[d])}
    expect = (0, 0)  # (document, position) of the next token in reading order
    for row in seqs:
        pieces = np.split(row[1:-1], np.flatnonzero(row[1:-1] == SEP))
        for piece in pieces:
            piece = piece[piece != SEP]
            if len(piece) == 0:
                continue
            d, k = where[int(piece[0])]
            if (d, k) != expect:  # a new document may only begin at a piece's start
                assert k == 0 and (d, 0) == (expect[0] + 1, 0) and expect[1] == len(docs[expect[0]]), (d, k)
            assert np.array_equal(piece, docs[d][k:k + len(piece)]), "a piece spans two documents"
            expect = (d, k + len(piece))
    used = int(sum((row[1:-1] != SEP).sum() for row in seqs))
    assert used > len(docs.tokens) - (max_length - 2)  # only the last incomplete sequence is dropped


@pytest.mark.parametrize("lengths,max_length", [([3, 2, 40, 5, 1, 7, 13, 13, 2, 30], 16),
                                                ([13, 1, 14, 12, 100], 16), ([200], 8), ([1] * 50, 5)])
def test_packing_exact_lengths_and_document_boundaries(lengths, max_length):
    docs = docs_of(lengths)
    seqs = pack(docs, max_length, CLS, SEP)
    check_packing(docs, seqs, max_length)


def test_long_document_is_split_and_short_ones_share(tmp_path):
    seqs = pack(docs_of([3, 4, 30]), 12, CLS, SEP)
    # [CLS] d0 d0 d0 [SEP] d1 d1 d1 d1 [SEP] d2 [SEP]: short documents share a sequence, separated by [SEP]
    assert seqs[0].tolist() == [CLS, 10, 11, 12, SEP, 13, 14, 15, 16, SEP, 17, SEP]
    assert seqs[1].tolist() == [CLS, *range(18, 28), SEP]  # the long one continues, framed again
    assert len(seqs) == 3


def test_too_little_text_is_a_clear_error():
    with pytest.raises(MinibertError, match="not enough for one sequence"):
        pack(docs_of([3, 4]), 128, CLS, SEP)


@pytest.fixture
def tokenizer(tmp_path) -> BertTokenizer:
    return BertTokenizer.from_pretrained(write_tiny_model(tmp_path / "model"))


def test_cache_is_used_then_invalidated(tmp_path, tokenizer, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINIBERT_CACHE", str(cache))
    data = tmp_path / "data"
    data.mkdir()
    texts = ["the movie was good", "", "a very boring film. the plot is dull!", "xyz best actor"]
    path = data / "texts.txt"
    path.write_text("\n".join(texts) + "\n")
    first, hit = load_documents(path, tokenizer)
    assert not hit and len(first) == 3  # the blank line is no document
    for doc, text in zip(range(3), [t for t in texts if t]):
        assert first[doc].tolist() == tokenizer.encode(text, add_special_tokens=False)
    assert [p.name for p in data.iterdir()] == ["texts.txt"]  # nothing written beside the data
    assert len(list((cache / "documents").glob("*.npz"))) == 1

    calls = []
    real = documents.tokenize_documents
    monkeypatch.setattr(documents, "tokenize_documents", lambda *a, **k: calls.append(1) or real(*a, **k))
    second, hit = load_documents(path, tokenizer)
    assert hit and not calls
    assert np.array_equal(second.tokens, first.tokens) and np.array_equal(second.offsets, first.offsets)

    path.write_text("\n".join(texts) + "\nthe end\n")  # a changed file is tokenised again
    third, hit = load_documents(path, tokenizer)
    assert not hit and calls and len(third) == 4
    lower = BertTokenizer.from_pretrained(tmp_path / "model", do_lower_case=False)  # so is another tokenizer
    assert not load_documents(path, lower)[1]


def test_damaged_cache_is_rebuilt(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "t.txt"
    path.write_text("good movie\nbad film\n")
    docs, _ = load_documents(path, tokenizer)
    for f in (tmp_path / "cache" / "documents").glob("*.npz"):
        f.write_bytes(b"garbage")
    again, hit = load_documents(path, tokenizer)
    assert not hit and np.array_equal(again.tokens, docs.tokens)


def test_formats(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path / "cache"))
    texts = ["good movie", "bad film"]
    gz = tmp_path / "t.txt.gz"
    gz.write_bytes(gzip.compress("\n".join(texts).encode()))
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    a, b = load_documents(gz, tokenizer)[0], load_documents(jsonl, tokenizer)[0]
    assert np.array_equal(a.tokens, b.tokens) and len(a) == 2
    (tmp_path / "x.csv").write_text("text\nx\n")
    with pytest.raises(MinibertError, match="use a .txt"):
        load_documents(tmp_path / "x.csv", tokenizer)


def test_split_holds_out_whole_documents():
    docs = docs_of(list(range(1, 101)))
    train, val = split_documents(docs, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    seen = sorted(train.tokens.tolist() + val.tokens.tolist())
    assert seen == docs.tokens.tolist()
    assert split_documents(docs, 0.1, seed=0)[1].tokens.tolist() == val.tokens.tolist()
    assert split_documents(docs, 0.0, seed=0)[1] is None
