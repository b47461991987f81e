"""Entities from raw text equal transformers' token-classification pipeline on the same saved model, for every
aggregation strategy, on real sentences with accents, punctuation and unknown tokens."""

from pathlib import Path

import pytest
import torch
import transformers

from minibert.entities import AGGREGATIONS, tag_texts, tokens_to_string, window_logits
from minibert.heads import BertForTokenClassification
from minibert.token_labels import encode_pieces
from minibert.tokenizer import BertTokenizer
from tests.tiny import write_tiny_model

TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
TEXTS = [
    "Peter Blackburn met José Müller in Zürich, near the U.N. building.",
    "L'Équipe de France a battu l'Allemagne à Saint-Étienne (3-1) !",
    "  EU rejects German call to boycott British lamb .  ",
    "Ångström and Søren Kierkegaard visited Ōsaka; then São Paulo.",
    "北京 is in China, said Dr. Smith-Jones of IBM's lab.",
    "",
]


def token_classifier(source: Path, folder: Path, scale: float) -> Path:
    """`source`'s encoder with a new 9-tag head whose weights are scaled up, so that tags change often and
    confidently (near-ties would make the comparison depend on float rounding)."""
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(source, num_labels=len(TAGS), id2label=dict(enumerate(TAGS)),
                                                       label2id={t: i for i, t in enumerate(TAGS)},
                                                       ignore_mismatched_sizes=True)
    with torch.no_grad():
        model.classifier.weight.mul_(scale)
    model.save_pretrained(folder)
    BertTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def compare(folder: Path) -> None:
    model = BertForTokenClassification.from_pretrained(folder)
    tokenizer = BertTokenizer.from_pretrained(folder)
    checked = 0
    for aggregation in AGGREGATIONS:
        pipe = transformers.pipeline("token-classification", model=str(folder), aggregation_strategy=aggregation,
                                     device="cpu")
        ours = tag_texts(model, tokenizer, TEXTS, aggregation, 512, 128, torch.device("cpu"))
        for text, record in zip(TEXTS, ours):
            theirs = pipe(text) if text else []
            assert len(record["entities"]) == len(theirs), (aggregation, text)
            for a, b in zip(record["entities"], theirs):
                assert a.keys() == b.keys()
                assert {k: v for k, v in a.items() if k != "score"} == \
                    {k: (int(v) if k in ("start", "end", "index") else v) for k, v in b.items() if k != "score"}
                assert a["score"] == pytest.approx(float(b["score"]), abs=1e-5)
                checked += 1
    assert checked > 50  # the heads were made to find many entities


def test_pipeline_tiny(tmp_path):
    folder = token_classifier(write_tiny_model(tmp_path / "tiny"), tmp_path / "tagger", scale=30.0)
    compare(folder)


def test_pipeline_minilm(tmp_path, minilm_dir):
    compare(token_classifier(minilm_dir, tmp_path / "tagger", scale=3.0))


def test_tokens_to_string_as_transformers(minilm_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    for text in TEXTS:
        tokens = tok.tokenize(text)
        assert tokens_to_string(tokens) == tok.convert_tokens_to_string(tokens)


def test_packed_and_padded_kernels_agree_on_ragged_windows(tmp_path):
    """A batch of sentences of many lengths: the packed kernel (no padding in the encoder) gives the padded
    kernel's logits on every real token, windows of a long text included."""
    folder = token_classifier(write_tiny_model(tmp_path / "tiny"), tmp_path / "tagger", scale=1.0)
    tokenizer = BertTokenizer.from_pretrained(folder)
    texts = [" ".join(["good film"] * n) for n in (1, 3, 9, 40)]
    pieces = [[[i] for i in tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    data = encode_pieces(tokenizer, pieces, 32, 8)
    assert len(set(data.lengths)) > 2 and len(data) > len(texts)
    runs = [window_logits(BertForTokenClassification.from_pretrained(folder, attn_impl=impl), data,
                          torch.device("cpu"), None) for impl in ("unpadded", "math")]
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_server_answers_the_pipelines_entities(tmp_path):
    """/predict on a token classifier: its entities, equal to transformers' pipeline (the server's --aggregation);
    a text longer than --max-length is read in windows and says so."""
    pytest.importorskip("fastapi")
    from tests.test_serve import client_for

    folder = token_classifier(write_tiny_model(tmp_path / "tiny"), tmp_path / "tagger", scale=30.0)
    texts = [t for t in TEXTS if t]
    long_text = " ".join(TEXTS * 3)
    for aggregation in ("simple", "first"):
        pipe = transformers.pipeline("token-classification", model=str(folder), aggregation_strategy=aggregation,
                                     device="cpu")
        with client_for(folder, aggregation=aggregation) as c:
            info = c.get("/info").json()
            results = c.post("/predict", json={"inputs": texts}).json()["results"]
            windowed = c.post("/predict", json={"inputs": [long_text]}).json()["results"][0]
            pairs = c.post("/predict", json={"inputs": [["a", "b"]]})
        assert info["task"] == "token-classification" and info["labels"] == TAGS
        for text, record in zip(texts, results):
            theirs = pipe(text)
            assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in record["entities"]] == \
                [(e["entity_group"], int(e["start"]), int(e["end"]), e["word"]) for e in theirs]
            assert all(abs(a["score"] - float(b["score"])) < 1e-5 for a, b in zip(record["entities"], theirs))
            assert record["truncated"] is False
        assert pairs.status_code == 422
    with client_for(folder, max_length=32) as c:
        windowed = c.post("/predict", json={"inputs": [long_text]}).json()["results"][0]
    reference = tag_texts(BertForTokenClassification.from_pretrained(folder), BertTokenizer.from_pretrained(folder),
                          [long_text], "simple", 32, 8, torch.device("cpu"))[0]
    assert windowed["windows"] > 3 and len(windowed["entities"]) == len(reference["entities"]) > 10
    for a, b in zip(windowed["entities"], reference["entities"]):  # the server's windows are predict's
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
        assert abs(a["score"] - b["score"]) < 1e-5
