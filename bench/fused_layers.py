"""Fused elementwise kernels (minibert/fusion.py): the whole MiniLM encoder run eager against `model.fuse("on")`,
which compiles each layer's q/k/v projection and output half with `torch.compile`, in fp32 and in minibert int8,
on padded batches of random lengths (packed by `auto`, as predict and serve run them). Then training, which the
package does not fuse: one layer's output half, forward and backward, eager against the same `torch.compile`, in
fp32 and bf16 autocast, with MiniLM's dropout (0.1) and without (`--train-tokens`).

Time is the thread's CPU time per forward (median of interleaved repetitions), so that other processes on a shared
machine count less; `max diff` is the fused encoder's last hidden state against the eager one's (fp32: float
rounding; int8: values that rounding moves across a quantization step's midpoint); `compile s` is the first fused
forward's wall time (torch's inductor cache may hold some of it from an earlier run).

    python bench/fused_layers.py [--batches 32x8,32x16,32x32,32x64,16x512] [--train-tokens 700,1500] [--reps 7]
                                 [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from common import MINILM, Run, add_run_arguments, setup

import minibert


def random_batch(batch: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`batch` rows of token ids, each of a length drawn from length/2..length (the rest padding)."""
    ids = torch.randint(1000, 30000, (batch, length), generator=generator)
    lengths = torch.randint(max(1, length // 2), length + 1, (batch,), generator=generator)
    mask = (torch.arange(length) < lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask}


def cpu_ms(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.thread_time()
            fn()
            times[name].append(time.thread_time() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="32x8,32x16,32x32,32x64,16x512", help="batch x padded length, ...")
    parser.add_argument("--train-tokens", default="700,1500", help="packed tokens of the training rows")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    setup(args.threads)
    run = Run("fused_layers", args)
    float_model = minibert.BertModel.from_pretrained(MINILM)
    generator = torch.Generator().manual_seed(0)
    shapes = [tuple(map(int, spec.split("x"))) for spec in args.batches.split(",")]
    for precision in ("fp32", "int8"):
        model = copy.deepcopy(float_model) if precision == "fp32" else copy.deepcopy(float_model).quantize("int8")
        with torch.inference_mode():
            start = time.perf_counter()
            model.fuse("on")(**random_batch(2, 8, generator))
            compile_s = time.perf_counter() - start
            for batch, length in shapes:
                inputs = random_batch(batch, length, generator)

                def forward(setting: str, model=model, inputs=inputs) -> torch.Tensor:
                    return model.fuse(setting)(**inputs).last_hidden_state

                diff = float((forward("on") - forward("off")).abs().max())  # and the warm-up of both
                ms = cpu_ms({"eager": lambda: forward("off"), "fused": lambda: forward("on")}, args.reps)
                run.add({"precision": precision, "batch": f"{batch}x{length}",
                         "tokens": int(inputs["attention_mask"].sum()), "eager_ms": ms["eager"],
                         "fused_ms": ms["fused"], "speedup": ms["eager"] / ms["fused"], "max_diff": diff,
                         "compile_s": compile_s}, COLUMNS)
    for row in training_rows(float_model, [int(n) for n in args.train_tokens.split(",")], args.reps):
        run.add(row, COLUMNS)
    run.finish(reps=args.reps)


def training_rows(model: minibert.BertModel, token_counts: list[int], reps: int) -> list[dict]:
    """One layer's output half in training, forward + backward of the sum, eager against torch.compile."""
    layer = copy.deepcopy(model.encoder.layers[1]).train()
    half = type(layer).output_half
    compiled = torch.compile(half, dynamic=False)

    def run_compiled(layer: torch.nn.Module, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(mixed, 0)
        return compiled(layer, x, mixed)

    rows = []
    for dropout in (layer.dropout.p, 0.0):
        layer.dropout.p = dropout
        for precision in ("fp32", "bf16"):
            for n in token_counts:
                def step(fn: Callable, n: int = n, precision: str = precision) -> None:
                    x, mixed = (torch.randn(n, model.config.hidden_size, requires_grad=True) for _ in range(2))
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        out = fn(layer, x, mixed)
                    out.float().sum().backward()

                start = time.perf_counter()
                step(run_compiled)
                compile_s = time.perf_counter() - start
                ms = cpu_ms({"eager": lambda: step(half), "fused": lambda: step(run_compiled)}, reps)
                rows.append({"precision": f"{precision} training, dropout {dropout:g}", "batch": f"{n} packed",
                             "tokens": n, "eager_ms": ms["eager"], "fused_ms": ms["fused"],
                             "speedup": ms["eager"] / ms["fused"], "max_diff": float("nan"), "compile_s": compile_s})
    return rows


COLUMNS = ["precision", "batch", "tokens", "eager_ms", "fused_ms", "speedup", "max_diff", "compile_s"]

if __name__ == "__main__":
    main()
