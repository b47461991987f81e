"""One run per folder, and nothing in a run folder that runs code or loses data: a resume refuses a pickle that
would execute, a fresh run refuses another run's folder, a second process is locked out, a torn metrics line is
survived, files get the user's umask."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minibert import finetune, run_folder
from minibert.errors import MinibertError
from minibert.files import atomic_write_text
from tests.tiny import sentiment_rows, write_csv, write_tiny_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"model": write_tiny_model(root / "model"), "train": write_csv(root / "train.csv", sentiment_rows(40))}


def args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--output-dir", str(out),
            "--batch-size", "8", "--max-steps", "4", "--save-every", "2", "--log-every", "1", "--no-progress", *extra]


class Marker:
    """Unpickling this creates a file: the proof that a pickle ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_resume_refuses_a_state_file_that_would_run_code(setup, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert finetune.main(args(setup, out)) == 0
    state = out / "checkpoint-4" / run_folder.STATE_FILE
    marker = tmp_path / "pwned"
    with open(state, "wb") as f:
        torch.save({"step": 4, "evil": Marker(str(marker))}, f)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert finetune.main(["--resume", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {state} holds Python objects that could run code when loaded, which minibert never "
                   "writes; refusing it. Resume only from run folders you trust, or start without --resume."]
    assert not marker.exists()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    with pytest.raises(pickle.UnpicklingError):  # what the check relies on: torch's data-only loader refuses it
        torch.load(state, weights_only=True)


def test_a_corrupt_state_file_is_one_sentence(setup, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert finetune.main(args(setup, out)) == 0
    state = out / "checkpoint-4" / run_folder.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    assert finetune.main(["--resume", str(out), "--no-progress"]) == 1
    assert capsys.readouterr().err.strip() == (f"error: {state} is not a readable training state (RuntimeError); "
                                               "resume from an earlier checkpoint of the run folder, or start "
                                               "without --resume.")


def test_a_fresh_run_refuses_a_folder_holding_another_run_unless_overwrite(setup, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert finetune.main(args(setup, out)) == 0
    (out / "notes.txt").write_text("mine")
    first = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert finetune.main(args(setup, out, "--seed", "3")) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: --output-dir {out} already holds a run (") and "--overwrite" in line
    assert (out / "metrics.jsonl").read_text() == first
    assert finetune.main(args(setup, out, "--seed", "3", "--overwrite")) == 0
    records = run_folder.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "eval" not in r] == [1, 2, 3, 4]  # the new run's lines only
    assert (out / "notes.txt").read_text() == "mine"  # only the earlier run's own files were removed
    assert json.loads((out / "run_options.json").read_text())["seed"] == 3


def test_a_second_process_is_locked_out(tmp_path) -> None:
    with run_folder.RunLock(tmp_path):
        assert (tmp_path / run_folder.LOCK_FILE).read_text().strip() == str(os.getpid())
        code = ("import pathlib, sys\nfrom minibert import run_folder\nfrom minibert.errors import MinibertError\n"
                "try:\n    run_folder.RunLock(pathlib.Path(sys.argv[1])).__enter__()\n"
                "except MinibertError as e:\n    print(e)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                              cwd=REPO, timeout=60)
        assert proc.stdout.strip() == (f"{tmp_path} is in use by another run (process {os.getpid()}); wait for it to "
                                       "finish or choose another --output-dir.")
    assert not (tmp_path / run_folder.LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog) -> None:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / run_folder.LOCK_FILE).write_text(proc.stdout)  # that process has exited
    with run_folder.RunLock(tmp_path):
        assert (tmp_path / run_folder.LOCK_FILE).read_text().strip() == str(os.getpid())
    assert "which is no longer running" in caplog.text


def test_resume_survives_a_torn_last_metrics_line(setup, tmp_path, capsys, caplog) -> None:
    out = tmp_path / "run"
    assert finetune.main(args(setup, out, "--max-steps", "2")) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.6')  # killed during an append
    assert finetune.main(["--resume", str(out / "checkpoint-2"), "--no-progress"]) == 0
    assert "torn last line" in caplog.text
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    atomic_write_text(out / "metrics.jsonl", '{"step": 1}\n{broken\n{"step": 2}\n')
    with pytest.raises(MinibertError, match="line 2 of .* is not valid JSON; the metrics log is damaged"):
        run_folder.read_metrics(out / "metrics.jsonl")


def test_a_run_keeps_best_and_its_newest_checkpoint_by_default(setup, tmp_path) -> None:
    """Disk: by default best/ and the newest resumable checkpoint only (a checkpoint is the model and the optimizer:
    three model copies' worth); --keep-checkpoints 0 keeps them all."""
    for keep, expected in (([], ["best", "checkpoint-4"]), (["--keep-checkpoints", "0"],
                                                            ["best", "checkpoint-2", "checkpoint-4"])):
        out = tmp_path / f"run{len(keep)}"
        assert finetune.main(args(setup, out, "--max-steps", "4", "--save-every", "2", *keep)) == 0
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == expected


def test_written_files_follow_the_umask(setup, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert finetune.main(args(setup, out, "--max-steps", "2")) == 0
    finally:
        os.umask(old)
    for path in [out / "run_options.json", out / "best" / "model.safetensors", out / "checkpoint-2" / "config.json",
                 out / "metrics.jsonl"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
