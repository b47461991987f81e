"""The training loop, by hand: AdamW, warmup then linear decay, clipping, accumulation, autocast, evaluation,
checkpoints with exact resume, and DDP. It sees a module that returns `.loss`, training data that says which
examples form each batch, and an evaluation that returns metrics; fine-tuning and pre-training share it.

Exact resume: the batch order of an epoch is a function of (seed, epoch) alone, so a checkpoint stores the position
in the epoch instead of a sampler; with the optimizer, scheduler and RNG states, the steps after a resume are the
steps the uninterrupted run would have taken, bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from minibert import run_folder
from minibert.devices import Dist, autocast_dtype, precision_name
from minibert.errors import MinibertError

logger = logging.getLogger("minibert")


class TrainData(Protocol):
    """What the loop needs of a training set: which examples form each batch of an epoch, and the batch itself."""

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> list[list[int]]:
        """This rank's batches of `epoch`, a function of its arguments alone (so a resumed run sees the same)."""

    def collate(self, indices: Sequence[int], key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        """The model inputs of one batch; `key` = (seed, epoch, batch number) seeds any randomness (MLM masking)."""


# evaluate(model, d, amp) -> metrics; run on every rank (each evaluates its share and the results are gathered)
Evaluate = Callable[[nn.Module, Dist, torch.dtype | None], dict[str, Any]]
SaveModel = Callable[[Path], None]  # writes the model (and tokenizer) files into a folder


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
    keep_checkpoints: int = 1
    log_every: int = 10
    best_metric: str = "f1"  # the evaluation metric that picks the model kept in best/
    greater_is_better: bool = True
    resume: Path | None = None
    allow_resume_mismatch: bool = False
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what must match for a resume to be exact


@dataclass
class RunState:
    """Where the run is: what a checkpoint stores besides the model, optimizer, scheduler and RNG states."""

    step: int = 0
    epoch: int = 0  # the position of the next step: this epoch's `window`-th optimizer step
    window: int = 0
    best: dict[str, Any] | None = None
    best_value: float = -math.inf


@dataclass
class Summary:
    steps: int
    best_metric: dict[str, float] | None
    best_dir: Path | None
    wall_s: float
    samples_per_s: float
    interrupted: bool
    history: list[dict[str, Any]]
    precision: str = "fp32"  # how the model computed: "bf16 autocast" or "fp32"
    stop_signal: str | None = None  # SIGINT or SIGTERM when interrupted


# --- optimizer and schedule --------------------------------------------------------------------------------------


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


# --- signals, RNG, resume checks ---------------------------------------------------------------------------------


class StopRequest:
    """Ctrl-C / SIGTERM set a flag; the loop saves at the next step boundary and exits. A second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum)
        tqdm.write(f"\n{self.requested.name} received: saving a checkpoint at the end of this step "
                   "(Ctrl-C again to abort without saving).", file=sys.stderr)

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


# --- the steps of an epoch ---------------------------------------------------------------------------------------


def windows(data: TrainData, opts: TrainOptions, d: Dist, state: RunState,
            epochs: int) -> Iterator[tuple[int, int, bool, list[list[int]]]]:
    """(epoch, window, last of its epoch, batches) for each optimizer step from `state`'s position on: an epoch's
    batches cut into windows of `grad_accum`, one optimizer step each."""
    for epoch in range(state.epoch, epochs):
        batches = data.epoch_batches(opts.batch_size, opts.seed, epoch, d.rank, d.world_size)
        if not batches:
            raise MinibertError(f"rank {d.rank} of {d.world_size} has no training batch; use fewer processes or more "
                                "data.")
        cut = [batches[i:i + opts.grad_accum] for i in range(0, len(batches), opts.grad_accum)]
        first = state.window if epoch == state.epoch else 0
        for w in range(first, len(cut)):
            yield epoch, w, w == len(cut) - 1, cut[w]


def forward_backward(net: nn.Module, data: TrainData, window: list[list[int]], key: tuple[int, int, int],
                     d: Dist, amp: torch.dtype | None) -> torch.Tensor:
    """Run one optimizer step's micro-batches forward and backward; -> the mean loss (a tensor, no sync)."""
    loss_sum = torch.zeros((), device=d.device)
    ddp = isinstance(net, nn.parallel.DistributedDataParallel)
    for j, indices in enumerate(window):
        seed, epoch, number = key
        batch = {k: v.to(d.device) for k, v in data.collate(indices, (seed, epoch, number + j)).items()}
        # DDP: all-reduce the gradients once per optimizer step, not once per micro-batch
        sync = j == len(window) - 1 or not ddp
        with contextlib.nullcontext() if sync else net.no_sync():
            with torch.autocast(d.device.type, dtype=amp, enabled=amp is not None):
                loss = net(**batch).loss.float() / len(window)
            loss.backward()
        loss_sum += loss.detach()
    return loss_sum


def share(loss: torch.Tensor, stop: StopRequest, d: Dist) -> tuple[float, bool]:
    """One all-reduce carries the loss and any rank's stop request, so that all ranks stop at the same step."""
    shared = torch.stack([loss, torch.tensor(float(stop.requested is not None), device=d.device)])
    if d.world_size > 1:
        dist.all_reduce(shared)
    return shared[0].item() / d.world_size, shared[1].item() > 0


def refuse_non_finite(loss: float, grad_norm: torch.Tensor, step: int, run_dir: Path) -> None:
    if math.isfinite(loss) and torch.isfinite(grad_norm):
        return
    what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
    complete, _ = run_folder.list_checkpoints(run_dir)
    kept = f"the last good checkpoint is {complete[-1]}" if complete else "no checkpoint was written"
    raise MinibertError(f"the {what} is not finite at step {step + 1}, so the run stopped without applying it "
                        f"({kept}); lower --lr, check --weight-decay, or check the data.")


# --- checkpoints and evaluation ----------------------------------------------------------------------------------


class Run:
    """The run's files and the objects a checkpoint saves: the loop calls `log`, `evaluate` and `save`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, opts: TrainOptions,
                 save_model: SaveModel, d: Dist, fingerprint: dict[str, Any]) -> None:
        self.model, self.optimizer, self.scheduler, self.opts = model, optimizer, scheduler, opts
        self.save_model, self.d, self.fingerprint = save_model, d, fingerprint
        self.dir = Path(opts.output_dir)
        self.metrics_file = self.dir / run_folder.METRICS_FILE
        self.history: list[dict[str, Any]] = []

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.d.main:
            run_folder.append_metrics(self.metrics_file, record)

    def resume(self, state: RunState) -> None:
        """Load the checkpoint named by opts.resume into the optimizer, scheduler, RNG and `state`."""
        ckpt = run_folder.find_checkpoint(Path(self.opts.resume))
        saved = run_folder.load_state(ckpt)
        check_fingerprint(saved["fingerprint"], self.fingerprint, self.opts.allow_resume_mismatch)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        rank = self.d.rank if self.d.rank < len(saved["rng"]) else 0
        set_rng_state(saved["rng"][rank])
        state.step, state.epoch, state.window = saved["step"], saved["epoch"], saved["window"]
        state.best, state.best_value = saved["best"], saved["best_value"]
        if self.d.main:
            run_folder.forget_after(self.metrics_file, state.step)
            tqdm.write(f"resumed from {ckpt} at step {state.step} (epoch {state.epoch + 1}, step {state.window} of "
                       "it).", file=sys.stderr)

    def save(self, state: RunState) -> None:
        states: list[Any] = [rng_state()]
        if self.d.world_size > 1:  # every rank's RNG, so that each one's dropout resumes exactly
            states = [None] * self.d.world_size
            dist.all_gather_object(states, rng_state())
        if self.d.main:
            saved = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "rng": states, **asdict(state), "fingerprint": self.fingerprint,
                     "options": {k: str(v) for k, v in asdict(self.opts).items()}}
            run_folder.save_checkpoint(self.dir, state.step, self.save_model, saved, self.opts.keep_checkpoints)
        if self.d.world_size > 1:
            dist.barrier()

    def evaluate(self, evaluate: Evaluate | None, state: RunState, amp: torch.dtype | None, epoch: int) -> None:
        """Evaluate, log, and keep the model in best/ when it is the best so far (`epoch`: the one just trained)."""
        if evaluate is None:
            return
        metrics = evaluate(self.model, self.d, amp)
        self.log({"eval": metrics, "step": state.step, "epoch": epoch + 1})
        if self.d.main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not isinstance(v, bool))
            collapsed = "  (predictions collapsed to one class)" if metrics.get("collapsed") else ""
            tqdm.write(f"eval at step {state.step}: {shown}{collapsed}", file=sys.stderr)
        value = metrics[self.opts.best_metric] * (1 if self.opts.greater_is_better else -1)
        if value > state.best_value:
            state.best, state.best_value = metrics, value
            if self.d.main:
                run_folder.save_model_folder(self.dir, "best", self.save_model, {"step": state.step,
                                                                                 "metrics": metrics})


# --- the loop ----------------------------------------------------------------------------------------------------


def train(model: nn.Module, data: TrainData, evaluate: Evaluate | None, opts: TrainOptions, save_model: SaveModel,
          d: Dist | None = None, progress: bool = True) -> Summary:
    """Train `model` in place. Checkpoints, `best/`, `metrics.jsonl` go into `opts.output_dir` (rank 0 writes them,
    holding the folder's lock)."""
    d = d or Dist()
    with run_folder.RunLock(Path(opts.output_dir)) if d.main else contextlib.nullcontext():
        return _train(model, data, evaluate, opts, save_model, d, progress)


def _train(model: nn.Module, data: TrainData, evaluate: Evaluate | None, opts: TrainOptions, save_model: SaveModel,
           d: Dist, progress: bool) -> Summary:
    started = time.perf_counter()
    amp = autocast_dtype(opts.precision, d.device)
    model.to(d.device)
    # fused: one pass over each parameter instead of ~10 elementwise ops. On CPU (fused since torch 2.4) a MiniLM
    # step, dominated by its 11.7M-parameter word embedding, takes 17 ms instead of 77 ms (bench/README.md)
    optimizer = torch.optim.AdamW(param_groups(model, opts.weight_decay), lr=opts.lr,
                                  fused=d.device.type in ("cpu", "cuda"))
    n_batches = len(data.epoch_batches(opts.batch_size, opts.seed, 0, d.rank, d.world_size))
    steps_per_epoch = max(1, math.ceil(n_batches / opts.grad_accum))
    total = opts.max_steps if opts.max_steps > 0 else opts.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    scheduler = linear_schedule(optimizer, int(opts.warmup_ratio * total), total)
    fingerprint = {**opts.fingerprint, "batch_size": opts.batch_size, "grad_accum": opts.grad_accum,
                   "world_size": d.world_size, "seed": opts.seed}
    run = Run(model, optimizer, scheduler, opts, save_model, d, fingerprint)
    state = RunState()
    if opts.resume is not None:
        run.resume(state)
    else:
        torch.manual_seed(opts.seed + d.rank)  # dropout differs across ranks, as it would on one big batch
    net = model
    if d.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda"
                                                  else None)

    bar = tqdm(total=total, initial=state.step, desc="training", unit="step", disable=not (progress and d.main),
               file=sys.stderr, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    samples, recent = 0, []
    interrupted: str | None = None
    if state.step >= total:
        tqdm.write(f"the run already took its {total} steps; nothing to do.", file=sys.stderr)
    with StopRequest() as stop:
        for epoch, w, last_in_epoch, window in windows(data, opts, d, state, epochs if state.step < total else 0):
            net.train()
            loss, stop_now = share(forward_backward(net, data, window, (opts.seed, epoch, w * opts.grad_accum), d,
                                                    amp), stop, d)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                       opts.max_grad_norm if opts.max_grad_norm > 0 else math.inf)
            refuse_non_finite(loss, grad_norm, state.step, run.dir)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.epoch, state.window = (epoch + 1, 0) if last_in_epoch else (epoch, w + 1)
            lr = scheduler.get_last_lr()[0]
            samples += sum(map(len, window)) * d.world_size
            recent.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            if state.step % opts.log_every == 0 or state.step == total:  # the mean since the last line: smoother
                run.log({"step": state.step, "epoch": epoch + 1, "loss": sum(recent) / len(recent), "lr": lr,
                         "grad_norm": grad_norm.item()})
                recent.clear()
            done = state.step >= total
            evaluate_now = last_in_epoch or done or (opts.eval_every and state.step % opts.eval_every == 0)
            if evaluate_now:
                run.evaluate(evaluate, state, amp, epoch)
            save_now = evaluate_now or stop_now or (opts.save_every and state.step % opts.save_every == 0)
            if save_now:
                run.save(state)
            if stop_now:
                interrupted = (stop.requested or signal.SIGTERM).name
                break
            if done:
                break
    bar.close()
    if evaluate is None and d.main and not interrupted:  # nothing to compare: the final model is the best one
        run_folder.save_model_folder(run.dir, "best", save_model, {"step": state.step, "metrics": None})
    wall = time.perf_counter() - started
    best_dir = run.dir / "best" if (run.dir / "best").is_dir() else None
    return Summary(state.step, state.best, best_dir, wall, samples / max(wall, 1e-9), interrupted is not None,
                   run.history, precision_name(amp), interrupted)
