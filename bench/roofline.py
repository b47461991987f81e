"""The machine's measured matmul peak (fp32, bf16) and the fraction of it a full-length bert-base forward reaches.

Peak: the best GFLOP/s of torch.matmul over BERT-shaped products (tokens x hidden @ hidden x 4·hidden etc.).
Forward: bert-base (random weights, the same in both libraries), batch 8 x 128 tokens, no padding, attention mask
of ones, eval mode, under inference_mode; bf16 twice: autocast over float32 weights, and weights stored in bf16.
FLOPs are counted as 2·m·n·k over every matmul (q/k/v, output, FFN, the two attention products, the pooler), so the
fraction is "useful matmul work per second / matmul peak".

    python bench/roofline.py [--quick]
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import Run, add_run_arguments, amp, bf16_allowed, interleaved, median, pair, setup, table

SHAPES = [(1024, 768, 3072), (1024, 3072, 768), (1024, 768, 2304), (2048, 1024, 4096)]  # (m, k, n)


def matmul_peak(dtype: torch.dtype, reps: int, device: str = "cpu") -> tuple[float, str]:
    best, where = 0.0, ""
    shapes = SHAPES if device == "cpu" else [(8192, 8192, 8192), (16384, 1024, 4096)]
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
        times = interleaved({"mm": lambda: torch.matmul(a, b)}, reps, warmup=2)["mm"]  # noqa: B023
        gflops = 2 * m * n * k / min(times) / 1e9
        if gflops > best:
            best, where = gflops, f"{m}x{k}@{k}x{n}"
    return best, where


def forward_flops(config, batch: int, seq: int) -> float:
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = batch * seq
    per_layer = 2 * tokens * (3 * h * h + h * h + 2 * h * f) + 2 * 2 * batch * seq * seq * h
    return layers * per_layer + 2 * batch * h * h


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    setup(args.threads)
    run = Run("roofline", args)
    reps = 2 if args.quick else args.reps
    ref, ours = (m.to(args.device) for m in pair("bert-base", head="BertModel"))
    flops = forward_flops(ref.config, args.batch, args.seq)
    ids = torch.randint(1000, 30000, (args.batch, args.seq), device=args.device)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    print(f"bert-base forward {args.batch} x {args.seq}: {flops / 1e9:.1f} GFLOP", flush=True)
    # bf16: autocast over float32 weights (what fine-tuning runs), and weights stored in bf16 (inference only)
    runs = [("fp32", torch.float32)]
    if bf16_allowed(args, "the bf16 matmul peak and forwards"):
        runs += [("bf16", torch.bfloat16), ("bf16 weights", torch.bfloat16)]
    peaks = {}
    for torch_dtype in dict.fromkeys(t for _, t in runs):
        peaks[torch_dtype] = matmul_peak(torch_dtype, reps * 2, args.device)
        print(f"{torch_dtype} matmul peak: {peaks[torch_dtype][0]:.0f} GFLOP/s at {peaks[torch_dtype][1]}", flush=True)
    for dtype, torch_dtype in runs:
        peak, where = peaks[torch_dtype]
        hf, mb = (copy.deepcopy(m).to(torch.bfloat16) for m in (ref, ours)) if dtype == "bf16 weights" else (ref, ours)
        fns = {"transformers": lambda hf=hf: hf(input_ids=ids, attention_mask=mask),
               "minibert": lambda mb=mb: mb(ids, mask)}
        with torch.inference_mode(), amp(dtype, args.device):
            times = interleaved(fns, reps, warmup=1)
        for lib, ts in times.items():
            achieved = flops / median(ts) / 1e9
            run.add(dict(dtype=dtype, matmul_peak_gflops=peak, peak_shape=where, library=lib,
                         forward_ms=median(ts) * 1e3, gflops=achieved, fraction_of_peak=achieved / peak), COLUMNS)
    print(f"\nbert-base forward {args.batch} x {args.seq}: {flops / 1e9:.1f} GFLOP\n")
    print(table(run.rows, COLUMNS))
    run.finish(flops=flops, reps=reps)


COLUMNS = ["dtype", "matmul_peak_gflops", "peak_shape", "library", "forward_ms", "gflops", "fraction_of_peak"]

if __name__ == "__main__":
    main()
