"""Tokenising all 25,000 IMDB train reviews: minibert's BertTokenizer against transformers' default (Rust-backed)
BertTokenizer and its pure-Python legacy one, in one process and in parallel, and with character offsets
(`return_offsets_mapping=True`, which the legacy tokenizer cannot return). Prints a table and writes JSON.

    python bench/tokenizer.py [--shared ../shared] [--workers 2] [--limit N] [--repeat R]

Each minibert run starts from a fresh tokenizer, so its per-word cache starts empty (the cost a fine-tuning run
pays once). Parallel: minibert's `encode_batch(num_workers=...)`; the Rust tokenizer's own threads; the legacy
tokenizer in a process pool, the way a user would parallelise it. The ids of every run are checked against the
Rust tokenizer's, and the offsets of the offset runs against its offsets.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tokenizers
import transformers
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from the repo root without installing minibert

from minibert.tokenizer import BertTokenizer  # noqa: E402 - after the path fix above

TARGET_SPEEDUP_OVER_LEGACY = 2.0
TARGET_SECONDS = 30.0
OURS_OFFSETS = "minibert with offsets, 1 process"
RUST_OFFSETS = "transformers (Rust) with offsets, 1 thread"


def read_imdb(path: Path, limit: int | None) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        texts = [row[0] for row in reader]
    return texts[:limit] if limit else texts


def timed(run: Callable[[], list[list[int]]]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    ids = run()
    return time.perf_counter() - start, ids


_legacy: BertTokenizerLegacy | None = None


def _legacy_worker(texts: list[str]) -> list[list[int]]:
    return _legacy(texts)["input_ids"]


def legacy_parallel(tokenizer: BertTokenizerLegacy, texts: list[str], workers: int) -> list[list[int]]:
    global _legacy
    _legacy = tokenizer  # inherited by the forked workers
    chunk = -(-len(texts) // (workers * 4))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_legacy_worker, [texts[i:i + chunk] for i in range(0, len(texts), chunk)])
    return [ids for part in parts for ids in part]


def rust(tokenizer: transformers.BertTokenizer, texts: list[str], parallel: bool, **kwargs: bool) -> list[list[int]]:
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"  # read by tokenizers at each call
    return tokenizer(texts, **kwargs)["input_ids"]


_offsets: dict[str, list] = {}  # the offsets of the last run of each kind, checked after the timing


def with_offsets(name: str, tokenizer: Callable, texts: list[str], **kwargs: bool) -> list[list[int]]:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the Rust tokenizer on one thread, like minibert's one process
    enc = tokenizer(texts, return_offsets_mapping=True, **kwargs)
    _offsets[name] = [[tuple(pair) for pair in row] for row in enc["offset_mapping"]]
    return enc["input_ids"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared data folder")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes / threads in parallel")
    parser.add_argument("--limit", type=int, default=None, help="only the first N reviews (a quick run)")
    parser.add_argument("--repeat", type=int, default=1, help="time each run R times and keep the fastest (a busy "
                        "machine)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "tokenizer.json")
    args = parser.parse_args(argv)

    model_dir = args.shared / "models" / "all-MiniLM-L6-v2"
    texts = read_imdb(args.shared / "data" / "imdb" / "train.csv", args.limit)
    reference = transformers.BertTokenizer.from_pretrained(model_dir)
    legacy = BertTokenizerLegacy.from_pretrained(model_dir)
    w = args.workers
    runs: dict[str, Callable[[], list[list[int]]]] = {
        "minibert, 1 process": lambda: BertTokenizer.from_pretrained(model_dir)(texts)["input_ids"],
        f"minibert, {w} processes": lambda: BertTokenizer.from_pretrained(model_dir).encode_batch(
            texts, truncation=False, num_workers=w)["input_ids"],
        "transformers (Rust), 1 thread": lambda: rust(reference, texts, parallel=False),
        f"transformers (Rust), {w} threads": lambda: rust(reference, texts, parallel=True),
        "transformers legacy (Python), 1 process": lambda: legacy(texts)["input_ids"],
        f"transformers legacy (Python), {w} processes": lambda: legacy_parallel(legacy, texts, w),
        OURS_OFFSETS: lambda: with_offsets("minibert", BertTokenizer.from_pretrained(model_dir), texts, verbose=False),
        RUST_OFFSETS: lambda: with_offsets("rust", reference, texts, verbose=False),
    }
    expected = rust(reference, texts, parallel=True)
    results = []
    for name, run in runs.items():
        seconds, ids = min((timed(run) for _ in range(args.repeat)), key=lambda timing: timing[0])
        mismatches = sum(a != b for a, b in zip(ids, expected)) + abs(len(ids) - len(expected))
        results.append({"name": name, "seconds": round(seconds, 3), "texts_per_second": round(len(texts) / seconds, 1),
                        "mismatches_vs_rust": mismatches})
        if name == OURS_OFFSETS:  # rows whose offsets differ from the Rust tokenizer's
            results[-1]["offset_mismatches_vs_rust"] = None
        print(f"  {name}: {seconds:.2f} s", file=sys.stderr, flush=True)

    for r in results:
        if "offset_mismatches_vs_rust" in r:
            r["offset_mismatches_vs_rust"] = sum(a != b for a, b in zip(_offsets["minibert"], _offsets["rust"]))
    by_name = {r["name"]: r["seconds"] for r in results}
    legacy_one = by_name["transformers legacy (Python), 1 process"]
    ours_one = by_name["minibert, 1 process"]
    ours_best = min(ours_one, by_name[f"minibert, {w} processes"])
    for r in results:
        r["speedup_vs_legacy_1_process"] = round(legacy_one / r["seconds"], 2)
        r["speedup_vs_minibert_1_process"] = round(ours_one / r["seconds"], 2)

    print(f"\nIMDB train, {len(texts)} reviews, {os.cpu_count()} CPU cores\n")
    print(f"| {'tokenizer':<44} | {'seconds':>8} | {'texts/s':>9} | {'vs legacy':>9} | {'vs minibert':>11} | "
          f"{'mismatches':>10} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 13}|{'-' * 12}|")
    for r in results:
        print(f"| {r['name']:<44} | {r['seconds']:>8.2f} | {r['texts_per_second']:>9.0f} | "
              f"{r['speedup_vs_legacy_1_process']:>8.2f}x | {r['speedup_vs_minibert_1_process']:>10.2f}x | "
              f"{r['mismatches_vs_rust']:>10} |")
    speedup = legacy_one / ours_one
    print(f"\nminibert vs legacy, one process: {speedup:.2f}x (target {TARGET_SPEEDUP_OVER_LEGACY}x); "
          f"fastest minibert run: {ours_best:.2f} s (target under {TARGET_SECONDS:.0f} s)")
    offsets_speedup = legacy_one / by_name[OURS_OFFSETS]
    offsets_cost = {"minibert": round(by_name[OURS_OFFSETS] / ours_one, 2),
                    "rust": round(by_name[RUST_OFFSETS] / by_name["transformers (Rust), 1 thread"], 2)}
    offset_mismatches = next(r["offset_mismatches_vs_rust"] for r in results if r["name"] == OURS_OFFSETS)
    print(f"with offsets: minibert {offsets_speedup:.2f}x the legacy tokenizer without them (target "
          f"{TARGET_SPEEDUP_OVER_LEGACY}x); offsets cost {offsets_cost['minibert']:.2f}x a plain encode for minibert, "
          f"{offsets_cost['rust']:.2f}x for the Rust tokenizer; {offset_mismatches} reviews with other offsets")

    report = {
        "benchmark": "tokenize IMDB train reviews (no truncation, no padding)",
        "texts": len(texts),
        "workers": w,
        "repeat": args.repeat,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "results": results,
        "minibert_speedup_vs_legacy_1_process": round(speedup, 2),
        "minibert_with_offsets_speedup_vs_legacy_1_process": round(offsets_speedup, 2),
        "offsets_cost_vs_plain": offsets_cost,
        "targets_met": speedup >= TARGET_SPEEDUP_OVER_LEGACY and ours_best < TARGET_SECONDS
        and offsets_speedup >= TARGET_SPEEDUP_OVER_LEGACY and offset_mismatches == 0,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.output}")
    return report


if __name__ == "__main__":
    main()
