"""Two CPU processes under torchrun (gloo): identical parameters on both ranks, and a failing rank ends the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minibert import finetune, run_folder
from tests.tiny import sentiment_rows, write_csv, write_tiny_model

REPO = Path(__file__).resolve().parent.parent

# finetune.main under torchrun, saving each rank's final parameters; at its 9th training forward, FAIL_RANK raises
# and STOP_RANK sends itself SIGTERM. The automatic garbage collector is off, and the process group must be destroyed
# with no DDP wrapper left alive: a wrapper freed only at interpreter exit takes gloo's teardown with it, which can
# abort the process (CI once saw rank 1 end with SIGABRT after a good run).
DRIVER = """
import gc, os, signal, sys, torch
from minibert import finetune
gc.disable()
real_destroy = torch.distributed.destroy_process_group
def destroy():
    alive = [o for o in gc.get_objects() if isinstance(o, torch.nn.parallel.DistributedDataParallel)]
    assert not alive, f"{len(alive)} DDP wrapper(s) still alive when the process group is destroyed"
    real_destroy()
torch.distributed.destroy_process_group = destroy
real = finetune.train
def wrapped(model, *a, **k):
    rank = int(os.environ["RANK"])
    calls = [0]
    def hook(module, inputs):
        calls[0] += module.training
        if calls[0] == int(os.environ.get("FAIL_AT", "9")) and os.environ.get("FAIL_RANK") == str(rank):
            raise RuntimeError(f"injected failure on rank {rank}")
        if calls[0] == 9 and os.environ.get("STOP_RANK") == str(rank):
            os.kill(os.getpid(), signal.SIGTERM)
    model.register_forward_pre_hook(hook)
    summary = real(model, *a, **k)
    torch.save(model.state_dict(), os.path.join(sys.argv[1], f"rank{rank}.pt"))
    return summary
finetune.train = wrapped
sys.exit(finetune.main(sys.argv[2:]))
"""


def torchrun(tmp_path: Path, out: Path, env: dict[str, str], *extra: str, rows: int = 101,
             processes: int = 2) -> tuple[subprocess.CompletedProcess, float]:
    model = write_tiny_model(tmp_path / "model")
    train = write_csv(tmp_path / "train.csv", sentiment_rows(rows))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(25, seed=1))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone", str(driver),
           str(out), "--model", str(model), "--train-file", str(train), "--validation-file", str(dev), "--output-dir",
           str(out),
           "--batch-size", "8", "--grad-accum", "2", "--lr", "5e-3", "--max-steps", "8", "--log-every", "1",
           "--no-progress", *extra]
    started = time.time()
    # a session of its own, so that a hung run is killed with its workers, not just torchrun
    popen = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env})
    try:
        stdout, stderr = popen.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.communicate()
        raise
    return subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr), time.time() - started


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp_path = tmp_path_factory.mktemp("ddp")
    proc, _ = torchrun(tmp_path, tmp_path / "run", {}, "--save-every", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path, proc


def test_two_processes_train_identically(uninterrupted, capsys: pytest.CaptureFixture) -> None:
    tmp_path, proc = uninterrupted
    r0, r1 = torch.load(tmp_path / "run" / "rank0.pt"), torch.load(tmp_path / "run" / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert proc.stderr.count("eval at step") == 2  # printed once (rank 0), for each of the 2 epochs
    complete, _ = run_folder.list_checkpoints(tmp_path / "run")
    assert complete[-1].name == "checkpoint-8"
    state = run_folder.load_state(complete[-1])
    assert state["fingerprint"]["world_size"] == 2 and len(state["rng"]) == 2
    # resuming in one process what ran in two would not be the same run
    assert finetune.main(["--resume", str(tmp_path / "run")]) == 1
    assert "world_size (2 then, 1 now)" in capsys.readouterr().err


def test_sigterm_on_one_rank_stops_both_and_resume_is_exact(uninterrupted, tmp_path: Path) -> None:
    proc, _ = torchrun(tmp_path, tmp_path / "run", {"STOP_RANK": "0"})
    assert proc.returncode != 0  # each rank exits 143 (SIGTERM), so torchrun reports the job as stopped
    assert "exitcode  : 143" in proc.stderr
    # rank 0 got the signal in step 5; rank 1 stopped with it
    assert "interrupted by SIGTERM at step 5, checkpoint saved" in proc.stderr
    proc, _ = torchrun(tmp_path, tmp_path / "run", {}, "--resume", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        a, b = torch.load(uninterrupted[0] / "run" / f"rank{rank}.pt"), torch.load(tmp_path / "run" / f"rank{rank}.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_rank_failing_before_the_first_all_reduce_ends_the_job(tmp_path: Path) -> None:
    proc, elapsed = torchrun(tmp_path, tmp_path / "run", {"FAIL_RANK": "1", "FAIL_AT": "1"})
    assert proc.returncode != 0 and "injected failure on rank 1" in proc.stderr
    assert elapsed < 120


def test_a_failing_rank_ends_the_run_quickly(tmp_path: Path) -> None:
    proc, elapsed = torchrun(tmp_path, tmp_path / "run", {"FAIL_RANK": "1"}, "--save-every", "2")
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr
    assert elapsed < 120
    complete, _ = run_folder.list_checkpoints(tmp_path / "run")
    assert complete and run_folder.load_state(complete[-1])["step"] == 4  # rank 1 died in step 5


def test_three_ranks_on_a_single_batch_all_get_work(tmp_path: Path) -> None:
    """Fewer batches than ranks: the one batch is repeated so that every rank steps (it used to hang)."""
    proc, elapsed = torchrun(tmp_path, tmp_path / "run", {}, "--max-steps", "2", rows=5, processes=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: 2 steps" in proc.stderr and elapsed < 150
    r0, r2 = torch.load(tmp_path / "run" / "rank0.pt"), torch.load(tmp_path / "run" / "rank2.pt")
    assert all(torch.equal(r0[k], r2[k]) for k in r0)
