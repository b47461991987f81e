"""Token classification end to end on a tiny model: finetune (task detected), a checkpoint transformers loads with
its id2label, predict on words and on raw text, bad files as one sentence."""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import pytest
import torch
import transformers
from seqeval.metrics import f1_score

from minibert import finetune, predict, run_folder, token_finetune
from minibert.heads import BertForTokenClassification
from tests.tiny import NEGATIVE, POSITIVE, WORDS, write_tiny_model


def tagged(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Toy NER: a positive word is a POS entity, a negative one NEG, and "film" right after either continues it."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 14))]
        tags = []
        for i, word in enumerate(words):
            kind = "POS" if word in POSITIVE else "NEG" if word in NEGATIVE else None
            if kind:
                tags.append("B-" + kind)
            elif word == "film" and i and tags[-1] != "O":
                tags.append("I-" + tags[-1][2:])
            else:
                tags.append("O")
        out.append((words, tags))
    return out


def write_conll(path: Path, sentences) -> Path:
    path.write_text("-DOCSTART- -X- O\n\n" + "\n".join(
        "".join(f"{w} X {t}\n" for w, t in zip(words, tags)) for words, tags in sentences))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    paths = {"model": write_tiny_model(root / "model"), "train": write_conll(root / "train.conll", tagged(300, 0)),
             "dev": write_conll(root / "dev.conll", tagged(40, 1)), "out": root / "run"}
    argv = ["--model", str(paths["model"]), "--train-file", str(paths["train"]), "--validation-file",
            str(paths["dev"]), "--output-dir", str(paths["out"]), "--epochs", "3", "--batch-size", "16", "--lr", "5e-3",
            "--precision", "fp32", "--no-progress"]
    assert finetune.main(argv) == 0
    return paths


def test_finetune_detects_the_task_and_keeps_the_best_by_entity_f1(run):
    records = [json.loads(line) for line in (run["out"] / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    assert {"precision", "recall", "f1", "f1_POS", "f1_NEG", "accuracy"} <= evals[-1].keys()
    best = json.loads((run["out"] / "best" / "trainer_info.json").read_text())["metrics"]
    assert best["f1"] == max(e["f1"] for e in evals) > 0.9  # the toy task is easy
    config = json.loads((run["out"] / "best" / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == {"0": "B-NEG", "1": "B-POS", "2": "I-NEG", "3": "I-POS", "4": "O"}


def test_transformers_loads_the_checkpoint(run):
    folder = run["out"] / "best"
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(str(folder)).eval()
    ours = BertForTokenClassification.from_pretrained(folder)
    assert theirs.config.id2label[4] == "O"
    ids = torch.tensor([[2, 5, 9, 14, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        diff = (ours(ids, attention_mask=mask).logits - theirs(ids, attention_mask=mask).logits)[0, :5].abs().max()
    assert diff < 1e-5


def test_predict_words_scores_as_validation(run, tmp_path, capsys):
    """predict's tags on the dev file, scored by seqeval, give the F1 that picked best/ (same model, fp32)."""
    out = tmp_path / "pred.jsonl"
    assert predict.main(["--model", str(run["out"]), "--input", str(run["dev"]), "--output", str(out),
                         "--precision", "fp32", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    dev = tagged(40, 1)
    assert len(rows) == 40 and [len(r["tags"]) for r in rows] == [len(w) for w, _ in dev]
    f1 = f1_score([t for _, t in dev], [r["tags"] for r in rows])
    best = max(json.loads(line)["eval"]["f1"] for line in (run["out"] / "metrics.jsonl").read_text().splitlines()
               if "eval" in line)
    assert f1 == pytest.approx(best, abs=1e-9)
    assert f"f1 {best:.4f}" in capsys.readouterr().err
    entity = next(e for r in rows for e in r["entities"])
    assert set(entity) == {"entity_group", "score", "word", "start", "end"}


def test_predict_quantize_int8_runs_the_tagger_in_int8(run, tmp_path):
    """--quantize int8 reaches a token classifier too (it was ignored: the tagger ran in float): the tags agree with
    fp32 on the dev file, and the entity scores move by int8 rounding, not more."""
    rows = {}
    for flags in ((), ("--quantize", "int8")):
        out = tmp_path / f"pred{len(flags)}.jsonl"
        assert predict.main(["--model", str(run["out"]), "--input", str(run["dev"]), "--output", str(out),
                             "--precision", "fp32", "--no-progress", *flags]) == 0
        rows[flags] = [json.loads(line) for line in out.read_text().splitlines()]
    fp32, int8 = rows[()], rows[("--quantize", "int8")]
    tags = [(a, b) for r, q in zip(fp32, int8) for a, b in zip(r["tags"], q["tags"])]
    assert sum(a == b for a, b in tags) / len(tags) >= 0.97
    moved = [abs(e["score"] - f["score"]) for r, q in zip(fp32, int8) for e, f in zip(r["entities"], q["entities"])]
    assert 1e-5 < max(moved) < 0.05, max(moved)


def test_predict_raw_text(run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("awful dull plot\nit was a great film\n\n"))
    assert predict.main(["--model", str(run["out"]), "--input", "-", "--aggregation", "first"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and rows[2] == {"entities": []}
    assert [(e["entity_group"], e["start"], e["end"]) for e in rows[0]["entities"]] == [("NEG", 0, 5), ("NEG", 6, 10)]
    assert (rows[1]["entities"][0]["entity_group"], rows[1]["entities"][0]["word"]) == ("POS", "great")


def test_jsonl_rows_are_detected(run, tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"tokens": w, "ner_tags": t}) + "\n" for w, t in tagged(40, 2)))
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(train), "--output-dir",
                          str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "8", "--no-progress"]) == 0
    assert "task: token-classification (the rows of train.jsonl hold lists of words)" in capsys.readouterr().err


def test_bad_file_is_one_sentence(run, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["good", "film"], "ner_tags": ["O"]}\n')
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(bad), "--output-dir",
                          str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: line 1 of {bad} has 2 words but 1 tags; give one tag per word."
    assert "Traceback" not in "\n".join(err)


def test_predict_jsonl_words_with_and_without_gold_ids(run, tmp_path, capsys):
    dev = tagged(10, 1)
    ids = {"B-NEG": 0, "B-POS": 1, "I-NEG": 2, "I-POS": 3, "O": 4}
    with_ids = tmp_path / "ids.jsonl"
    with_ids.write_text("".join(json.dumps({"tokens": w, "ner_tags": [ids[t] for t in tags]}) + "\n"
                                for w, tags in dev))
    words_only = tmp_path / "words.jsonl"
    words_only.write_text("".join(json.dumps({"words": w}) + "\n" for w, _ in dev))
    assert predict.main(["--model", str(run["out"]), "--input", str(with_ids), "--label-names", ",".join(ids)]) == 0
    captured = capsys.readouterr()
    scored = [json.loads(line) for line in captured.out.splitlines()]
    assert "f1 " in captured.err and len(scored) == 10
    assert predict.main(["--model", str(run["out"]), "--input", str(words_only)]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == scored


def test_unseen_validation_tag_is_named_with_its_line(run, tmp_path, capsys):
    dev = tmp_path / "dev.conll"
    dev.write_text("good B-POS\nfilm B-FILM\n")
    assert finetune.main(["--model", str(run["model"]), "--train-file", str(run["train"]), "--validation-file",
                          str(dev), "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: the validation data in {dev} has tags without a label id: 'B-FILM' (line 2); the tags that the "
        "model knows are B-NEG, B-POS, I-NEG, I-POS, O.")
    assert not (tmp_path / "run").exists()


def test_random_batch_order_trains_and_resumes_only_in_its_order(tmp_path, monkeypatch, capsys):
    """--batch-order random reaches the training data, run_options.json and the checkpoint's fingerprint; a resume
    in another order is refused, by the options and, without run_options.json, by the fingerprint."""
    model, train_file = write_tiny_model(tmp_path / "model"), write_conll(tmp_path / "train.conll", tagged(24, 2))
    out = tmp_path / "run"
    argv = ["--model", str(model), "--train-file", str(train_file), "--validation-split", "0", "--output-dir",
            str(out), "--batch-size", "4", "--max-steps", "2", "--save-every", "1", "--keep-checkpoints", "2",
            "--precision", "fp32", "--no-progress"]
    orders, real_train = [], token_finetune.train

    def train(model, data, *args, **kwargs):
        orders.append(data.batch_order)
        return real_train(model, data, *args, **kwargs)

    monkeypatch.setattr(token_finetune, "train", train)
    assert finetune.main([*argv, "--batch-order", "random"]) == 0
    assert orders == ["random"]
    assert json.loads((out / "run_options.json").read_text())["batch_order"] == "random"
    assert run_folder.load_state(out / "checkpoint-1")["fingerprint"]["batch_order"] == "random"
    capsys.readouterr()
    assert finetune.main(["--resume", str(out / "checkpoint-1"), "--batch-order", "grouped"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --batch-order grouped differs from the run's random, so the resumed run would not continue the same "
        "one; resume with the same value, or pass --allow-resume-mismatch.")
    (out / "run_options.json").unlink()  # a run folder without its options: every flag from the command line
    assert finetune.main([*argv, "--resume", str(out / "checkpoint-1")]) == 1
    assert "cannot resume exactly: the run differs from the checkpoint's: batch_order ('random' then, None now)" in \
        capsys.readouterr().err


def test_runs_saved_before_batch_order_resume_grouped(tmp_path, capsys):
    """A run folder from before --batch-order (no batch_order in run_options.json nor in the fingerprint) resumes, in
    the grouped order it trained in."""
    model, train_file = write_tiny_model(tmp_path / "model"), write_conll(tmp_path / "train.conll", tagged(24, 2))
    out = tmp_path / "run"
    assert finetune.main(["--model", str(model), "--train-file", str(train_file), "--validation-split", "0",
                          "--output-dir", str(out), "--batch-size", "4", "--max-steps", "2", "--save-every", "1",
                          "--keep-checkpoints", "2", "--precision", "fp32", "--no-progress"]) == 0
    options = json.loads((out / "run_options.json").read_text())
    assert options.pop("batch_order") == "grouped"
    (out / "run_options.json").write_text(json.dumps(options))
    assert "batch_order" not in run_folder.load_state(out / "checkpoint-1")["fingerprint"]
    assert finetune.main(["--resume", str(out / "checkpoint-1")]) == 0
    assert f"resumed from {out / 'checkpoint-1'} at step 1" in capsys.readouterr().err
