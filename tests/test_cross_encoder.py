"""minibert.CrossEncoder against sentence-transformers' CrossEncoder: scores, rankings, ties, truncation, activation."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from minibert import BertForSequenceClassification, CrossEncoder
from minibert.cross_encoder import is_cross_encoder
from minibert.errors import MinibertError
from minibert.inference import TooLong
from minibert.ranking import ranking
from tests.tiny import WORDS, write_tiny_model

st = pytest.importorskip("sentence_transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ATOL = 1e-5


def write_tiny_reranker(folder: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """tiny.py's random BERT with a one-logit head (weights times `scale`: large ones saturate the sigmoid)."""
    write_tiny_model(folder, seed)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=1, ignore_mismatched_sizes=True)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        model.classifier.weight.normal_(0, scale)
        model.classifier.bias.normal_(0, scale)
    model.save_pretrained(folder)
    return folder


def tiny_passages(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (2 + i % 9,), generator=g)) for i in range(n)]


def assert_same_ranking(ours: list[dict], theirs: list[dict]) -> None:
    assert [r["corpus_id"] for r in ours] == [r["corpus_id"] for r in theirs]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)) < ATOL


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_reranker(tmp_path_factory.mktemp("tiny") / "reranker")


def test_tiny_scores_and_ranking_equal_sentence_transformers(tiny: Path) -> None:
    passages = tiny_passages(40) + ["good " * 700, "the plot " * 300]  # over 512 tokens: both cut longest_first
    long_query = "movie " * 600
    pairs = [("good movie", p) for p in passages] + [(long_query, "fun plot"), (long_query, "bad " * 400)]
    theirs = st.CrossEncoder(str(tiny), device="cpu")
    ours = CrossEncoder.from_pretrained(str(tiny), device="cpu")
    assert ours.max_length == theirs.max_seq_length == 512 and ours.activation_name == "Sigmoid"
    expected = torch.as_tensor(theirs.predict(pairs, batch_size=8))
    got = ours.predict(pairs, batch_size=8)
    assert got.shape == expected.shape == (len(pairs),)
    assert (got - expected).abs().max().item() < ATOL
    raw = torch.as_tensor(theirs.predict(pairs, activation_fn=torch.nn.Identity()))
    scored = ours.score(pairs)
    assert (scored.logits.view(-1) - raw).abs().max().item() < ATOL
    assert (ours.predict(pairs, activation="Identity") - raw).abs().max().item() < ATOL
    assert_same_ranking(ours.rank("good movie", passages, top_k=10, return_documents=True),
                        theirs.rank("good movie", passages, top_k=10, return_documents=True))
    assert ours.rank("good movie", passages, top_k=3, return_documents=True)[0]["text"] in passages
    single = ours.predict(("good movie", "fun plot"))
    assert single.shape == () and abs(single.item() - float(theirs.predict(("good movie", "fun plot")))) < ATOL
    assert ours.predict([]).shape == (0,) and ours.rank("q", []) == []


def test_ties_keep_input_order_as_sentence_transformers(tmp_path: Path) -> None:
    """A head with large weights saturates the sigmoid: many passages score exactly 1.0 (or 0.0), plus duplicates;
    both libraries order equal scores by input position."""
    folder = write_tiny_reranker(tmp_path / "saturated", scale=50.0)
    passages = tiny_passages(30, seed=3)
    passages += passages[:5]  # the same pair twice scores the same
    theirs = st.CrossEncoder(str(folder), device="cpu").rank("good movie", passages)
    ours = CrossEncoder.from_pretrained(str(folder), device="cpu").rank("good movie", passages)
    scores = [r["score"] for r in ours]
    assert len(scores) - len(set(scores)) >= 5, "the test needs tied scores"
    assert_same_ranking(ours, theirs)
    assert ranking(torch.tensor([0.5, 1.0, 0.5, 1.0, 0.2])) == [1, 3, 0, 2, 4]
    assert ranking(torch.tensor([0.5, 1.0, 0.5]), top_k=2) == [1, 0]


def test_activation_from_each_file_layout(tmp_path: Path, tiny: Path, caplog: pytest.LogCaptureFixture) -> None:
    """sentence-transformers 6 (config_sentence_transformers.json), 4-5 (config.json's sentence_transformers) and
    older (sbert_ce_default_activation_function) layouts; a name from an untrusted module gets the default and one
    warning in both libraries."""
    pairs = [("good movie", p) for p in tiny_passages(6)]
    config = json.loads((tiny / "config.json").read_text())
    layouts = {"torch.nn.modules.activation.Tanh": ("Tanh", {"sentence_transformers": {
                   "activation_fn": "torch.nn.modules.activation.Tanh"}}),
               "torch.nn.modules.linear.Identity": ("Identity", {
                   "sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"}),
               "my_package.Danger": ("Sigmoid", {"sentence_transformers": {"activation_fn": "my_package.Danger"}})}
    for i, (path, (name, extra)) in enumerate(layouts.items()):
        folder = tmp_path / f"layout{i}"
        folder.mkdir()
        for f in tiny.iterdir():
            (folder / f.name).symlink_to(f)
        (folder / "config.json").unlink()
        (folder / "config.json").write_text(json.dumps({**config, **extra}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="minibert"):
            ours = CrossEncoder.from_pretrained(str(folder), device="cpu")
        assert ours.activation_name == name
        assert len([r for r in caplog.records if "does not run" in r.message]) == (name == "Sigmoid")
        expected = torch.as_tensor(st.CrossEncoder(str(folder), device="cpu").predict(pairs))
        assert (ours.predict(pairs) - expected).abs().max().item() < ATOL, path
        assert is_cross_encoder(str(folder))
    assert not is_cross_encoder(str(tiny))


def test_folder_saved_by_sentence_transformers(tmp_path: Path, tiny: Path) -> None:
    """sentence-transformers 6's own folder (modules.json, sentence_bert_config.json with a max_seq_length,
    config_sentence_transformers.json with the activation) reads the same in both."""
    model = st.CrossEncoder(str(tiny), device="cpu", max_length=24, activation_fn=torch.nn.Tanh())
    model.save(str(tmp_path / "saved"))  # transformers 5 writes tokenizer.json alone (no vocab.txt)
    assert json.loads((tmp_path / "saved" / "config_sentence_transformers.json").read_text())["activation_fn"] \
        == "torch.nn.modules.activation.Tanh"
    ours = CrossEncoder.from_pretrained(str(tmp_path / "saved"), device="cpu")
    theirs = st.CrossEncoder(str(tmp_path / "saved"), device="cpu")
    assert (ours.max_length, ours.activation_name) == (theirs.max_seq_length, "Tanh") == (24, "Tanh")  # tokenizer's
    st_config = json.loads((tmp_path / "saved" / "sentence_bert_config.json").read_text())
    (tmp_path / "saved" / "sentence_bert_config.json").write_text(json.dumps({**st_config, "max_seq_length": 20}))
    ours = CrossEncoder.from_pretrained(str(tmp_path / "saved"), device="cpu")
    theirs = st.CrossEncoder(str(tmp_path / "saved"), device="cpu")
    assert ours.max_length == theirs.max_seq_length == 20  # sentence_bert_config.json's, over the tokenizer's
    pairs = [("good movie " * 8, p + " fun" * 12) for p in tiny_passages(10)]
    expected = torch.as_tensor(theirs.predict(pairs))
    assert (ours.predict(pairs) - expected).abs().max().item() < ATOL
    assert is_cross_encoder(str(tmp_path / "saved"))
    # prompts: the default one before each query, or one by name, or a text given
    config = json.loads((tmp_path / "saved" / "config_sentence_transformers.json").read_text())
    config.update(prompts={"web": "web query: ", "fun": "fun fun "}, default_prompt_name="fun")
    (tmp_path / "saved" / "config_sentence_transformers.json").write_text(json.dumps(config))
    ours = CrossEncoder.from_pretrained(str(tmp_path / "saved"), device="cpu")
    theirs = st.CrossEncoder(str(tmp_path / "saved"), device="cpu")
    for kwargs in ({}, {"prompt_name": "web"}, {"prompt": "bad "}):
        expected = torch.as_tensor(theirs.predict(pairs, **kwargs))
        assert (ours.predict(pairs, **kwargs) - expected).abs().max().item() < ATOL, kwargs
        assert_same_ranking(ours.rank("good", [p for _, p in pairs], **kwargs),
                            theirs.rank("good", [p for _, p in pairs], **kwargs))
    assert (ours.predict(pairs, prompt="") - ours.predict(pairs)).abs().max().item() > ATOL


def test_refusals(tiny: Path, tmp_path: Path) -> None:
    ours = CrossEncoder.from_pretrained(str(tiny), device="cpu")
    with pytest.raises(TooLong, match="more than the limit of 512 tokens"):
        ours.prepare("good", ["fun " * 600], refuse_long=True)
    with pytest.raises(MinibertError, match="not a pair of two texts"):
        ours.predict([("only one",)])
    with pytest.raises(MinibertError, match="not one of"):
        ours.predict([("a", "b")], activation="Swish")
    with pytest.raises(MinibertError, match="list of texts"):
        ours.rank("good", "one text")
    two = write_tiny_model(tmp_path / "two-labels")  # a two-class classifier: predict works (Identity), rank does not
    two_labels = CrossEncoder.from_pretrained(two, device="cpu")
    pairs = [("good movie", p) for p in tiny_passages(5)]
    expected = torch.as_tensor(st.CrossEncoder(str(two), device="cpu").predict(pairs))
    assert two_labels.activation_name == "Identity" and two_labels.predict(pairs).shape == expected.shape == (5, 2)
    assert (two_labels.predict(pairs) - expected).abs().max().item() < ATOL
    with pytest.raises(MinibertError, match="rank needs a model with one"):
        two_labels.rank("good", ["fun"])


@pytest.mark.slow  # about 45 s on 2 shared cores
def test_minilm_reranker_equals_sentence_transformers(tmp_path: Path, minilm_dir: Path, shared_dir: Path) -> None:
    """A seeded one-logit head on MiniLM, built and saved by sentence-transformers; SST-2 sentences as passages
    for a query made of one of their words, one of them past the 512-token limit."""
    torch.manual_seed(0)
    model = st.CrossEncoder(str(minilm_dir), num_labels=1, device="cpu")
    with torch.no_grad():
        model.model.classifier.weight.normal_(0, 0.5)
    model.save(str(tmp_path / "ce"))
    lines = (shared_dir / "data" / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:41]
    passages = [line.split("\t")[0] for line in lines] + [" ".join(lines) * 2]
    query = max(passages[0].split(), key=len)
    theirs = st.CrossEncoder(str(tmp_path / "ce"), device="cpu")
    ours = CrossEncoder.from_pretrained(str(tmp_path / "ce"), device="cpu")
    assert ours.max_length == theirs.max_seq_length == 512
    expected = torch.as_tensor(theirs.predict([(query, p) for p in passages], batch_size=16))
    assert (ours.predict([(query, p) for p in passages], batch_size=16) - expected).abs().max().item() < ATOL
    assert_same_ranking(ours.rank(query, passages), theirs.rank(query, passages))
