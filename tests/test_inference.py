"""minibert.inference and the doors over it: predict and embed stream their input, refuse an oversized text in one
sentence, never corrupt an earlier output, and name the model without its path; --label-names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from minibert import finetune, predict
from minibert.embed import main as embed_main
from minibert.inference import InferenceModel, LongTextFlags
from minibert.long_text import encode_long
from tests.tiny import sentiment_rows, write_csv, write_tiny_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny classifier fine-tuned on integer labels named by --label-names."""
    root = tmp_path_factory.mktemp("inference")
    rows = [(text, 1 if label == "pos" else 0) for text, label in sentiment_rows(120)]
    paths = {"model": write_tiny_model(root / "model"), "train": write_csv(root / "train.csv", rows),
             "out": root / "run"}
    assert finetune.main(["--model", str(paths["model"]), "--train-file", str(paths["train"]), "--output-dir",
                          str(paths["out"]), "--epochs", "3", "--batch-size", "16", "--lr", "5e-3", "--no-progress",
                          "--label-names", "negative,positive"]) == 0
    return paths


def test_label_names_name_the_classes_everywhere(run: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    config = json.loads((run["out"] / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(run["out"] / "best")
    assert hf.config.id2label == {0: "negative", 1: "positive"}  # transformers reads the names as they are
    out = tmp_path / "p.jsonl"
    src = write_csv(tmp_path / "in.csv", [("the movie was great great fun", 1), ("awful dull film", 0)])
    assert predict.main(["--model", str(run["out"]), "--input", str(src), "--output", str(out), "--no-progress",
                         "--all-scores"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in records] == ["positive", "negative"]
    assert "accuracy 1.0000" in capsys.readouterr().err  # the file's 0/1 gold labels read as the names they stand for
    assert set(records[0]["scores"]) == {"negative", "positive"}


@pytest.mark.parametrize(("names", "message"), [
    ("negative", "must list two or more different, non-empty names"),
    ("a,a", "must list two or more different"),
    ("a,b,", "must list two or more different, non-empty names"),
])
def test_bad_label_names_are_one_sentence(names: str, message: str, run: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    argv = ["--model", str(run["model"]), "--train-file", str(run["train"]), "--output-dir", str(tmp_path / "r"),
            "--label-names", names, "--no-progress"]
    assert finetune.main(argv) == 1
    assert message in capsys.readouterr().err


def test_label_out_of_range_names_its_line(run: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    train = write_csv(tmp_path / "t.csv", [("a text", 0), ("another", 2), ("more", 1)])
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(train), "--output-dir",
                          str(tmp_path / "r"), "--label-names", "negative,positive", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: line 3 of {train} has label '2'; with --label-names every label must be a class id from 0 "
                   "to 1 or one of the names negative, positive.")


def test_predict_streams_its_output_as_it_reads(run: dict[str, Path]) -> None:
    """The first chunk's answers are written while stdin is still open: predict does not read all input first."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "minibert.predict", "--model", str(run["out"]), "--input", "-",
                             "--no-progress"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        proc.stdin.write("a fine film\n" * predict.CHUNK_TEXTS)
        proc.stdin.flush()
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.extend(proc.stdout.readline()
                                                              for _ in range(predict.CHUNK_TEXTS)), daemon=True)
        reader.start()
        reader.join(timeout=60)  # the first chunk's answers arrive while stdin stays open, or the test fails
        assert not reader.is_alive(), "predict wrote nothing before its input ended"
        assert all(json.loads(line)["label"] in ("negative", "positive") for line in first)
        proc.stdin.write("one more\n")
        proc.stdin.close()
        assert len(proc.stdout.read().splitlines()) == 1
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def test_an_oversized_text_is_refused_and_the_earlier_output_kept(run: dict[str, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in.csv"
    rows = [("a fine film", 1)] * 1500 + [("word " * 300, 0)]  # the long row comes in the second chunk
    write_csv(src, rows)
    out = tmp_path / "p.jsonl"
    out.write_text("earlier predictions\n")
    argv = ["--model", str(run["out"]), "--input", str(src), "--output", str(out), "--max-text-bytes", "1000",
            "--no-progress"]
    assert predict.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: line 1502 of {src} is longer than 1,000 bytes; split that text, or raise "
                   "--max-text-bytes.")
    assert out.read_text() == "earlier predictions\n"  # half a run never replaces a finished file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "p.jsonl"]  # and leaves no temporary file
    assert embed_main(["--model", str(run["out"]), "--input", str(src), "--output", str(out), "--max-text-bytes",
                       "1000", "--no-progress"]) == 1
    assert "line 1502" in capsys.readouterr().err and out.read_text() == "earlier predictions\n"


def test_chunks_of_a_file_equal_one_pass(run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """250 rows read 100 at a time (three chunks) give the answers of the model run on all of them at once, in input
    order."""
    monkeypatch.setattr(predict, "CHUNK_TEXTS", 100)
    rows = sentiment_rows(250, seed=3)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "p.jsonl"
    assert predict.main(["--model", str(run["out"]), "--input", str(src), "--output", str(out), "--no-progress",
                         "--precision", "fp32", "--all-scores"]) == 0
    streamed = [json.loads(line) for line in out.read_text().splitlines()]
    model = InferenceModel.load(str(run["out"]), precision="fp32")
    texts = [text for text, _ in rows]
    prepared = model.prepare("predict", texts)
    whole = model.records(model.pooled_logits(model.forward("predict", prepared.rows), prepared))
    assert len(streamed) == 250
    assert max(abs(a["score"] - b["score"]) for a, b in zip(streamed, whole)) < 1e-5
    assert [a["label"] for a in streamed] == [b["label"] for b in whole]


def test_the_model_is_named_without_its_path(run: dict[str, Path]) -> None:
    model = InferenceModel.load(str(run["out"]), precision="fp32")
    info = json.dumps(model.info())
    assert model.name == "run" and str(run["out"].parent) not in info
    assert model.info()["labels"] == ["negative", "positive"]


def test_prepare_reads_long_texts_as_encode_long(run: dict[str, Path]) -> None:
    """Windows of a long text are rows of that text; one tokeniser pass gives the truncation flags."""
    texts = ["word " * 100, "short text", "good " * 40]
    for how in ("truncate", "head-tail", "chunks"):
        model = InferenceModel.load(str(run["out"]), max_length=32, precision="fp32",
                                    long_text=LongTextFlags(how, head_tokens=8, stride=8))
        prepared = model.prepare("predict", texts)
        reference = encode_long(model.tokenizer, texts, None, 32, how, 8, 8)
        assert [r.input_ids for r in prepared.rows] == reference.input_ids
        assert prepared.doc_index == reference.doc_index
        if how == "chunks":
            assert prepared.windows[0] > 3 and prepared.windows[1] == 1 and not any(prepared.truncated)
        else:
            assert prepared.truncated == [True, False, True] and prepared.windows == [1, 1, 1]
        logits = model.pooled_logits(model.forward("predict", prepared.rows), prepared)
        assert logits.shape == (3, 2) and torch.isfinite(logits).all()


def test_quantize_int8_through_predict_embed_and_serve(tmp_path: Path, minilm_dir: Path, shared_dir: Path) -> None:
    """--quantize int8 on the three doors: the classifier's answers agree with fp32 on real sentences, the vectors
    keep their direction, and /info says what runs."""
    from minibert import BertForSequenceClassification, BertTokenizer
    from tests.test_serve import client_for

    folder = tmp_path / "minilm-classifier"
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)  # a random head, unamplified
    with torch.no_grad():
        model.classifier.weight.mul_(10)  # logits of std ~1 on real sentences: labels vary, none near-certain
    model.save_pretrained(folder)
    BertTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    lines = (shared_dir / "data" / "sst2" / "dev.tsv").read_text().splitlines()[1:65]
    src = write_csv(tmp_path / "in.csv", [(line.split("\t")[0],) for line in lines], ("text",))
    answers = {}
    for flags in ((), ("--quantize", "int8")):
        out = tmp_path / f"p{len(flags)}.jsonl"
        assert predict.main(["--model", str(folder), "--input", str(src), "--output", str(out), "--precision", "fp32",
                             "--all-scores", "--no-progress", *flags]) == 0
        answers[flags] = [json.loads(line) for line in out.read_text().splitlines()]
    fp32, int8 = answers[()], answers[("--quantize", "int8")]
    agree = sum(a["label"] == b["label"] for a, b in zip(fp32, int8)) / len(fp32)
    moved = max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(fp32, int8) for k in a["scores"])
    assert agree >= 0.95 and 1e-4 < moved < 0.05, (agree, moved)  # quantized (it moves), and close
    vectors = {}
    for flags in ((), ("--quantize", "int8")):
        out = tmp_path / f"e{len(flags)}.jsonl"
        assert embed_main(["--model", str(minilm_dir), "--input", str(src), "--output", str(out), "--no-progress",
                           *flags]) == 0
        vectors[flags] = torch.tensor([json.loads(line)["embedding"] for line in out.read_text().splitlines()])
    cosine = torch.nn.functional.cosine_similarity(vectors[()], vectors[("--quantize", "int8")])
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.97 and cosine.min() < 1 - 1e-6, cosine
    with client_for(folder, quantize="int8") as c:
        info = c.get("/info").json()
        served = c.post("/predict", json={"inputs": [line.split("\t")[0] for line in lines[:8]]}).json()["results"]
    assert info["quantize"] == "int8" and info["precision"] == "int8 matmuls, fp32 elsewhere"
    assert max(abs(a["score"] - b["score"]) for a, b in zip(served, int8[:8])) < 1e-5  # the server runs the same
