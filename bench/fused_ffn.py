"""Fused elementwise kernels for the encoder's feed-forward half (bias + GELU, residual add + LayerNorm): the eager
block against `torch.compile` of the same block (regional: one layer's FFN + add & norm, dynamic token counts so
packed batches do not recompile), fp32 and minibert int8, on packed MiniLM tokens.

Time is the thread's CPU time per call (median), so that other processes on a shared machine count less; `max diff`
is the compiled block against the eager one. Nothing here is wired into `auto`: this measures whether it would pay.

    python bench/fused_ffn.py [--tokens 64,600,2000] [--reps 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import MINILM, Run, add_run_arguments, setup

import minibert


def cpu_ms(fn, x: torch.Tensor, reps: int) -> float:
    fn(x)
    times = []
    for _ in range(reps):
        start = time.thread_time()
        fn(x)
        times.append(time.thread_time() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="64,600,2000", help="packed token counts")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    setup(args.threads)
    run = Run("fused_ffn", args)
    model = minibert.BertModel.from_pretrained(MINILM)
    for precision, layer in (("fp32", model.encoder.layers[0]),
                             ("int8", copy.deepcopy(model).quantize("int8").encoder.layers[0])):

        def block(x: torch.Tensor, layer=layer) -> torch.Tensor:  # (n, hidden) -> (n, hidden)
            return layer.ffn_norm(x + layer.ffn(x))

        compiled = torch.compile(block, dynamic=True)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(torch.randn(100, model.config.hidden_size))
            compile_s = time.perf_counter() - start
            for n in map(int, args.tokens.split(",")):
                x = torch.randn(n, model.config.hidden_size)
                eager_ms, compiled_ms = cpu_ms(block, x, args.reps), cpu_ms(compiled, x, args.reps)
                run.add({"precision": precision, "tokens": n, "eager_ms": eager_ms, "compiled_ms": compiled_ms,
                         "speedup": eager_ms / compiled_ms, "max_diff": float((compiled(x) - block(x)).abs().max()),
                         "compile_s": compile_s}, COLUMNS)
    run.finish(reps=args.reps)


COLUMNS = ["precision", "tokens", "eager_ms", "compiled_ms", "speedup", "max_diff", "compile_s"]

if __name__ == "__main__":
    main()
