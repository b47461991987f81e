"""`--long-text` in finetune and predict: windows labelled with their document's label, their logits pooled per
document, one answer per input row; head-tail and truncate through the same path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from minibert import finetune, predict, run_folder
from minibert.data import Examples
from minibert.devices import Dist
from minibert.heads import BertForSequenceClassification
from minibert.long_text import head_tail_inputs
from minibert.long_text_options import LongText
from minibert.metrics import evaluate_classifier
from minibert.tokenizer import BertTokenizer
from minibert.training_data import encode, length_grouped_batches, one_window_per_document
from tests.tiny import NEGATIVE, POSITIVE, sentiment_rows, write_csv, write_tiny_model


def long_rows(n: int) -> list[tuple[str, str]]:
    """Documents of 40-160 words whose sentiment words sit at the end (what truncation cuts off)."""
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        filler = " ".join(["the film was a movie"] * (8 + 24 * (i % 4)))
        words = " ".join((POSITIVE if label == "pos" else NEGATIVE)[j % 7] for j in range(5))
        rows.append((f"{filler} {words}", label))
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("long")
    return {"model": write_tiny_model(root / "model"), "train": write_csv(root / "train.csv", long_rows(24)),
            "dev": write_csv(root / "dev.csv", long_rows(8)), "root": root}


def test_truncate_is_plain_truncation(setup) -> None:
    tok = BertTokenizer.from_pretrained(setup["model"])
    texts = [t for t, _ in long_rows(6)]
    enc = encode(tok, Examples(texts, None, None), 32, long_text=LongText("truncate"))
    assert enc.input_ids == tok(texts, truncation=True, max_length=32)["input_ids"] and enc.doc_index is None


def test_chunks_label_every_window_and_keep_one_label_per_document(setup) -> None:
    tok = BertTokenizer.from_pretrained(setup["model"])
    texts = [t for t, _ in long_rows(4)]
    labels = torch.tensor([1, 0, 1, 0])
    enc = encode(tok, Examples(texts, None, None), 32, labels, long_text=LongText("chunks", stride=8))
    whole = tok(texts)["input_ids"]
    windows = [sum(1 for d in enc.doc_index if d == i) for i in range(4)]
    assert windows == [max(1, -(-(len(ids) - 2 - 30) // 22) + 1) for ids in whole]  # ceil((n-30)/22) + 1 windows
    assert enc.labels.tolist() == [int(labels[d]) for d in enc.doc_index]
    assert torch.equal(enc.document_labels, labels) and enc.num_documents == 4
    assert all(len(ids) <= 32 for ids in enc.input_ids)


def test_one_window_per_document_each_epoch(setup) -> None:
    """--windows one: every epoch's batches hold exactly one window of each document, drawn anew per epoch and the
    same for the same (seed, epoch); --windows all batches every window."""
    tok = BertTokenizer.from_pretrained(setup["model"])
    texts = [t for t, _ in long_rows(12)]
    labels = torch.tensor([i % 2 for i in range(12)])
    enc = encode(tok, Examples(texts, None, None), 32, labels, long_text=LongText("chunks", stride=8, windows="one"))
    assert len(enc) > 2 * 12  # the long documents have several windows to choose from
    drawn = []
    for epoch in range(4):
        batches = enc.epoch_batches(batch_size=5, seed=3, epoch=epoch, rank=0, world_size=1)
        picked = [i for b in batches for i in b]
        assert sorted(enc.doc_index[i] for i in picked) == list(range(12)) and len(batches) == 3
        assert batches == enc.epoch_batches(batch_size=5, seed=3, epoch=epoch, rank=0, world_size=1)
        drawn.append(sorted(picked))
    assert len({tuple(d) for d in drawn}) > 1  # other windows in other epochs
    every = LongText("chunks", stride=8)
    all_windows = encode(tok, Examples(texts, None, None), 32, labels, long_text=every)
    assert sorted(i for b in all_windows.epoch_batches(5, 3, 0, 0, 1) for i in b) == list(range(len(enc)))


def test_evaluation_scores_documents_from_pooled_window_logits(setup) -> None:
    """A model that scores each window by hand: document 0 is right only when its windows are pooled."""
    class Scripted(torch.nn.Module):
        def forward(self, input_ids, attention_mask, token_type_ids, labels):
            # window score: + for windows whose first real token after [CLS] is even, - otherwise
            sign = (input_ids[:, 1] % 2 == 0).float() * 2 - 1
            logits = torch.stack([-sign, sign], dim=1) * attention_mask.sum(1, keepdim=True)
            return type("Out", (), {"logits": logits, "loss": torch.tensor(0.0)})()

    tok = BertTokenizer.from_pretrained(setup["model"])
    texts = [t for t, _ in long_rows(4)]
    enc = encode(tok, Examples(texts, None, None), 32, torch.tensor([1, 0, 1, 0]),
                 long_text=LongText("chunks", stride=8))
    metrics = evaluate_classifier(Scripted(), Dist(), None, data=enc, batch_size=3,
                                  problem_type="single_label_classification")
    window_logits = torch.cat([Scripted()(**{k: v for k, v in enc.collate([i]).items()}).logits
                               for i in range(len(enc))])
    pooled = torch.stack([window_logits[[i for i, d in enumerate(enc.doc_index) if d == doc]].mean(0)
                          for doc in range(4)])
    expected = (pooled.argmax(-1) == torch.tensor([1, 0, 1, 0])).float().mean().item()
    assert metrics["accuracy"] == pytest.approx(expected)


def test_finetune_and_predict_with_chunks(setup, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert finetune.main(["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--validation-file",
                          str(setup["dev"]), "--output-dir", str(out), "--max-length", "32", "--long-text", "chunks",
                          "--stride", "8", "--windows", "all", "--epochs", "1", "--batch-size", "8",
                          "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"--long-text chunks: \d+ of 24 training texts are longer than 32 tokens: \d+ windows \(stride "
                     r"8\); each epoch trains on all of them\.", err)
    pred = tmp_path / "p.jsonl"
    assert predict.main(["--model", str(out), "--input", str(setup["dev"]), "--output", str(pred), "--max-length",
                         "32", "--long-text", "chunks", "--stride", "8", "--all-scores", "--precision", "fp32"]) == 0
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert len(rows) == 8  # one answer per document, not per window
    model = BertForSequenceClassification.from_pretrained(out / "best")
    tok = BertTokenizer.from_pretrained(out / "best")
    texts = [t for t, _ in long_rows(8)]
    enc = encode(tok, Examples(texts, None, None), 32, long_text=LongText("chunks", stride=8))
    with torch.no_grad():
        logits = torch.cat([model(**enc.collate([i])).logits for i in range(len(enc))])
    for doc, row in enumerate(rows):
        mean = logits[[i for i, d in enumerate(enc.doc_index) if d == doc]].mean(0).softmax(-1)
        assert row["scores"]["pos"] == pytest.approx(mean[model.config.label2id["pos"]].item(), abs=1e-5)


def test_finetune_one_window_per_document_trains_one_batch_per_documents(setup, tmp_path, capsys) -> None:
    """24 documents, batches of 8, one window each: 3 steps an epoch (all windows would take more)."""
    out = tmp_path / "run"
    assert finetune.main(["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--output-dir",
                          str(out), "--max-length", "32", "--long-text", "chunks", "--stride", "8", "--windows",
                          "one", "--epochs", "2", "--batch-size", "8", "--no-progress", "--validation-split",
                          "0"]) == 0
    err = capsys.readouterr().err
    assert "each epoch trains on one per document" in err and "done: 6 steps" in err


def test_random_batch_order_draws_one_window_per_document_in_random_batches(setup, tmp_path, monkeypatch) -> None:
    """--batch-order random with --long-text chunks --windows one: the training data batches in random order, still
    one window of each document per epoch, and run_options.json and the fingerprint record the order."""
    seen, real_train = [], finetune.train

    def train(model, data, *args, **kwargs):
        seen.append(data)
        return real_train(model, data, *args, **kwargs)

    monkeypatch.setattr(finetune, "train", train)
    out = tmp_path / "run"
    assert finetune.main(["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--output-dir",
                          str(out), "--max-length", "32", "--long-text", "chunks", "--stride", "8", "--windows",
                          "one", "--batch-order", "random", "--max-steps", "2", "--batch-size", "8", "--no-progress",
                          "--validation-split", "0"]) == 0
    data = seen[0]
    assert data.batch_order == "random" and len(data) > 24
    picked = one_window_per_document(data.doc_index, 42, 0)
    batches = data.epoch_batches(8, 42, 0, 0, 1)
    assert sorted(i for b in batches for i in b) == sorted(picked)
    expected = length_grouped_batches([data.lengths[i] for i in picked], 8, 42, 0, order="random")
    assert batches == [[picked[j] for j in b] for b in expected]
    assert json.loads((out / "run_options.json").read_text())["batch_order"] == "random"
    assert run_folder.load_state(out / "checkpoint-2")["fingerprint"]["batch_order"] == "random"


@pytest.mark.parametrize("flags", [["--max-length", "24", "--long-text", "head-tail", "--head-tokens", "6"], []],
                         ids=["flags", "as-fine-tuned"])
def test_predict_head_tail_reads_the_end(setup, tmp_path, capsys, flags) -> None:
    """With the flags, or without them: the model folder records head-tail with 6 head tokens at 24 tokens, and
    predict's defaults read it back."""
    out = tmp_path / "run"
    assert finetune.main(["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--output-dir",
                          str(out), "--max-length", "24", "--long-text", "head-tail", "--head-tokens", "6",
                          "--max-steps", "2", "--no-progress"]) == 0
    assert json.loads((out / "best" / "long_text.json").read_text()) == {
        "max_length": 24, "how": "head-tail", "head_tokens": 6, "stride": 6, "windows": "one", "pool": "mean"}
    capsys.readouterr()
    pred = tmp_path / "p.jsonl"
    assert predict.main(["--model", str(out), "--input", str(setup["dev"]), "--output", str(pred), *flags,
                         "--all-scores", "--precision", "fp32"]) == 0
    if not flags:
        assert ("--long-text auto: head-tail (first 6 tokens and the end; as the model was fine-tuned)."
                in capsys.readouterr().err)
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    model = BertForSequenceClassification.from_pretrained(out / "best")
    tok = BertTokenizer.from_pretrained(out / "best")
    inputs = head_tail_inputs(tok, [t for t, _ in long_rows(8)], max_length=24, head=6)
    assert all(len(ids) == 24 for ids in inputs.input_ids)
    with torch.no_grad():
        for i, row in enumerate(rows):
            probs = model(torch.tensor([inputs.input_ids[i]])).logits.softmax(-1)[0]
            assert row["scores"]["neg"] == pytest.approx(probs[model.config.label2id["neg"]].item(), abs=1e-5)


def test_default_trains_single_texts_on_one_window_per_document(setup, tmp_path, capsys) -> None:
    """--long-text auto on single-label single texts: chunks with a quarter of --max-length as stride and one window
    per document per epoch (24 documents, batches of 8: 3 steps); the run folder and the model say so."""
    out = tmp_path / "run"
    assert finetune.main(["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--output-dir",
                          str(out), "--max-length", "32", "--epochs", "1", "--batch-size", "8", "--no-progress",
                          "--validation-split", "0"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"--long-text chunks: \d+ of 24 training texts are longer than 32 tokens: \d+ windows \(stride "
                     r"8\); each epoch trains on one per document\.", err) and "done: 3 steps" in err
    options = json.loads((out / "run_options.json").read_text())
    assert (options["long_text"], options["stride"], options["windows"]) == ("chunks", 8, "one")
    assert json.loads((out / "best" / "long_text.json").read_text())["how"] == "chunks"


def test_default_is_plain_truncation_for_pairs_and_regression(setup, tmp_path, capsys) -> None:
    """--long-text auto keeps truncation where chunks was not measured or cannot work: pairs and regression."""
    pairs = write_csv(tmp_path / "pairs.csv", [(t, "a second text", y) for t, y in long_rows(16)],
                      header=("sentence1", "sentence2", "label"))
    scores = write_csv(tmp_path / "scores.csv", [(t, i / 16) for i, (t, _) in enumerate(long_rows(16))])
    for data in (pairs, scores):
        out = tmp_path / data.stem
        assert finetune.main(["--model", str(setup["model"]), "--train-file", str(data), "--output-dir", str(out),
                              "--max-length", "32", "--max-steps", "1", "--no-progress"]) == 0
        assert re.search(r"--long-text truncate: \d+ of \d+ training texts are longer than 32 tokens: cut to that "
                         r"length\.", capsys.readouterr().err)
        assert json.loads((out / "best" / "long_text.json").read_text())["how"] == "truncate"


def test_default_changes_nothing_on_texts_that_fit(setup, tmp_path, capsys) -> None:
    """Texts within --max-length are one window each: the default (chunks, one window) trains exactly the weights
    truncation trains, batch for batch, and no line talks of long texts; run_options.json names no Hub dataset."""
    train = write_csv(tmp_path / "short.csv", sentiment_rows(48))
    weights = []
    for flags in ([], ["--long-text", "truncate"]):
        out = tmp_path / ("default" if not flags else "truncate")
        assert finetune.main(["--model", str(setup["model"]), "--train-file", str(train), "--output-dir", str(out),
                              "--max-length", "64", "--epochs", "2", "--batch-size", "8", "--no-progress",
                              *flags]) == 0
        weights.append(BertForSequenceClassification.from_pretrained(out / "best").state_dict())
        assert "--long-text" not in capsys.readouterr().err
        options = json.loads((out / "run_options.json").read_text())
        assert options["dataset"] is None and options["train_file"] == str(train)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize(("extra", "says"), [
    (["--long-text", "head-tail", "--head-tokens", "40"], "--head-tokens 40 leaves no room within --max-length 32"),
    (["--long-text", "chunks", "--stride", "30"], "--stride 30 must be smaller than the 30 tokens"),
    (["--stride", "30"], "--stride 30 must be smaller than the 30 tokens")])  # auto may pick chunks
def test_long_text_flags_are_checked_against_max_length(setup, tmp_path, capsys, extra, says) -> None:
    assert finetune.main(["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--output-dir",
                          str(tmp_path / "o"), "--max-length", "32", *extra]) == 1
    assert says in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_resume_of_a_run_from_before_windows_keeps_every_window(setup, tmp_path, capsys) -> None:
    """A run_options.json written before --windows existed trained chunks on every window: resuming it must not
    switch to today's default (one window), which the checkpoint's fingerprint would refuse."""
    out = tmp_path / "run"
    assert finetune.main(["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--output-dir",
                          str(out), "--max-length", "32", "--long-text", "chunks", "--stride", "8", "--windows", "all",
                          "--max-steps", "4", "--save-every", "2", "--batch-size", "8", "--no-progress",
                          "--keep-checkpoints", "2"]) == 0
    options = json.loads((out / "run_options.json").read_text())
    del options["windows"]
    (out / "run_options.json").write_text(json.dumps(options))
    capsys.readouterr()
    assert finetune.main(["--resume", str(out / "checkpoint-2")]) == 0
    assert "each epoch trains on all of them" in capsys.readouterr().err


def test_predict_refuses_a_broken_record_in_one_line(setup, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert finetune.main(["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--output-dir",
                          str(out), "--max-length", "32", "--max-steps", "1", "--no-progress"]) == 0
    (out / "best" / "long_text.json").write_text('{"how": "sideways"}')
    capsys.readouterr()
    assert predict.main(["--model", str(out), "--input", str(setup["dev"]), "--output", str(tmp_path / "p")]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {out / 'best' / 'long_text.json'} is not a long-text record written by minibert.finetune; delete "
        "it, or pass --long-text truncate, head-tail or chunks to choose.")
    assert not (tmp_path / "p").exists()
