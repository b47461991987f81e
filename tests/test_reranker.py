"""Training a reranker (finetune --problem-type binary): its loss against transformers', MRR/NDCG against a hand
computation, and a trained folder that sentence-transformers loads and ranks as minibert does."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import minibert
from minibert import CrossEncoder, finetune
from minibert.data import Examples
from minibert.errors import MinibertError
from minibert.ranking import binary_targets, query_groups, ranking_metrics
from tests.reference import TINY, hf_model
from tests.tiny import write_csv, write_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_one_logit_multi_label_loss_is_bce_as_in_transformers(tmp_path: Path) -> None:
    """What the saved config (num_labels 1, multi_label_classification) makes transformers compute: BCE-with-logits
    on the one logit; ours computes the same."""
    ref = hf_model("BertForSequenceClassification", num_labels=1, problem_type="multi_label_classification", **TINY)
    ref.save_pretrained(tmp_path)
    ours = minibert.BertForSequenceClassification.from_pretrained(tmp_path, attn_impl="math")
    ids = torch.randint(1, TINY["vocab_size"], (6, 9), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1.0], [0.0], [0.0], [1.0], [1.0], [0.0]])
    expected = ref(input_ids=ids, labels=labels)
    got = ours(input_ids=ids, labels=labels)
    assert abs(expected.loss.item() - F.binary_cross_entropy_with_logits(expected.logits, labels).item()) < 1e-6
    assert abs(got.loss.item() - expected.loss.item()) < 1e-5


def test_mrr_ndcg_by_hand() -> None:
    groups = [0, 0, 0, 1, 1, 1, 1, 2, 2]
    logits = torch.tensor([0.1, 0.9, 0.5, 2.0, 1.0, 1.0, 0.0, 3.0, 1.0])
    labels = torch.tensor([1, 0, 0, 0, 0, 1, 1, 0, 0]).float()
    # query 0: order 1, 2, 0 -> first relevant at 3: RR 1/3, DCG 1/log2(4), ideal 1.
    # query 1: order 3, 4, 5, 6 (the tie 4 = 5 in file order) -> relevant at 3 and 4: RR 1/3,
    #          DCG 1/log2(4) + 1/log2(5), ideal 1 + 1/log2(3). query 2 has nothing relevant: left out.
    ndcg1 = (1 / math.log2(4) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    got = ranking_metrics(logits, labels, groups)
    assert got == pytest.approx({"mrr@10": 1 / 3, "ndcg@10": (0.5 + ndcg1) / 2}, abs=1e-9)
    at2 = ranking_metrics(logits, labels, groups, k=2)  # no relevant passage in either top 2
    assert at2 == pytest.approx({"mrr@2": 0.0, "ndcg@2": 0.0})
    at3 = ranking_metrics(logits, labels, groups, k=3)
    assert at3 == pytest.approx({"mrr@3": 1 / 3, "ndcg@3": (0.5 + 0.5 / (1 + 1 / math.log2(3))) / 2}, abs=1e-9)


def test_binary_labels_and_groups() -> None:
    rows = Examples(["q1", "q1", "q2"], ["a", "b", "c"], ["1", 0, 1.0], [("dev.csv", 2), ("dev.csv", 3),
                                                                          ("dev.csv", 4)])
    targets = binary_targets(rows, "validation")
    assert targets.tolist() == [[1.0], [0.0], [1.0]]
    assert query_groups(rows, targets) == [0, 0, 1]
    assert query_groups(Examples(["q1", "q2"], ["a", "b"], [1, 0], []), torch.tensor([1.0, 0.0])) is None
    assert query_groups(Examples(["q1", "q1"], ["a", "b"], [0, 0], []), torch.tensor([0.0, 0.0])) is None
    with pytest.raises(MinibertError, match="line 3 of dev.csv has label '2'"):
        binary_targets(Examples(["q", "q"], ["a", "b"], ["1", "2"], [("dev.csv", 2), ("dev.csv", 3)]), "validation")


def sst2_pairs(shared_dir: Path, first: int, queries: int, negatives: int = 3) -> list[tuple[str, str, int]]:
    """(query, passage, 0/1) rows from SST-2: the query is the longest word of a sentence, that sentence the
    relevant passage, and sentences without that word the others."""
    lines = (shared_dir / "data" / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sentences = [line.split("\t")[0] for line in lines if len(line.split("\t")[0].split()) >= 4]
    rows = []
    for i in range(first, first + queries):
        query = max(sentences[i].split(), key=len)
        others = [s for s in sentences[i + 1000: i + 1100] if query not in s.split()][:negatives]
        passages = [(sentences[i], 1), *((s, 0) for s in others)]
        rotate = i % len(passages)  # the relevant passage is not always first
        rows += [(query, p, label) for p, label in passages[rotate:] + passages[:rotate]]
    return rows


def test_reranker_training_loads_in_sentence_transformers(tmp_path: Path, shared_dir: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    model = write_tiny_model(tmp_path / "tiny")
    header = ("query", "passage", "label")
    train = write_csv(tmp_path / "train.csv", sst2_pairs(shared_dir, 0, 40), header)
    dev_rows = sst2_pairs(shared_dir, 500, 12)
    dev = write_csv(tmp_path / "dev.csv", dev_rows, header)
    out = tmp_path / "run"
    assert finetune.main(["--model", str(model), "--train-file", str(train), "--validation-file", str(dev),
                          "--text-column", "query", "--text-pair-column", "passage", "--label-column", "label",
                          "--problem-type", "binary", "--max-length", "32", "--epochs", "2", "--batch-size", "16",
                          "--lr", "3e-3", "--precision", "fp32", "--output-dir", str(out), "--no-progress"]) == 0
    evals = [json.loads(line)["eval"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert len(evals) == 2 and all({"mrr@10", "ndcg@10", "accuracy"} <= set(e) for e in evals)
    best = json.loads((out / "best" / "trainer_info.json").read_text())["metrics"]
    assert evals[1]["ndcg@10"] > evals[0]["ndcg@10"] and evals[1]["f1"] <= evals[0]["f1"]  # f1 would keep epoch 1
    assert best == evals[1]  # best/ is chosen by NDCG@10
    config = json.loads((out / "best" / "config.json").read_text())
    assert (config["num_labels"] if "num_labels" in config else len(config["id2label"]),
            config["problem_type"]) == (1, "multi_label_classification")

    theirs = st.CrossEncoder(str(out / "best"), device="cpu")
    ours = CrossEncoder.from_pretrained(str(out), device="cpu")
    assert ours.max_length == theirs.max_seq_length == 32 and ours.activation_name == "Sigmoid"
    pairs = [(q, p) for q, p, _ in dev_rows]
    expected = torch.as_tensor(theirs.predict(pairs))
    assert (ours.predict(pairs) - expected).abs().max().item() < 1e-5
    query = dev_rows[0][0]
    passages = [p for q, p, _ in dev_rows if q == query] + [p for _, p, _ in dev_rows[:20]]
    assert [r["corpus_id"] for r in ours.rank(query, passages)] == [r["corpus_id"]
                                                                    for r in theirs.rank(query, passages)]
    # the evaluation's ranking metrics are those of the saved model's scores
    logits = ours.score(pairs).logits
    labels = torch.tensor([float(label) for _, _, label in dev_rows])
    groups = query_groups(Examples([q for q, _, _ in dev_rows], [p for _, p, _ in dev_rows], [], []), labels)
    assert ranking_metrics(logits, labels, groups)["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-4)
