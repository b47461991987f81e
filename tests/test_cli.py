"""The two command lines end to end on tiny models: fine-tune then predict, errors as one sentence, Hub datasets."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minibert import finetune, predict
from minibert.errors import MinibertError
from tests.tiny import sentiment_rows, write_csv, write_tiny_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One fine-tuned tiny model (string labels, CSV), shared by the predict tests."""
    root = tmp_path_factory.mktemp("cli")
    paths = {"model": write_tiny_model(root / "model"), "train": write_csv(root / "train.csv", sentiment_rows(200)),
             "dev": write_csv(root / "dev.csv", sentiment_rows(40, seed=1)), "out": root / "run"}
    argv = ["--model", str(paths["model"]), "--train-file", str(paths["train"]), "--validation-file", str(paths["dev"]),
            "--output-dir", str(paths["out"]), "--epochs", "4", "--batch-size", "16", "--lr", "5e-3", "--no-progress"]
    assert finetune.main(argv) == 0
    return paths


def last_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_finetune_then_predict_on_a_csv(run, tmp_path, capsys) -> None:
    assert (run["out"] / "metrics.jsonl").is_file() and (run["out"] / "metrics.png").is_file()
    output = tmp_path / "pred.jsonl"
    assert predict.main(["--model", str(run["out"]), "--input", str(run["dev"]), "--output", str(output),
                         "--all-scores"]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    gold = [label for _, label in sentiment_rows(40, seed=1)]
    assert len(rows) == 40 and set(rows[0]["scores"]) == {"neg", "pos"}
    assert [r["label"] for r in rows] == gold  # in input order, named as in the training data (the toy task is easy)
    assert all(r["score"] == max(r["scores"].values()) for r in rows)
    assert "accuracy 1.0000" in capsys.readouterr().err


def test_predict_from_stdin(run, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("the movie was great great fun\nthe movie was awful dull\n\n"))
    assert predict.main(["--model", str(run["out"]), "--input", "-"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows[:2]] == ["pos", "neg"] and len(rows) == 3  # the empty line gets an answer too


def test_predict_in_bf16_agrees_with_fp32(run, tmp_path) -> None:
    scores = {}
    for precision in ("fp32", "bf16"):
        output = tmp_path / f"{precision}.jsonl"
        assert predict.main(["--model", str(run["out"]), "--input", str(run["dev"]), "--output", str(output),
                             "--precision", precision, "--all-scores"]) == 0
        scores[precision] = [json.loads(line) for line in output.read_text().splitlines()]
    fp32, bf16 = scores["fp32"], scores["bf16"]
    assert [r["label"] for r in bf16] == [r["label"] for r in fp32]
    diffs = [abs(a["scores"][k] - b["scores"][k]) for a, b in zip(fp32, bf16) for k in a["scores"]]
    assert 0 < max(diffs) < 1e-2  # bf16 did run (the scores moved), within the numeric contract


@pytest.mark.parametrize(("device", "says"), [("tpu", "is not a device"), ("meta", "only cpu and cuda")]
                         + ([("cuda:99", "GPU(s) here")] if torch.cuda.is_available()
                            else [("cuda", "torch sees none here")]))
def test_predict_refuses_a_device_it_cannot_use(run, capsys, device, says) -> None:
    assert predict.main(["--model", str(run["out"]), "--input", "-", "--device", device]) == 1
    line = last_line(capsys)
    assert line.startswith("error: ") and says in line


# --- long texts, huge words, batch of one, partial final batch ------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_extreme_inputs_give_finite_scores(run, tmp_path, capsys, batch_size) -> None:
    texts = ["good " * 2000, "x" * 10_000, "", "NA", "bad"]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert predict.main(["--model", str(run["out"]), "--input", str(path), "--batch-size", str(batch_size)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5 and all(math.isfinite(r["score"]) for r in rows)


def test_training_with_partial_batches_and_long_texts(run, tmp_path) -> None:
    rows = sentiment_rows(9) + [("good " * 3000, "pos"), ("y" * 10_000, "neg")]
    train = write_csv(tmp_path / "t.csv", rows)
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(train), "--output-dir", str(tmp_path / "o"),
                          "--batch-size", "3", "--max-length", "512", "--epochs", "1", "--validation-split", "0.1",
                          "--no-progress"]) == 0


# --- errors are one sentence, exit 1, nothing written --------------------------------------------------------


def test_missing_column_is_one_sentence_and_writes_nothing(run, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    argv = ["--model", str(run["model"]), "--train-file", str(run["train"]), "--text-column", "review",
            "--output-dir", str(out)]
    assert finetune.main(argv) == 1
    assert last_line(capsys) == (f"error: {run['train']} has no column 'review'; its columns are: text, label "
                                 "(check --text-column).")
    assert not out.exists()
    with pytest.raises(MinibertError):
        finetune.main([*argv, "--debug"])


def test_unseen_validation_label_is_reported(run, tmp_path, capsys) -> None:
    dev = write_csv(tmp_path / "dev.csv", [("fine", "pos"), ("meh", "neutral")])
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(run["train"]), "--validation-file",
                          str(dev), "--output-dir", str(tmp_path / "o")]) == 1
    assert last_line(capsys) == (f"error: the validation data in {dev} has labels never seen in training: 'neutral' "
                                 "(line 3); the model knows only neg, pos.")


def test_predict_lists_unknown_gold_labels(run, tmp_path, caplog) -> None:
    path = write_csv(tmp_path / "p.csv", [("good", "pos"), ("so so", "mixed")])
    assert predict.main(["--model", str(run["out"]), "--input", str(path)]) == 0
    assert "labels never seen in training: 'mixed' (line 3)" in caplog.text


def test_predict_on_a_folder_without_model(tmp_path, capsys) -> None:
    assert predict.main(["--model", str(tmp_path / "nothing"), "--input", "-"]) == 1
    assert "nothing does not exist; check the path" in last_line(capsys)


def test_help_documents_every_flag_with_its_default(capsys) -> None:
    with pytest.raises(SystemExit):
        finetune.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--train-file", "--dataset", "--precision", "--resume", "--seeds", "--eval-every"):
        assert flag in text
    assert "(default: bert-base-uncased)" in text and "(default: stanfordnlp/imdb)" in text


# --- labels of other kinds, several seeds ------------------------------------------------------------------------


def test_regression_and_multi_label_runs(run, tmp_path) -> None:
    reg = tmp_path / "reg.jsonl"
    reg.write_text("".join(json.dumps({"sentence": t, "score": 0.25 + (y == "pos")}) + "\n"
                           for t, y in sentiment_rows(40)))
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(reg), "--output-dir", str(tmp_path / "r"),
                          "--epochs", "1", "--no-progress"]) == 0
    config = json.loads((tmp_path / "r" / "best" / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["num_labels"] == 1
    multi = tmp_path / "multi.jsonl"
    multi.write_text("".join(json.dumps({"text": t, "labels": [y, "film"] if i % 3 else [y]}) + "\n"
                             for i, (t, y) in enumerate(sentiment_rows(40))))
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(multi), "--output-dir",
                          str(tmp_path / "m"), "--epochs", "1", "--no-progress"]) == 0
    config = json.loads((tmp_path / "m" / "best" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["label2id"] == {
        "film": 0, "neg": 1, "pos": 2}


def test_seeds_report_mean_and_std(run, tmp_path, capsys) -> None:
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(run["train"]), "--validation-file",
                          str(run["dev"]), "--output-dir", str(tmp_path), "--seeds", "1,2", "--max-steps", "3",
                          "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "f1: " in err and " ± " in err and "over seeds 1,2" in err
    assert (tmp_path / "seed-1" / "best").is_dir() and (tmp_path / "seed-2" / "best").is_dir()


# --- Hub datasets, offline ---------------------------------------------------------------------------------------


def hub_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home"),
            "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_no_flags_offline_says_which_flags_to_pass(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "minibert.finetune"], cwd=tmp_path, capture_output=True, text=True,
                          env=hub_env(tmp_path / "cache"), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not read dataset 'stanfordnlp/imdb'")
    assert line.endswith("for local files pass --train-file FILE [--validation-file FILE] and --model FOLDER.")


def test_hub_dataset_from_a_cache_laid_out_like_the_real_one(run, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "cache" / "datasets--org--toy"
    snapshot = repo / "snapshots" / "0123abcd" / "plain_text"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    rows = sentiment_rows(30)
    for split in ("train", "test", "unsupervised"):
        pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [int(y == "pos") for _, y in rows]}),
                       snapshot / f"{split}-00000-of-00001.parquet")
    proc = subprocess.run([sys.executable, "-m", "minibert.finetune", "--dataset", "org/toy", "--model",
                           str(run["model"]), "--output-dir", str(tmp_path / "out"), "--max-steps", "2",
                           "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                          env=hub_env(tmp_path / "cache"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "27 training rows, 3 validation rows" in proc.stderr
    assert any(f"test ({how}, as validation): loss" in proc.stderr for how in ("bf16 autocast", "fp32"))


@pytest.mark.slow
def test_minilm_on_sst2_end_to_end(minilm_dir, shared_dir, tmp_path, capsys) -> None:
    sst2 = shared_dir / "data" / "sst2"
    assert finetune.main(["--model", str(minilm_dir), "--train-file", str(sst2 / "train.tsv"), "--validation-file",
                          str(sst2 / "dev.tsv"), "--output-dir", str(tmp_path), "--max-train-samples", "4000",
                          "--epochs", "1", "--batch-size", "32", "--lr", "5e-5", "--no-progress"]) == 0
    best = json.loads((tmp_path / "best" / "trainer_info.json").read_text())
    assert best["metrics"]["accuracy"] > 0.75


def test_text_pairs_end_to_end(run, tmp_path, capsys) -> None:
    rows = [(t, t if i % 2 else "the plot", "same" if i % 2 else "other")
            for i, (t, _) in enumerate(sentiment_rows(30))]
    train = write_csv(tmp_path / "pairs.csv", rows, header=("sentence1", "sentence2", "label"))
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(train), "--output-dir", str(tmp_path / "o"),
                          "--epochs", "1", "--no-progress"]) == 0
    assert "text 'sentence1', text pair 'sentence2', label 'label'" in capsys.readouterr().err
    assert predict.main(["--model", str(tmp_path / "o"), "--input", str(train)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 30 and {r["label"] for r in rows} <= {"same", "other"}


BAD_FILES = {
    "empty.csv": (b"", "empty.csv is empty"),
    "header.csv": (b"text,label\n", "header.csv has a header (text, label) but no data rows"),
    "ragged.csv": (b"text,label\na,1\nb,1,extra\n", "line 3 of {path} has 3 fields but the header has 2"),
    "latin1.tsv": (b"sentence\tlabel\ncaf\xe9\t1\n", "line 2 of {path} is not valid UTF-8 (byte 0xe9)"),
    "quote.csv": (b'text,label\n"open,1\nb,0\n', "of {path} cannot be parsed"),
    "nolabel.csv": (b"text,stars\na,1\n", "no column with a usual label name; its columns are: text, stars"),
    "null.jsonl": (b'{"text": "a", "label": 1}\n{"text": null, "label": 1}\n', "line 2 of {path} has no text (null)"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_training_files_exit_1_with_one_sentence(run, tmp_path, capsys, name) -> None:
    content, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out"
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(path), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    assert expected.format(path=path) in err.strip().splitlines()[-1]
    assert not out.exists()
