"""Every flag of both command lines with a bad value: one line naming the flag, the right exit status, and nothing
loaded or written (the model loaders are booby-trapped). Plus the checks on paths made before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from minibert import finetune, inference, predict, pretrain
from tests.tiny import sentiment_rows, write_csv, write_tiny_model

REPO = Path(__file__).resolve().parent.parent

FINETUNE_BAD = {  # flag: bad values (each a usage error: exit 2, one line that names the flag)
    "--batch-size": ["0", "-1", "x"], "--grad-accum": ["0"], "--log-every": ["0"], "--lr": ["nan", "-1", "0", "inf"],
    "--weight-decay": ["nan", "-0.1"], "--seeds": ["1,x", ",", ""], "--epochs": ["0"],
    "--max-train-samples": ["-1"], "--max-eval-samples": ["-1"], "--max-length": ["0", "1", "-5"],
    "--warmup-ratio": ["-0.1", "nan", "1.5"], "--max-grad-norm": ["-1"], "--validation-split": ["-0.5", "1"],
    "--eval-every": ["-1"], "--save-every": ["-1"], "--keep-checkpoints": ["-1"], "--num-workers": ["0"],
    "--max-steps": ["-1"], "--seed": ["x"], "--precision": ["fp8"], "--attn-impl": ["flash"],
    "--problem-type": ["ranking"], "--long-text": ["middle"], "--head-tokens": ["-1"], "--stride": ["-1"],
    "--pool": ["sum"], "--windows": ["some"], "--split-seed": ["x"], "--task": ["ner"], "--tag-column": ["x"],
    "--batch-order": ["sorted"],
}
PRETRAIN_BAD = {flag: values for flag, values in FINETUNE_BAD.items()
                if "--" + flag[2:].replace("-", "_") in {"--" + f.name for f in fields(pretrain.Options)}}
PRETRAIN_BAD.update({"--max-length": ["2", "0"], "--mlm-probability": ["0", "1.5", "nan"]})
PREDICT_BAD = {"--batch-size": ["0", "-1"], "--max-batch-tokens": ["0"], "--max-length": ["1", "0"],
               "--precision": ["fp16"], "--attn-impl": ["flash"], "--long-text": ["middle"], "--head-tokens": ["-1"],
               "--stride": ["-1"], "--pool": ["sum"], "--max-text-bytes": ["0"], "--aggregation": ["mean"],
               "--tag-column": ["x"], "--quantize": ["int4"]}


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the flags were checked")

    for module in (finetune, inference):
        monkeypatch.setattr(module.BertForSequenceClassification, "from_pretrained", refuse)
        monkeypatch.setattr(module.BertTokenizer, "from_pretrained", refuse)


def usage_error(main, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, values in FINETUNE_BAD.items() for v in values])
def test_finetune_bad_flag_values_are_one_line_exit_2(flag, value, capsys, no_model_loading) -> None:
    line = usage_error(finetune.main, ["--train-file", "x.csv", flag, value], capsys)
    assert line.startswith(f"error: argument {flag}: ") and line.endswith("see python -m minibert.finetune --help.")


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, values in PRETRAIN_BAD.items() for v in values])
def test_pretrain_bad_flag_values_are_one_line_exit_2(flag, value, capsys) -> None:
    line = usage_error(pretrain.main, ["--train-file", "x.txt", flag, value], capsys)
    assert line.startswith(f"error: argument {flag}: ") and line.endswith("see python -m minibert.pretrain --help.")


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, values in PREDICT_BAD.items() for v in values])
def test_predict_bad_flag_values_are_one_line_exit_2(flag, value, capsys, no_model_loading) -> None:
    line = usage_error(predict.main, ["--model", "m", flag, value], capsys)
    assert line.startswith(f"error: argument {flag}: ")


def test_every_numeric_flag_is_in_the_table() -> None:
    """A new int/float option must come with a bad value in the table above."""
    for options, table in ((finetune.Options, FINETUNE_BAD), (predict.Options, PREDICT_BAD),
                           (pretrain.Options, PRETRAIN_BAD)):
        bounded = {"--" + f.name.replace("_", "-") for f in fields(options)
                   if f.metadata.get("at_least") is not None or f.metadata.get("above") is not None
                   or f.metadata.get("choices")}
        assert bounded <= set(table), bounded - set(table)


def test_flags_parse_to_their_types_and_bools_switch_both_ways() -> None:
    opts = finetune.parse_args(["--max-length", "64", "--lr", "1e-4", "--seeds", "1,2", "--quoted-tsv"])
    assert (opts.max_length, opts.lr, opts.seeds, opts.quoted_tsv, opts.train_file) == (64, 1e-4, [1, 2], True, None)
    defaults = finetune.parse_args([])
    for f in fields(finetune.Options):
        assert getattr(defaults, f.name) == f.default, f.name


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flags")
    return {"model": write_tiny_model(root / "model"), "train": write_csv(root / "train.csv", sentiment_rows(30)),
            "root": root}


def user_error(main, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_output_dir_that_is_a_file_or_under_one(files, tmp_path, capsys, no_model_loading) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    base = ["--model", str(files["model"]), "--train-file", str(files["train"])]
    assert user_error(finetune.main, [*base, "--output-dir", str(a_file)], capsys) == \
        f"error: --output-dir {a_file} is a file; pass a folder."
    line = user_error(finetune.main, [*base, "--output-dir", str(a_file / "run")], capsys)
    assert line == f"error: --output-dir {a_file / 'run'} is under {a_file}, which is a file; pass a folder."


def test_unwritable_output_dir_and_unreadable_files(files, tmp_path, capsys, monkeypatch, no_model_loading) -> None:
    real_access = os.access
    locked = {tmp_path / "locked", files["train"]}
    monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) not in locked and real_access(p, mode, **k))
    (tmp_path / "locked").mkdir()
    base = ["--model", str(files["model"])]
    line = user_error(finetune.main, [*base, "--train-file", str(files["train"])], capsys)
    assert line == f"error: --train-file {files['train']}: permission denied; make it readable or pass another file."
    locked.discard(files["train"])
    line = user_error(finetune.main, [*base, "--train-file", str(files["train"]), "--output-dir",
                                      str(tmp_path / "locked" / "run")], capsys)
    assert "no permission to write in" in line and "--output-dir" in line


def test_symlink_loop_as_model_is_named(files, tmp_path, capsys) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    line = user_error(finetune.main, ["--model", str(loop), "--train-file", str(files["train"]), "--output-dir",
                                      str(tmp_path / "o")], capsys)
    assert line == f"error: {loop} is a symbolic link that leads nowhere (a loop or a missing target); pass the " \
                   "folder itself."


def test_max_length_above_the_model_is_capped_in_both(files, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert finetune.main(["--model", str(files["model"]), "--train-file", str(files["train"]), "--output-dir",
                          str(out), "--max-length", "4096", "--max-steps", "1", "--no-progress"]) == 0
    assert "--max-length 4096 is more than the model's 512 positions; using 512." in capsys.readouterr().err
    assert json.loads((out / "run_options.json").read_text())["max_length"] == 512
    assert predict.main(["--model", str(out), "--input", str(files["train"]), "--max-length", "1000",
                         "--output", str(tmp_path / "p.jsonl")]) == 0
    assert "--max-length 1000 is more than the model's 512 positions; using 512." in capsys.readouterr().err


def test_predict_output_checked_before_any_prediction(files, tmp_path, capsys, no_model_loading) -> None:
    base = ["--model", str(files["model"]), "--input", str(files["train"])]
    before = files["train"].read_bytes()
    line = user_error(predict.main, [*base, "--output", str(files["train"])], capsys)
    assert line == (f"error: --output {files['train']} is the input file; writing there would overwrite the input, "
                    "so choose another file.")
    assert files["train"].read_bytes() == before
    line = user_error(predict.main, [*base, "--output", str(tmp_path / "missing" / "p.jsonl")], capsys)
    assert line == f"error: --output {tmp_path / 'missing' / 'p.jsonl'}: the folder {tmp_path / 'missing'} does " \
                   "not exist; create it first."
    line = user_error(predict.main, [*base, "--output", str(tmp_path)], capsys)
    assert line.startswith(f"error: --output {tmp_path} is a folder")


def test_predict_refuses_a_model_without_a_classifier(files, tmp_path, capsys) -> None:
    from minibert import BertModel

    encoder = tmp_path / "encoder"
    BertModel.from_pretrained(files["model"]).save_pretrained(encoder)
    (encoder / "vocab.txt").write_bytes((files["model"] / "vocab.txt").read_bytes())
    line = user_error(predict.main, ["--model", str(encoder), "--input", str(files["train"])], capsys)
    assert line.startswith("error: encoder has no classification head (no classifier.weight)")


def test_vocabulary_of_another_size_than_the_checkpoint_is_refused(files, tmp_path, capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for f in files["model"].iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    assert finetune.main(["--model", str(model), "--train-file", str(files["train"]), "--output-dir",
                          str(tmp_path / "o")]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: the tokenizer in {model} has 6 tokens but the model's vocab_size is ")


def test_exit_codes_as_a_process(files, tmp_path) -> None:
    """The statuses scripts rely on, from real processes: 2 usage, 1 user error, 0 done."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "minibert.finetune", *argv], capture_output=True, text=True,
                              env=env, timeout=300, cwd=tmp_path)

    proc = run("--batch-size", "0")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: argument --batch-size: must be at least 1, got 0; see python -m minibert.finetune --help."]
    proc = run("--model", str(files["model"]), "--train-file", str(tmp_path / "nope.csv"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: --train-file {tmp_path / 'nope.csv'} does not exist; check "
                                                "the path."]
    proc = run("--model", str(files["model"]), "--train-file", str(files["train"]), "--output-dir",
               str(tmp_path / "run"), "--max-steps", "2", "--validation-split", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    # quiet when all is well: the new classifier is no warning, and a plot without validation data draws no empty
    # legend (matplotlib's "No artists with labels" warning)
    assert "warning" not in proc.stderr.lower() and (tmp_path / "run" / "metrics.png").is_file()
    proc = run("--model", str(files["model"]), "--train-file", str(files["train"]), "--output-dir",
               str(tmp_path / "run"))
    assert proc.returncode == 1 and "already holds a run" in proc.stderr
