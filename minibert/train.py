"""The fine-tuning loop, by hand: AdamW, warmup then linear decay, clipping, accumulation, autocast, evaluation,
checkpoints with exact resume, and DDP. The loop sees a module that returns `.loss` and `.logits`, nothing more.

Exact resume: the batch order of an epoch is a function of (seed, epoch) alone (`data.length_grouped_batches`), so a
checkpoint stores the position in the epoch instead of a sampler; with the optimizer, scheduler and RNG states,
the steps after a resume are the steps the uninterrupted run would have taken, bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from minibert import checkpoint
from minibert.data import Encoded, collate, length_grouped_batches, sorted_batches
from minibert.errors import MinibertError
from minibert.files import atomic_write_text

logger = logging.getLogger("minibert")


@dataclass
class TrainOptions:
    output_dir: Path
    epochs: int = 3
    max_steps: int = 0  # > 0: stop after this many optimizer steps (and run as many epochs as that takes)
    batch_size: int = 32  # per process
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "auto"
    seed: int = 42
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    pad_token_id: int = 0
    problem_type: str = "single_label_classification"
    resume: Path | None = None
    allow_resume_mismatch: bool = False
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what must match for a resume to be exact


# --- processes and devices ---------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """One process, or one of `torchrun`'s: join the group (nccl on GPUs, gloo on CPU) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(int(os.environ.get("RANK", "0")), world_size, device)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` takes bf16 where the hardware computes it natively:
    GPUs with bf16, and CPUs with AVX512-BF16/AMX, where a MiniLM-L6 training step (batch 32x64) measured 429 ms
    against 1000-1100 ms in fp32 (2-core AMD EPYC with avx512_bf16, torch 2.13)."""
    if precision == "fp32":
        return None
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if precision == "bf16" and device.type == "cuda" and not native:
        raise MinibertError("--precision bf16 needs a GPU with bf16 support; use --precision fp32.")
    return torch.bfloat16 if precision == "bf16" or native else None


# --- optimizer, schedule, metrics --------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings only: biases and LayerNorm weights (all the 1-D parameters) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)  # never exactly 0, so the first step already moves
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> dict[str, float]:
    """accuracy + macro-F1 (+ whether predictions collapsed to one class), or MSE + Pearson for regression."""
    if problem_type == "regression":
        pred, gold = logits.float().view(-1), labels.float().view(-1)
        pearson = torch.corrcoef(torch.stack([pred, gold]))[0, 1].item() if len(gold) > 1 else float("nan")
        return {"mse": torch.mean((pred - gold) ** 2).item(), "pearson": pearson}
    if problem_type == "multi_label_classification":
        pred, gold = logits > 0, labels > 0.5
        accuracy = (pred == gold).all(dim=1).float().mean().item()
        pairs = [(pred[:, c], gold[:, c]) for c in range(gold.shape[1])]
        collapsed = False
    else:
        pred, gold = logits.argmax(-1), labels
        accuracy = (pred == gold).float().mean().item()
        classes = sorted(set(gold.tolist()) | set(pred.tolist()))
        pairs = [(pred == c, gold == c) for c in classes]
        collapsed = len(set(pred.tolist())) == 1 and len(set(gold.tolist())) > 1
    f1s = []
    for p, g in pairs:
        tp, fp, fn = (p & g).sum().item(), (p & ~g).sum().item(), (~p & g).sum().item()
        if tp + fp + fn:  # a class never present nor predicted has no F1 (as in scikit-learn's macro average)
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "f1": sum(f1s) / len(f1s) if f1s else 0.0, "collapsed": collapsed}


def best_key(problem_type: str) -> tuple[str, float]:
    """The metric that picks the best model, and +1 if higher is better, -1 if lower."""
    return ("mse", -1.0) if problem_type == "regression" else ("f1", 1.0)


# --- pieces of the loop ------------------------------------------------------------------------------------------


class StopRequest:
    """Ctrl-C / SIGTERM set a flag; the loop saves at the next step boundary and exits. A second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this step "
              "(Ctrl-C again to abort without saving).", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Progress:
    """One line on a terminal, redrawn each step (loss, lr, samples/s, ETA); a plain line now and then otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.tty = total, enabled, sys.stderr.isatty()
        self.start, self.samples = time.perf_counter(), 0

    def update(self, step: int, loss: float, lr: float, samples: int, first_step: int) -> None:
        self.samples += samples
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.samples / max(elapsed, 1e-9)
        eta = elapsed / max(step - first_step, 1) * (self.total - step)
        width = 24
        bar = "#" * (width * step // max(self.total, 1))
        line = (f"[{bar:<{width}}] {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {rate:.1f} samples/s "
                f"ETA {eta // 60:.0f}m{eta % 60:02.0f}s")
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif step % max(1, self.total // 10) == 0 or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


@torch.no_grad()
def evaluate(model: nn.Module, data: Encoded, batch_size: int, opts: TrainOptions, d: Dist,
             amp: torch.dtype | None) -> dict[str, float]:
    """Loss and metrics over the whole evaluation set: each rank runs its share, the results are gathered."""
    model.eval()
    parts = []
    for indices in sorted_batches(data.lengths, batch_size, d.rank, d.world_size):
        batch = {k: v.to(d.device) for k, v in collate(data, indices, opts.pad_token_id).items()}
        with torch.autocast(d.device.type, dtype=amp, enabled=amp is not None):
            out = model(**batch)
        parts.append((indices, out.logits.float().cpu(), out.loss.float().item() * len(indices)))
    if d.world_size > 1:
        gathered: list[Any] = [None] * d.world_size
        dist.all_gather_object(gathered, parts)
        parts = [p for rank_parts in gathered for p in rank_parts]
    order = [i for indices, _, _ in parts for i in indices]
    logits = torch.cat([lg for _, lg, _ in parts])[torch.argsort(torch.tensor(order))]
    metrics = compute_metrics(logits, data.labels, opts.problem_type)
    return {"loss": sum(loss for _, _, loss in parts) / len(data), **metrics}


def forget_after(metrics_file: Path, step: int) -> None:
    """Drop the log lines of steps after the checkpoint (a killed run got further), so each step is logged once."""
    if metrics_file.is_file():
        lines = metrics_file.read_text(encoding="utf-8").splitlines()
        atomic_write_text(metrics_file, "".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))


def check_fingerprint(saved: dict[str, Any], now: dict[str, Any], allow: bool) -> None:
    differences = [f"{key} ({saved.get(key)!r} then, {now.get(key)!r} now)" for key in sorted(set(saved) | set(now))
                   if saved.get(key) != now.get(key)]
    if not differences:
        return
    message = "the run differs from the checkpoint's: " + "; ".join(differences)
    if not allow:
        raise MinibertError(f"cannot resume exactly: {message}; pass --allow-resume-mismatch to continue anyway.")
    logger.warning("%s; resuming anyway (--allow-resume-mismatch), so the result will not match an uninterrupted "
                   "run.", message)


@dataclass
class Summary:
    steps: int
    best_metric: dict[str, float] | None
    best_dir: Path | None
    wall_s: float
    samples_per_s: float
    interrupted: bool
    history: list[dict[str, Any]]


# --- the loop ----------------------------------------------------------------------------------------------------


def train(model: nn.Module, train_data: Encoded, eval_data: Encoded | None, opts: TrainOptions,
          save_model: Callable[[Path], None], d: Dist | None = None, progress: bool = True) -> Summary:
    """Fine-tune `model` in place. `save_model(folder)` writes the model (and tokenizer) files into a folder;
    checkpoints, `best/`, `metrics.jsonl` and the plot go into `opts.output_dir` (rank 0 only)."""
    d = d or Dist()
    started = time.perf_counter()
    run_dir = Path(opts.output_dir)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    amp = autocast_dtype(opts.precision, d.device)
    model.to(d.device)
    # fused: one pass over each parameter instead of ~10 elementwise ops. On CPU (fused since torch 2.4) a MiniLM
    # step, dominated by its 11.7M-parameter word embedding, takes 17 ms instead of 77 ms (bench/README.md)
    optimizer = torch.optim.AdamW(param_groups(model, opts.weight_decay), lr=opts.lr,
                                  fused=d.device.type in ("cpu", "cuda"))
    n_batches = len(length_grouped_batches(train_data.lengths, opts.batch_size, opts.seed, 0, d.rank, d.world_size))
    steps_per_epoch = math.ceil(n_batches / opts.grad_accum)
    total = opts.max_steps if opts.max_steps > 0 else opts.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    scheduler = linear_schedule(optimizer, int(opts.warmup_ratio * total), total)
    step, start_epoch, start_window, best, best_value = 0, 0, 0, None, -math.inf
    fingerprint = {**opts.fingerprint, "batch_size": opts.batch_size, "grad_accum": opts.grad_accum,
                   "world_size": d.world_size, "seed": opts.seed}

    if opts.resume is not None:
        ckpt = checkpoint.find_checkpoint(Path(opts.resume))
        state = checkpoint.load_state(ckpt)
        check_fingerprint(state["fingerprint"], fingerprint, opts.allow_resume_mismatch)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][d.rank] if d.rank < len(state["rng"]) else state["rng"][0])
        step, start_epoch, start_window = state["step"], state["epoch"], state["window"]
        best, best_value = state["best"], state["best_value"]
        if d.main:
            forget_after(run_dir / "metrics.jsonl", step)
            print(f"resumed from {ckpt} at step {step} (epoch {start_epoch + 1}, step {start_window} of it).",
                  file=sys.stderr)
    else:
        torch.manual_seed(opts.seed + d.rank)  # dropout differs across ranks, as it would on one big batch

    net = model
    if d.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda"
                                                  else None)
    metrics_file = run_dir / "metrics.jsonl"
    history: list[dict[str, Any]] = []

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        if d.main:
            with open(metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def save(epoch: int, window: int) -> None:
        states: list[Any] = [rng_state()]
        if d.world_size > 1:  # every rank's RNG, so that each one's dropout resumes exactly
            states = [None] * d.world_size
            dist.all_gather_object(states, rng_state())
        if d.main:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": states,
                     "step": step, "epoch": epoch, "window": window, "best": best, "best_value": best_value,
                     "fingerprint": fingerprint, "options": {k: str(v) for k, v in asdict(opts).items()}}
            checkpoint.save_checkpoint(run_dir, step, save_model, state, opts.keep_checkpoints)
        if d.world_size > 1:
            dist.barrier()

    def run_eval(epoch: int) -> None:
        nonlocal best, best_value
        if eval_data is None:
            return
        metrics = evaluate(model, eval_data, opts.batch_size, opts, d, amp)
        log({"eval": metrics, "step": step, "epoch": epoch + 1})
        key, sign = best_key(opts.problem_type)
        if d.main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not isinstance(v, bool))
            print(f"eval at step {step}: {shown}" + ("  (predictions collapsed to one class)"
                                                     if metrics.get("collapsed") else ""), file=sys.stderr)
        if sign * metrics[key] > best_value:
            best, best_value = metrics, sign * metrics[key]
            if d.main:
                checkpoint.save_model_folder(run_dir, "best", save_model, {"step": step, "metrics": metrics})

    bar = Progress(total, progress and d.main)
    interrupted, first_step, recent = False, step, []
    with StopRequest() as stop:
        for epoch in range(start_epoch, epochs):
            next_pos = (epoch + 1, 0)
            batches = length_grouped_batches(train_data.lengths, opts.batch_size, opts.seed, epoch, d.rank,
                                             d.world_size)
            windows = [batches[i:i + opts.grad_accum] for i in range(0, len(batches), opts.grad_accum)]
            for w in range(start_window if epoch == start_epoch else 0, len(windows)):
                net.train()
                loss_sum = torch.zeros((), device=d.device)
                for j, indices in enumerate(windows[w]):
                    batch = {k: v.to(d.device) for k, v in collate(train_data, indices, opts.pad_token_id).items()}
                    # DDP: all-reduce the gradients once per optimizer step, not once per micro-batch
                    sync = j == len(windows[w]) - 1 or not isinstance(net, nn.parallel.DistributedDataParallel)
                    with contextlib.nullcontext() if sync else net.no_sync():
                        with torch.autocast(d.device.type, dtype=amp, enabled=amp is not None):
                            loss = net(**batch).loss.float() / len(windows[w])
                        loss.backward()
                    loss_sum += loss.detach()
                # one all-reduce carries the loss and any rank's stop request, so all ranks stop at the same step
                shared = torch.stack([loss_sum, torch.tensor(float(stop.requested), device=d.device)])
                if d.world_size > 1:
                    dist.all_reduce(shared)
                mean_loss, stop_now = shared[0].item() / d.world_size, shared[1].item() > 0
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                           opts.max_grad_norm if opts.max_grad_norm > 0 else math.inf)
                if not math.isfinite(mean_loss) or not torch.isfinite(grad_norm):
                    bar.close()
                    what = f"loss {mean_loss}" if not math.isfinite(mean_loss) else f"gradient norm {grad_norm}"
                    complete, _ = checkpoint.list_checkpoints(run_dir)
                    kept = f"the last good checkpoint is {complete[-1]}" if complete else "no checkpoint was written"
                    raise MinibertError(f"the {what} is not finite at step {step + 1}, so the run stopped without "
                                        f"applying it ({kept}); lower --lr or check the data.")
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                lr = scheduler.get_last_lr()[0]
                bar.update(step, mean_loss, lr, sum(map(len, windows[w])) * d.world_size, first_step)
                recent.append(mean_loss)
                if step % opts.log_every == 0 or step == total:  # the mean since the last line: a smoother curve
                    log({"step": step, "epoch": epoch + 1, "loss": sum(recent) / len(recent), "lr": lr,
                         "grad_norm": grad_norm.item()})
                    recent.clear()
                mid_epoch = w + 1 < len(windows)  # the epoch's end evaluates and saves below
                next_pos = (epoch, w + 1) if mid_epoch else (epoch + 1, 0)
                eval_now = mid_epoch and opts.eval_every and step % opts.eval_every == 0
                if eval_now:
                    run_eval(epoch)
                if eval_now or stop_now or (mid_epoch and opts.save_every and step % opts.save_every == 0):
                    save(*next_pos)
                if stop_now:
                    bar.close()
                    interrupted = True
                    break
                if step >= total:
                    break
            if interrupted:
                break
            run_eval(epoch)
            save(*next_pos)
            if step >= total:
                break
    bar.close()
    if eval_data is None and d.main and not interrupted:  # nothing to compare: the final model is the best one
        checkpoint.save_model_folder(run_dir, "best", save_model, {"step": step, "metrics": None})
    wall = time.perf_counter() - started
    return Summary(step, best, run_dir / "best" if (run_dir / "best").is_dir() else None, wall,
                   bar.samples / max(wall, 1e-9), interrupted, history)


def plot_metrics(run_dir: Path) -> Path | None:
    """A PNG of the training loss and the validation metrics from metrics.jsonl (None when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install \"minibert[plot]\").", file=sys.stderr)
        return None
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r and "eval" not in r]
    evals = [r for r in records if "eval" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    left.plot([r["step"] for r in evals], [r["eval"]["loss"] for r in evals], "o-", label="validation loss")
    left.set_xlabel("step")
    left.legend()
    for key in ("accuracy", "f1", "mse", "pearson"):
        points = [(r["step"], r["eval"][key]) for r in evals if key in r["eval"]]
        if points:
            right.plot(*zip(*points), "o-", label=key)
    if not any("mse" in r["eval"] for r in evals):
        right.set_ylim(0, 1.02)
    right.set_xlabel("step")
    right.set_title("validation")
    right.legend()
    path = run_dir / "metrics.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
