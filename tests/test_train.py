"""The loop: exact resume after SIGTERM, atomic checkpoints under SIGKILL and a full disk, NaN stops, fingerprints."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minibert import finetune, metrics, run_folder, train
from minibert.errors import MinibertError
from tests.interrupts import interrupt_at_forward
from tests.tiny import sentiment_rows, write_csv, write_tiny_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    return {"model": write_tiny_model(root / "model"), "train": write_csv(root / "train.csv", sentiment_rows(100)),
            "dev": write_csv(root / "dev.csv", sentiment_rows(24, seed=1))}


def args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--validation-file",
            str(setup["dev"]), "--output-dir", str(out), "--batch-size", "8", "--grad-accum", "2", "--lr", "5e-3",
            "--max-steps", "12", "--log-every", "1", "--no-progress", *extra]


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "eval" not in r}


def params(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


# --- SIGINT / SIGTERM then --resume is bit-identical ---------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_then_resume_matches_uninterrupted_run(setup, tmp_path, monkeypatch, capsys, sig) -> None:
    assert finetune.main(args(setup, tmp_path / "a")) == 0
    interrupt_at_forward(monkeypatch, finetune, 9, sig)  # step 5 of 12, in the first epoch, first of two micro-batches
    assert finetune.main(args(setup, tmp_path / "b")) == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
    err = capsys.readouterr().err
    name = signal.Signals(sig).name
    assert f"{name} received" in err
    assert f"interrupted by {name} at step 5, checkpoint saved; continue with: python -m minibert.finetune --resume " \
           f"{tmp_path / 'b'}" in err
    state = run_folder.load_state(tmp_path / "b" / "checkpoint-5")
    assert (state["step"], state["epoch"], state["window"]) == (5, 0, 5)
    monkeypatch.undo()
    assert finetune.main(["--resume", str(tmp_path / "b"), "--no-progress"]) == 0  # the run folder alone
    assert "resumed from" in capsys.readouterr().err
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [b[s] for s in range(6, 13)] == [a[s] for s in range(6, 13)]  # exact, not approximate
    pa, pb = params(tmp_path / "a" / "checkpoint-12"), params(tmp_path / "b" / "checkpoint-12")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    sa, sb = run_folder.load_state(tmp_path / "a" / "checkpoint-12"), run_folder.load_state(tmp_path / "b" /
                                                                                            "checkpoint-12")
    assert sa["scheduler"] == sb["scheduler"]
    moments = zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values())
    assert all(torch.equal(x["exp_avg"], y["exp_avg"]) and torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
               for x, y in moments)


def test_resume_auto_needs_output_dir_and_finds_newest(setup, tmp_path, capsys) -> None:
    assert finetune.main(args(setup, tmp_path / "r", "--save-every", "3")) == 0
    assert finetune.main(args(setup, tmp_path / "r", "--resume", "auto")) == 0
    assert f"resumed from {tmp_path / 'r' / 'checkpoint-12'}" in capsys.readouterr().err


# --- complete-or-absent checkpoints, pruning after the new one -----------------------------------


def test_checkpoints_are_complete_hf_folders_and_pruned(setup, tmp_path) -> None:
    argv = args(setup, tmp_path, "--save-every", "2", "--keep-checkpoints", "2", "--eval-every", "5")
    assert finetune.main(argv) == 0
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval" in r] == [5, 7, 10, 12]  # every 5 steps and at each epoch's end
    assert [r["epoch"] for r in logged if "eval" in r] == [1, 1, 2, 2]  # the epoch just trained
    complete, incomplete = run_folder.list_checkpoints(tmp_path)
    assert [p.name for p in complete] == ["checkpoint-10", "checkpoint-12"] and not incomplete
    for folder in complete + [tmp_path / "best"]:
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer_config.json", "COMPLETE"} <= names
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    assert not list(tmp_path.glob(".tmp-*")) and (tmp_path / "metrics.png").is_file()


def test_find_checkpoint_skips_incomplete_ones(tmp_path, caplog) -> None:
    for name, complete in (("checkpoint-2", True), ("checkpoint-4", True), ("checkpoint-6", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / run_folder.STATE_FILE).write_bytes(b"")
        if complete:
            (tmp_path / name / run_folder.MARKER).write_text("complete\n")
    (tmp_path / ".tmp-checkpoint-8-123").mkdir()
    assert run_folder.find_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert "skipped incomplete checkpoint(s) .tmp-checkpoint-8-123, checkpoint-6" in caplog.text
    with pytest.raises(MinibertError, match="checkpoint-6 is an incomplete checkpoint"):
        run_folder.find_checkpoint(tmp_path / "checkpoint-6")
    with pytest.raises(MinibertError, match="no complete checkpoint in"):
        run_folder.find_checkpoint(tmp_path / "checkpoint-2" / "nothing")


# --- SIGKILL while saving --------------------------------------------------------------------------

KILL_DRIVER = """
import sys, time, pathlib
import minibert.run_folder as c
real, calls = c.atomic_write_with, [0]
def slow(path, write):
    calls[0] += 1
    if calls[0] == 2:  # the second checkpoint: half written, then wait to be killed
        real(path, write)
        pathlib.Path(sys.argv[1]).write_text("saving")
        time.sleep(600)
    real(path, write)
c.atomic_write_with = slow
from minibert import finetune
sys.exit(finetune.main(sys.argv[2:]))
"""


def test_sigkill_while_saving_keeps_previous_checkpoint(setup, tmp_path, capsys, caplog) -> None:
    out, marker = tmp_path / "run", tmp_path / "saving"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DRIVER, str(marker), *args(setup, out, "--save-every", "4")],
                            cwd=REPO, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    complete, incomplete = run_folder.list_checkpoints(out)
    assert [p.name for p in complete] == ["checkpoint-4"] and [p.name for p in incomplete] == [
        f".tmp-checkpoint-7-{proc.pid}"]
    assert finetune.main(args(setup, out, "--resume", str(out))) == 0
    err = capsys.readouterr().err
    assert f"skipped incomplete checkpoint(s) .tmp-checkpoint-7-{proc.pid}" in caplog.text
    assert f"resumed from {out / 'checkpoint-4'} at step 4" in err
    assert not list(out.glob(".tmp-*"))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval" not in r] == list(range(1, 13))  # steps 5-7 of the killed run forgotten


# --- disk full while saving ------------------------------------------------------------------------


def test_disk_full_while_saving_keeps_previous_checkpoint(setup, tmp_path, monkeypatch, capsys) -> None:
    real, calls = torch.save, [0]

    def full(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint's training state: the disk fills up mid-write
            real(obj, f, *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    assert finetune.main(args(setup, out, "--save-every", "4")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: no space left on the device while saving {out / 'checkpoint-7'}; free some space "
                       "and resume (the previous checkpoint is intact).")
    assert "Traceback" not in "\n".join(err)
    complete, incomplete = run_folder.list_checkpoints(out)
    assert [p.name for p in complete] == ["checkpoint-4"] and not incomplete and not list(out.glob(".tmp*"))
    assert run_folder.load_state(out / "checkpoint-4")["step"] == 4
    assert all(torch.isfinite(t).all() for t in params(out / "checkpoint-4").values())


# --- resume with other data / batch size -------------------------------------------------------


def test_resume_with_other_batch_size_or_data_is_refused_unless_allowed(setup, tmp_path, capsys, caplog) -> None:
    out = tmp_path / "run"
    assert finetune.main(args(setup, out, "--max-steps", "4", "--save-every", "2", "--keep-checkpoints", "2")) == 0
    capsys.readouterr()
    argv = args(setup, out, "--max-steps", "4", "--resume", str(out), "--batch-size", "4")
    assert finetune.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: --batch-size 4 differs from the run's 8, so the resumed run would not continue the same "
                   "one; resume with the same value, or pass --allow-resume-mismatch.")
    other = write_csv(tmp_path / "other.csv", sentiment_rows(100, seed=5))
    argv = args(setup, out, "--max-steps", "4", "--resume", str(out)) + ["--train-file", str(other)]
    assert finetune.main(argv) == 1
    assert f"--train-file {other} differs from the run's" in capsys.readouterr().err
    # a run folder written before run_options.json existed: the loop's fingerprint still catches the change
    (out / "run_options.json").unlink()
    assert finetune.main(argv) == 1
    assert "cannot resume exactly: the run differs from the checkpoint's: data (" in capsys.readouterr().err
    assert finetune.main(args(setup, out, "--max-steps", "4", "--resume", str(out / "checkpoint-2"), "--batch-size",
                              "4", "--allow-resume-mismatch")) == 0
    assert "resuming anyway" in caplog.text


@pytest.mark.parametrize(("flag", "value"), [("--lr", "0.001"), ("--max-steps", "20"), ("--epochs", "9"),
                                             ("--seed", "7")])
def test_resume_refuses_a_new_schedule_even_when_mismatch_is_allowed(setup, tmp_path, capsys, flag, value) -> None:
    out = tmp_path / "run"
    assert finetune.main(args(setup, out, "--max-steps", "4")) == 0
    capsys.readouterr()
    assert finetune.main(["--resume", str(out), flag, value, "--allow-resume-mismatch"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {flag} {value} differs from the run's ") and "learning-rate schedule" in err


def test_resume_applies_a_harmless_change_with_a_warning(setup, tmp_path, capsys, caplog) -> None:
    out = tmp_path / "run"
    assert finetune.main(args(setup, out, "--max-steps", "6", "--save-every", "3", "--keep-checkpoints", "2")) == 0
    assert finetune.main(["--resume", str(out / "checkpoint-3"), "--log-every", "3", "--no-progress"]) == 0
    assert "--log-every changed from 1 to 3 for the rest of this run." in caplog.text
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in capsys.readouterr().err
    assert sorted(losses(out)) == [1, 2, 3, 6]  # steps 4-6 logged once, every 3 steps from now on


# --- a NaN loss stops the run, no NaN checkpoint -------------------------------------------------


def test_nan_loss_stops_without_writing_nan(setup, tmp_path, monkeypatch, capsys) -> None:
    real_train = finetune.train

    def poisoned(model, *a, **k):
        calls = [0]

        def hook(module, inputs, output):
            calls[0] += module.training
            if calls[0] == 13:  # step 7, first micro-batch
                output.loss = output.loss * float("nan")
            return output

        model.register_forward_hook(hook)
        return real_train(model, *a, **k)

    monkeypatch.setattr(finetune, "train", poisoned)
    out = tmp_path / "run"
    assert finetune.main(args(setup, out, "--save-every", "3", "--keep-checkpoints", "2")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: the loss nan is not finite at step 7, so the run stopped without applying it (the last "
                   f"good checkpoint is {out / 'checkpoint-6'}); lower --lr, check --weight-decay, or check the data.")
    complete, _ = run_folder.list_checkpoints(out)
    assert [p.name for p in complete] == ["checkpoint-3", "checkpoint-6"]
    for folder in complete + [out / "best"] if (out / "best").exists() else complete:
        assert all(torch.isfinite(t).all() for t in params(folder).values())


# --- pieces ------------------------------------------------------------------------------------------------------


def test_weight_decay_skips_biases_and_layernorm(setup) -> None:
    from minibert.heads import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(setup["model"])
    decay, no_decay = train.param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] or "norm" in names[id(p)].lower()
               for p in no_decay["params"])
    assert all(p.dim() == 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0


def test_schedule_warms_up_then_decays_to_zero() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = train.linear_schedule(opt, warmup=2, total=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] == 1.0 and lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0
    assert sched.get_last_lr()[0] == 0.0


def test_metrics() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
    m = metrics.compute_metrics(logits, torch.tensor([0, 1, 1, 1]), "single_label_classification")
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx((2 / 3 + 0.8) / 2) and not m["collapsed"]
    m = metrics.compute_metrics(torch.tensor([[1.0, 0], [2, 0]]), torch.tensor([0, 1]), "single_label_classification")
    assert m["collapsed"]
    m = metrics.compute_metrics(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 2.0, 4.0]), "regression")
    assert m["mse"] == pytest.approx(1 / 3) and m["pearson"] == pytest.approx(0.9819805)
