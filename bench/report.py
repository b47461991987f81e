"""Writes the tables of bench/README.md from the recorded runs in bench/results/*.json.

Each table shows, per configuration (its key columns, on one machine, at one thread count), the row of the newest
complete run that measured it; its `run` column numbers that run in the generated list of runs, which gives each
run's command, commit, time, threads, CPU model, flags, `torch.backends.cpu.get_cpu_capability()` and whether bf16 is
native there. Earlier runs stay out of the tables (the generated history lists their files). Only the blocks between
`<!-- generated:NAME -->` and `<!-- end -->` are rewritten; the prose around them is hand-written.

    python bench/report.py            # rewrite bench/README.md
    python bench/report.py --check    # exit 1 if bench/README.md is not what the results give
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mdtable import fmt, header_lines, row_line

BENCH = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- generated:([\w-]+) -->\n)(.*?)(<!-- end -->)", re.DOTALL)


@dataclass(frozen=True)
class Table:
    """One generated table: the rows of `script` that `where` keeps (after `reshape`, per run), one per `key`."""

    name: str
    script: str
    key: tuple[str, ...]  # a row's configuration: looked up in the row, else in the run's arguments
    columns: tuple[tuple[str, str], ...]  # (field, header)
    where: Callable[[dict], bool] = lambda row: True
    reshape: Callable[[list[dict]], list[dict]] | None = None
    run_hint: str = ""  # the command that fills an empty table


def spread(by: tuple[str, ...], over: str, fields: tuple[str, ...], needed: tuple[str, ...],
           ratio: tuple[str, str, str] | None = None, worst: str | None = None):
    """Rows that differ in `over` (a kernel, a library) -> one row per `by`, with a "<value> <field>" column for each
    field; rows lacking one of the `needed` values are left out. `ratio` = (name, a, b): a's first field ÷ b's;
    `worst`: the largest value of that field over the merged rows."""
    def reshape(rows: list[dict]) -> list[dict]:
        out: dict[tuple, dict] = {}
        for row in rows:
            merged = out.setdefault(tuple(row[k] for k in by), {})
            merged.update({k: v for k, v in row.items() if k not in (over, *fields, worst, "tokens_per_s")})
            merged.update({f"{row[over]} {field}": row[field] for field in fields if field in row})
            if worst is not None and row.get(worst) is not None:
                merged[worst] = max(merged.get(worst, row[worst]), row[worst])
        first = fields[0]
        for merged in out.values():
            if ratio and all(f"{k} {first}" in merged for k in ratio[1:]):
                merged[ratio[0]] = merged[f"{ratio[1]} {first}"] / merged[f"{ratio[2]} {first}"]
        return [m for m in out.values() if all(f"{k} {first}" in m for k in needed)]

    return reshape


def pivot(by: tuple[str, ...], kernels: tuple[str, ...], ratio: tuple[str, str] | None = None):
    """Rows per kernel -> one row per `by` with a "<kernel> ms" column each (and `ratio` = first ÷ second)."""
    return spread(by, "kernel", ("ms",), kernels, ("ratio", *ratio) if ratio else None)


def low_precision(rows: list[dict]) -> list[dict]:
    """attention_kernels.py's low-precision part: one row per shape, inference and training ("..., train") side by
    side, `math` and `sdpa` each."""
    out: dict[str, dict] = {}
    for row in pivot(("grid",), ("math", "sdpa"), ("math", "sdpa"))(rows):
        shape, train = row["grid"].removesuffix(", train"), row["grid"].endswith(", train")
        merged = out.setdefault(shape, {"grid": shape, "scores": row["scores"]})
        merged.update({("train " if train else "") + k: row[k] for k in ("math ms", "sdpa ms", "ratio")})
    return list(out.values())


INFERENCE_COLUMNS = (("model", "model"), ("data", "data"), ("n", "texts"), ("dtype", "dtype"), ("recipe", "recipe"),
                     ("hf", "transformers /s"), ("mb", "minibert /s"), ("ratio", "ratio"))
KERNEL_COLUMNS = (("grid", "grid"), ("dtype", "dtype"), ("math ms", "math ms"), ("sdpa ms", "sdpa ms"),
                  ("unpadded ms", "unpadded ms"))
KERNEL_MEMORY = (("math peak_mb", "math peak MB"), ("sdpa peak_mb", "sdpa peak MB"),
                 ("unpadded peak_mb", "unpadded peak MB"), ("max_diff_vs_math", "largest diff vs math"))
per_kernel = spread(("grid", "dtype"), "kernel", ("ms", "peak_mb"), ("math", "sdpa", "unpadded"),
                    ("unpadded ÷ sdpa", "unpadded", "sdpa"), worst="max_diff_vs_math")


def serve_rows(rows: list[dict]) -> list[dict]:
    """One run of serve.py: each server under its plain name (its precision is a column of its own)."""
    return [{**row, "server": row["server"].split("@")[0]} for row in rows]


def serve_ratios(rows: list[dict]) -> list[dict]:
    """minibert's rows of one serve.py run, each with its ratios to the transformers servers at the same data and
    clients: the server people write (`hf`, fp32), and `hf` and `hf-batched` at minibert's own precision."""
    rows = serve_rows(rows)

    def other(server: str, precision: str, like: dict) -> dict | None:
        return next((r for r in rows if r["server"] == server and r["precision"] == precision
                     and r["data"] == like["data"] and r["clients"] == like["clients"]), None)

    out = []
    for row in (r for r in rows if r["server"] == "minibert"):
        merged = dict(row)
        for field, them in (("vs_hf_fp32", other("hf", "fp32", row)), ("vs_hf", other("hf", row["precision"], row)),
                            ("vs_hf_batched", other("hf-batched", row["precision"], row))):
            if them is not None:
                merged[field] = row["texts_per_s"] / them["texts_per_s"]
        if (hf := other("hf", "fp32", row)) is not None:
            merged["hf_p50_over_ours"] = hf["p50_ms"] / row["p50_ms"]
            merged["hf_p99_over_ours"] = hf["p99_ms"] / row["p99_ms"]
        out.append(merged)
    return out


def serve_by_precision(rows: list[dict]) -> list[dict]:
    """One run of serve.py: one row per server, data and clients, its precisions side by side (errors: the most)."""
    return spread(("server", "data", "clients"), "precision", ("texts_per_s", "p50_ms", "p99_ms"), (),
                  worst="errors")(serve_rows(rows))


SERVE_KEY = ("server", "precision", "data", "clients", "workers")
API_RUN = "python bench/serve.py --api --clients 64 --workers 2"


def api_embeddings(rows: list[dict]) -> list[dict]:
    """serve.py --api: per data set and client count, /embed and /v1/embeddings side by side (texts/s the mean of
    the alternating rounds, p99 the worst round) and their ratio."""
    out = []
    for data, clients in dict.fromkeys((r["data"], r["clients"]) for r in rows if r.get("part") == "embeddings"):
        merged = {"data": data, "clients": clients, "errors": 0}
        for route in ("/embed", "/v1/embeddings"):
            mine = [r for r in rows if r.get("route") == route and r["data"] == data and r["clients"] == clients]
            merged[f"{route} texts/s"] = sum(r["texts_per_s"] for r in mine) / len(mine)
            merged[f"{route} p99"] = max(r["p99_ms"] for r in mine)
            merged["errors"] += sum(r["errors"] for r in mine)
            merged.update(precision=mine[0]["precision"], max_vector_diff=mine[0]["max_vector_diff"],
                          rounds=len(mine))
        merged["ratio"] = merged["/v1/embeddings texts/s"] / merged["/embed texts/s"]
        out.append(merged)
    return out


def api_rerank(rows: list[dict]) -> list[dict]:
    """serve.py --api: each /rerank server's row with minibert's ratios to sentence-transformers' at the same data
    and clients (pairs/s, and its p99 over ours)."""
    rows = [r for r in rows if r.get("part") == "rerank"]
    out = []
    for row in rows:
        theirs = next((r for r in rows if r["server"] == "st-rerank" and r["data"] == row["data"]
                       and r["clients"] == row["clients"]), None)
        merged = dict(row)
        if theirs and row["server"] == "minibert":
            merged["vs_st"] = row["texts_per_s"] / theirs["texts_per_s"]
            merged["st_p99_over_ours"] = theirs["p99_ms"] / row["p99_ms"]
        out.append(merged)
    return out


def part(name: str) -> Callable[[dict], bool]:
    return lambda row: row.get("part") == name


TABLES = [
    Table("inference", "inference", ("model", "data", "dtype", "recipe"),
          INFERENCE_COLUMNS + (("hf_sorted", "transformers, sorted /s"),
                               ("mb_vs_hf_sorted", "minibert ÷ transformers sorted"),
                               ("max_logit_diff", "max logit diff"), ("argmax_agree", "argmax agree")),
          where=lambda row: not row.get("compiled"), run_hint="python bench/inference.py --quick --threads 1"),
    Table("inference-ort", "inference", ("model", "data", "n", "dtype", "recipe"),
          (("model", "model"), ("data", "data"), ("n", "texts"), ("dtype", "dtype"), ("recipe", "recipe"),
           ("ort", "ONNX Runtime /s"), ("mb", "minibert /s"), ("mb_vs_ort", "minibert ÷ ONNX Runtime"),
           ("hf", "transformers /s"), ("ort_max_logit_diff", "ORT max logit diff vs transformers")),
          where=lambda row: "ort" in row and not row.get("compiled"),
          run_hint="python bench/inference.py --ort --dtypes fp32 --threads 2"),
    Table("inference-int8", "inference", ("model", "data", "n", "dtype", "recipe"),
          (("model", "model"), ("data", "data"), ("n", "texts"), ("recipe", "recipe"),
           ("ort", "ORT fp32 /s"), ("ort8", "ORT int8 /s"), ("mb", "minibert fp32 /s"), ("mb8", "minibert int8 /s"),
           ("mb8_vs_ort8", "minibert int8 ÷ ORT int8"), ("acc_hf", "accuracy fp32"), ("acc_ort8", "ORT int8 accuracy"),
           ("acc_mb8", "minibert int8 accuracy"), ("ort8_agree", "ORT int8 agrees with fp32"),
           ("mb8_agree", "minibert int8 agrees with fp32")),
          where=lambda row: "mb8" in row and not row.get("compiled"),
          reshape=lambda rows: [{**row, "mb8_acc_change": row["acc_mb8"] - row["acc_mb"]} if "acc_mb8" in row else row
                                for row in rows],
          run_hint="python bench/inference.py --ort --dtypes fp32 --threads 1 --classifier FOLDER"),
    Table("int8-matmuls", "int8_matmuls", ("choice",),
          (("choice", "int8 matmuls"), ("accuracy", "SST-2 dev accuracy"), ("agree", "argmax agrees with fp32"),
           ("max_logit_diff", "max logit diff"), ("cosine_min", "embedding cosine, lowest"),
           ("cosine_mean", "embedding cosine, mean"), ("cpu_ms_per_text", "CPU ms / text"),
           ("speedup", "÷ fp32 time")),
          run_hint="python bench/int8_matmuls.py --classifier FOLDER --threads 1"),
    Table("fused-layers", "fused_layers", ("precision", "batch"),
          (("precision", "precision"), ("batch", "batch x length"), ("tokens", "real tokens"),
           ("eager_ms", "eager CPU ms"), ("fused_ms", "fused CPU ms"), ("speedup", "eager ÷ fused"),
           ("max_diff", "max diff"), ("compile_s", "compile s")),
          run_hint="python bench/fused_layers.py --threads 1"),
    Table("inference-compiled", "inference", ("model", "data", "n", "dtype", "recipe"),
          INFERENCE_COLUMNS + (("hf_compile_s", "transformers compile s"), ("mb_compile_s", "minibert compile s")),
          where=lambda row: bool(row.get("compiled")),
          run_hint="python bench/inference.py --models minilm --dtypes fp32 --compile --quick --threads 1"),
    Table("train", "train", ("model", "dtype", "batch", "order"),
          (("model", "model"), ("dtype", "dtype"), ("batch", "batch"), ("order", "order"),
           ("hf_samples_s", "transformers samples/s"), ("mb_samples_s", "minibert samples/s"), ("ratio", "ratio"),
           ("hf_peak_mb", "transformers peak MB"), ("mb_peak_mb", "minibert peak MB"),
           ("memory_ratio", "memory ratio")), run_hint="python bench/train.py --quick --order file"),
    Table("long-text", "long_text", ("mode", "dtype", "strategy"),
          (("mode", "mode"), ("dtype", "dtype"), ("strategy", "strategy"), ("doc_tokens", "tokens per document"),
           ("sequences_per_doc", "sequences per document"), ("padded_fraction", "padding in the batch"),
           ("transformers ms_per_doc", "transformers ms per document"), ("minibert ms_per_doc", "minibert ms"),
           ("minibert vs_transformers", "minibert speed ÷ transformers"),
           ("transformers chunks_vs_head_tail", "transformers chunks ÷ head-tail"),
           ("minibert chunks_vs_head_tail", "minibert chunks ÷ head-tail")),
          reshape=spread(("mode", "dtype", "strategy"), "library", ("ms_per_doc", "chunks_vs_head_tail",
                                                                   "vs_transformers"), ("transformers", "minibert")),
          run_hint="python bench/long_text.py"),
    Table("pretrain", "pretrain", ("model", "dtype", "max length"),
          (("model", "model"), ("dtype", "dtype"), ("max length", "length"), ("minibert ms/step", "minibert ms/step"),
           ("transformers ms/step", "transformers ms/step"),
           ("transformers packed ms/step", "transformers packed ms/step"),
           ("minibert tokens/s", "minibert real tokens/s"), ("minibert vs transformers", "minibert ÷ transformers"),
           ("transformers packed vs transformers", "transformers packed ÷ transformers"),
           ("minibert of peak", "minibert fraction of matmul peak"),
           ("transformers of peak", "transformers fraction of matmul peak")),
          where=lambda row: "of peak" in row,
          reshape=spread(("model", "dtype", "max length"), "library", ("ms/step", "tokens/s", "of peak",
                                                                      "vs transformers"),
                         ("minibert", "transformers")),
          run_hint="python bench/pretrain.py --quick"),
    Table("serve", "serve", ("server", "data", "clients", "workers"),
          (("server", "server"), ("workers", "workers"), ("data", "data"), ("clients", "clients"),
           *((f"{p} {field}", f"{p} {name}") for p in ("fp32", "bf16 autocast", "int8")
             for field, name in (("texts_per_s", "texts/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"))),
           ("errors", "errors")),
          where=lambda row: "precision" in row, reshape=serve_by_precision,
          run_hint="python bench/serve.py --seconds 10 --workers 2 --servers minibert@auto,minibert,hf,hf@auto"),
    Table("serve-ratios", "serve", SERVE_KEY,
          (("precision", "minibert precision"), ("workers", "workers"), ("data", "data"), ("clients", "clients"),
           ("texts_per_s", "minibert texts/s"), ("vs_hf_fp32", "÷ hf fp32"), ("vs_hf", "÷ hf same precision"),
           ("vs_hf_batched", "÷ hf-batched same precision"), ("hf_p50_over_ours", "hf fp32 p50 ÷ minibert p50"),
           ("hf_p99_over_ours", "hf fp32 p99 ÷ minibert p99")),
          where=lambda row: "precision" in row, reshape=serve_ratios,
          run_hint="python bench/serve.py --seconds 10 --workers 2 --servers minibert@auto,minibert,hf,hf@auto"),
    Table("serve-api-embeddings", "serve_api", ("data", "clients"),
          (("precision", "precision"), ("data", "data"), ("clients", "clients"), ("rounds", "rounds"),
           ("/embed texts/s", "/embed texts/s"), ("/v1/embeddings texts/s", "/v1/embeddings texts/s"),
           ("ratio", "/v1/embeddings ÷ /embed"), ("/embed p99", "/embed p99 ms"),
           ("/v1/embeddings p99", "/v1/embeddings p99 ms"), ("max_vector_diff", "max vector diff"),
           ("errors", "errors")),
          where=part("embeddings"), reshape=api_embeddings, run_hint=API_RUN),
    Table("serve-api-rerank", "serve_api", ("server", "precision", "data", "clients"),
          (("server", "server"), ("precision", "precision"), ("data", "data"), ("clients", "clients"),
           ("texts_per_s", "pairs/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("vs_st", "÷ sentence-transformers"),
           ("st_p99_over_ours", "sentence-transformers p99 ÷ ours"), ("same_order_as_st", "same order"),
           ("max_score_diff_vs_st", "max score diff"), ("errors", "errors")),
          where=part("rerank"), reshape=api_rerank, run_hint="python bench/serve.py --api --clients 64 --workers 2"),
    Table("serve-attack", "serve_attack", ("condition",),
          (("condition", "condition"), ("clients", "small clients"), ("big_senders", "1 MB senders"),
           ("stalled", "stalled connections"), ("small_requests", "small requests"), ("small_p50_ms", "small p50 ms"),
           ("small_p99_ms", "small p99 ms"), ("small_errors", "small errors"), ("health_p50_ms", "/health p50 ms"),
           ("health_p99_ms", "/health p99 ms"), ("health_errors", "/health errors"), ("big_sent", "1 MB bodies sent"),
           ("big_answers", "their answers")),
          where=part("attack"), run_hint="python bench/serve.py --attack 15 --threads 1"),
    Table("serve-attack-pools", "serve_attack", ("pool",),
          (("pool", "tokenising in"), ("loop_lag_p50_ms", "loop lag p50 ms"), ("loop_lag_p99_ms", "loop lag p99 ms"),
           ("loop_lag_max_ms", "loop lag max ms"), ("small_requests_per_s", "small requests tokenised /s")),
          where=part("pools"), run_hint="python bench/serve.py --attack 15 --threads 1"),
    Table("roofline", "roofline", ("batch", "seq", "dtype", "library"),
          (("dtype", "dtype"), ("matmul_peak_gflops", "matmul peak GFLOP/s"), ("peak_shape", "at"),
           ("library", "library"), ("forward_ms", "forward ms"), ("gflops", "GFLOP/s"),
           ("fraction_of_peak", "fraction of peak")), run_hint="python bench/roofline.py --quick --threads 1"),
    Table("kernels-attention", "attention_kernels", ("grid", "dtype"),
          KERNEL_COLUMNS + (("unpadded-padmax ms", "unpadded-padmax ms"), ("unpadded-nested ms", "unpadded-nested ms"))
          + KERNEL_MEMORY, where=part("attention"), reshape=per_kernel,
          run_hint="python bench/attention_kernels.py --quick --only attention"),
    Table("kernels-encoder", "attention_kernels", ("grid", "dtype"),
          KERNEL_COLUMNS + (("unpadded ÷ sdpa", "unpadded ÷ sdpa"),) + KERNEL_MEMORY, where=part("encoder"),
          reshape=per_kernel, run_hint="python bench/attention_kernels.py --quick --only encoder"),
    Table("kernels-qkv", "attention_kernels", ("grid",),
          (("grid", "shape"), ("fused ms", "fused q/k/v ms"), ("separate ms", "separate q, k, v ms"),
           ("ratio", "fused ÷ separate")),
          where=part("qkv"), reshape=pivot(("grid",), ("fused", "separate"), ("fused", "separate")),
          run_hint="python bench/attention_kernels.py --quick --only qkv"),
    Table("kernels-crossover", "attention_kernels", ("grid", "dtype"),
          (("grid", "batch, padding"), ("dtype", "dtype"), ("sdpa ms", "sdpa ms"), ("unpadded ms", "unpadded ms"),
           ("ratio", "unpadded ÷ sdpa"), ("auto ms", "auto ms")),
          where=part("crossover"), reshape=pivot(("grid", "dtype"), ("sdpa", "unpadded", "auto"), ("unpadded", "sdpa")),
          run_hint="python bench/attention_kernels.py --quick --only crossover"),
    Table("kernels-low-precision", "attention_kernels", ("grid",),
          (("grid", "batch x heads x length, head dim"), ("scores", "score elements"), ("math ms", "math ms"),
           ("sdpa ms", "sdpa ms"), ("ratio", "math ÷ sdpa"), ("train math ms", "training: math ms"),
           ("train sdpa ms", "training: sdpa ms"), ("train ratio", "training: math ÷ sdpa")),
          where=part("low-precision"), reshape=low_precision,
          run_hint="python bench/attention_kernels.py --quick --only low-precision"),
]


@dataclass(frozen=True)
class Target:
    """A goal from the issues, read off the current rows of `table` that match `where` (one line per machine)."""

    workload: str
    table: str
    where: dict
    field: str
    at_least: float


TARGETS = [
    Target("SST-2 dev, MiniLM, fp32, dynamic padding, batch 32, file order: minibert ÷ transformers", "inference",
           {"model": "minilm", "data": "sst2-dev", "dtype": "fp32", "recipe": "dynamic"}, "ratio", 1.5),
    Target("same, bert-base", "inference",
           {"model": "bert-base", "data": "sst2-dev", "dtype": "fp32", "recipe": "dynamic"}, "ratio", 1.5),
    Target("same, MiniLM bf16 autocast, against transformers bf16 on length-sorted batches", "inference",
           {"model": "minilm", "data": "sst2-dev", "dtype": "bf16", "recipe": "dynamic"}, "mb_vs_hf_sorted", 1.0),
    Target("classic recipe (pad to 128, batch 16), SST-2 dev, MiniLM fp32", "inference",
           {"model": "minilm", "data": "sst2-dev", "dtype": "fp32", "recipe": "classic"}, "ratio", 5.0),
    Target("classic recipe, bert-base fp32", "inference",
           {"model": "bert-base", "data": "sst2-dev", "dtype": "fp32", "recipe": "classic"}, "ratio", 5.0),
    *(Target(f"{data}, MiniLM fp32, {recipe} batches: minibert ÷ ONNX Runtime (fused)", "inference-ort",
             {"model": "minilm", "data": key, "dtype": "fp32", "recipe": recipe}, "mb_vs_ort", 1.0)
      for data, key, recipes in (("SST-2 dev", "sst2-dev", ("classic", "dynamic", "sorted")),
                                 ("IMDB", "imdb", ("classic", "dynamic")))
      for recipe in recipes),
    *(Target(f"{data}, {name}, {recipe} batches: minibert int8 ÷ ONNX Runtime int8 (fused, quantize_dynamic)",
             "inference-int8", {"model": model, "data": key, "recipe": recipe}, "mb8_vs_ort8", 1.2)
      for model, name in (("minilm", "MiniLM"), ("bert-base", "bert-base"))
      for data, key, recipes in (("SST-2 dev", "sst2-dev", ("dynamic", "sorted")), ("IMDB", "imdb", ("dynamic",)))
      for recipe in recipes),
    Target("SST-2 dev, MiniLM classifier: minibert int8 argmax agreement with minibert fp32", "inference-int8",
           {"model": "minilm", "data": "sst2-dev", "recipe": "dynamic"}, "mb8_agree", 0.98),
    Target("same: minibert int8 accuracy − fp32 accuracy (at most 0.5 point lost)", "inference-int8",
           {"model": "minilm", "data": "sst2-dev", "recipe": "dynamic"}, "mb8_acc_change", -0.005),
    Target("MiniLM embeddings of 300 SST-2 dev sentences, int8 as quantize() makes it: lowest cosine to fp32",
           "int8-matmuls", {"choice": "all int8"}, "cosine_min", 0.99),
    Target("fine-tuning step, SST-2 batches of 32 in file order, MiniLM fp32", "train",
           {"model": "minilm", "dtype": "fp32", "order": "file"}, "ratio", 1.3),
    Target("same, batches length-grouped as `minibert.finetune` makes them", "train",
           {"model": "minilm", "dtype": "fp32", "order": "grouped"}, "ratio", 1.3),
    Target("same, length-grouped, bf16 autocast", "train",
           {"model": "minilm", "dtype": "bf16", "order": "grouped"}, "ratio", 1.3),
    Target("same, length-grouped, fp32: the kernels issue's bar", "train",
           {"model": "minilm", "dtype": "fp32", "order": "grouped"}, "ratio", 1.15),
    *(Target(f"MLM training step, {model} {dtype}, length 128: minibert ÷ transformers (line by line, padded)",
             "pretrain", {"model": key, "dtype": dtype, "max length": 128}, "minibert vs transformers", 1.5)
      for model, key in (("MiniLM", "minilm"), ("bert-base", "base")) for dtype in ("fp32", "bf16")),
    *(Target(f"serve, {name} at 64 clients, minibert {how}: throughput ÷ {them}", "serve-ratios",
             {"data": data, "clients": 64, "precision": precision}, field, at_least)
      for data, name in (("sst2", "SST-2"), ("imdb", "IMDB"))
      for precision, how in (("bf16 autocast", "at its default precision (bf16 here)"), ("fp32", "fp32"))
      for field, them, at_least in (("vs_hf_fp32", "transformers, one forward per request (fp32)", 3.0),
                                    ("vs_hf_batched", "transformers behind our batcher, same precision", 1.5))),
    *(Target(f"serve, {name} at 64 clients, minibert --quantize int8: throughput ÷ transformers, one forward per "
             "request (fp32)", "serve-ratios", {"data": data, "clients": 64, "precision": "int8"}, "vs_hf_fp32", 3.0)
      for data, name in (("sst2", "SST-2"), ("imdb", "IMDB"))),
    *(Target(f"serve, {name} at 64 clients: transformers' p99 (fp32) ÷ minibert's at its default precision",
             "serve-ratios", {"data": data, "clients": 64, "precision": "bf16 autocast"}, "hf_p99_over_ours", 1.0)
      for data, name in (("sst2", "SST-2"), ("imdb", "IMDB"))),
    *(Target(f"serve, {name} at 1 client: transformers' p50 (fp32) ÷ minibert's (>= 0.83: latency within 1.2x)",
             "serve-ratios", {"data": data, "clients": 1, "precision": "bf16 autocast"}, "hf_p50_over_ours",
             round(1 / 1.2, 2))
      for data, name in (("sst2", "SST-2"), ("imdb", "IMDB"))),
    *(Target(f"serve --api, {name} at 64 clients: /v1/embeddings ÷ /embed texts/s (at most 5 % fewer)",
             "serve-api-embeddings", {"data": data, "clients": 64}, "ratio", 0.95)
      for data, name in (("sst2", "SST-2"), ("imdb", "IMDB"))),
    *(Target(f"serve --api, /rerank of 1 query x 32 SST-2 passages at 64 clients, minibert {how}: pairs/s ÷ "
             "sentence-transformers' CrossEncoder.rank behind FastAPI (fp32)", "serve-api-rerank",
             {"server": "minibert", "precision": precision, "clients": 64}, "vs_st", 2.0)
      for precision, how in (("bf16 autocast", "at its default precision (bf16 here)"), ("fp32", "fp32"))),
    Target("same, minibert at its default precision: sentence-transformers' p99 ÷ minibert's", "serve-api-rerank",
           {"server": "minibert", "precision": "bf16 autocast", "clients": 64}, "st_p99_over_ours", 1.0),
    Target("bert-base 8 x 128 forward, minibert's fraction of the fp32 matmul peak", "roofline",
           {"dtype": "fp32", "library": "minibert"}, "fraction_of_peak", 0.9),
    Target("same, bf16 weights", "roofline", {"dtype": "bf16 weights", "library": "minibert"}, "fraction_of_peak",
           0.85),
]


def render_targets(current: dict[str, list[tuple[dict, dict]]], numbers: dict[str, int]) -> str:
    """The targets against the current tables' rows: one line per target and machine, each run's figure with its
    number, met or missed."""
    lines = header_lines(["workload", "target", "figure [run]", "", "on"])
    for target in TARGETS:
        matches = [(run, row) for run, row in current[target.table]  # a run without the compared server has no figure
                   if all(row.get(k) == v for k, v in target.where.items()) and row.get(target.field) is not None]
        by_machine: dict[str, list[tuple[dict, dict]]] = {}
        for run, row in matches:
            by_machine.setdefault(short_machine(run), []).append((run, row))
        for where, found in by_machine.items():
            figures = "; ".join(f"{fmt(row[target.field])} [{numbers[run['file']]}]" for run, row in found)
            missed = [f"[{numbers[run['file']]}]" for run, row in found if row[target.field] < target.at_least]
            verdict = ("met" if not missed else "**missed**" if len(missed) == len(found)
                       else f"**missed** in {', '.join(missed)}")
            lines.append(row_line([target.workload, f">= {target.at_least:g}", figures, verdict, where]))
        if not matches:
            lines.append(row_line([target.workload, f">= {target.at_least:g}", "–", "not measured", ""]))
    return "\n".join(lines) + "\n"


def load_runs(folder: Path) -> list[dict]:
    """Every run recorded in `folder`, oldest first (by start time, then file name)."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        if "script" not in run or "machine" not in run:  # not a record of common.Run
            continue
        runs.append({**run, "file": path.name})
    return sorted(runs, key=lambda r: (r.get("started_utc") or "", r["file"]))


def machine_of(run: dict) -> tuple:
    """What makes two runs' figures comparable: the CPU (model, capability, native bf16), the GPU, the threads."""
    m = run["machine"]
    gpu = m.get("gpu") if str(run.get("args", {}).get("device", "cpu")).startswith("cuda") else None
    return m["cpu"], m["cpu_capability"], m["native_bf16"], gpu, m["threads"]


def short_machine(run: dict) -> str:
    """CPU model and capability (and the GPU of a CUDA run): the column that tells a table's machines apart."""
    gpu = machine_of(run)[3]
    return f"{run['machine']['cpu']}, {run['machine']['cpu_capability']}" + (f", {gpu}" if gpu else "")


def cpu_label(run: dict) -> str:
    m = run["machine"]
    flags = ", ".join(f for f in m.get("cpu_flags", []) if "bf16" in f or "vnni" in f or f.startswith("amx")) \
        or "no bf16 flags"
    label = f"{m['cpu']} ({m['cpu_capability']}; {flags}; native bf16: {'yes' if m['native_bf16'] else 'no'})"
    if m.get("isa_limits"):
        label += " run with " + " ".join(f"{k}={v}" for k, v in m["isa_limits"].items())
    return label + (f", GPU {machine_of(run)[3]}" if machine_of(run)[3] else "")


def threads_of(run: dict) -> str:
    n = run["machine"]["threads"]
    return f"{n} thread" + ("s" if n != 1 else "")


def run_line(number: int, run: dict) -> str:
    m = run["machine"]
    commit = f"`{run['commit']}`" + (" (uncommitted changes)" if run.get("dirty") else "")
    when = (run.get("started_utc") or "?").replace("T", " ").replace("Z", " UTC")
    load = f"load {m['load_avg_1m']}-{run.get('load_avg_1m_end', '?')} on {m['cores']} cores"
    return (f"- [{number}] `{run['command']}`: commit {commit}, {when}, {threads_of(run)}, {cpu_label(run)}, "
            f"torch {m['torch']}, transformers {m['transformers']}, {load}; `results/{run['file']}`")


def current_rows(table: Table, runs: list[dict]) -> list[tuple[dict, dict]]:
    """(run, row) for each configuration of `table`: the newest complete run's row, in run then row order."""
    newest: dict[tuple, tuple[int, int, dict, dict]] = {}
    for run_index, run in enumerate(runs):
        if run["script"] != table.script or not run.get("complete"):
            continue
        rows = [row for row in run["rows"] if table.where(row)]
        for row_index, row in enumerate(table.reshape(rows) if table.reshape else rows):
            key = machine_of(run) + tuple(row.get(k, run.get("args", {}).get(k, run.get(k))) for k in table.key)
            newest[key] = (run_index, row_index, run, row)
    chosen = sorted(newest.values(), key=lambda t: (t[0], t[1]))
    machines = list(dict.fromkeys(machine_of(run)[:4] for _, _, run, _ in chosen))  # grouped by CPU, then run order
    chosen.sort(key=lambda t: (machines.index(machine_of(t[2])[:4]), t[0], t[1]))
    return [(run, row) for _, _, run, row in chosen]


def render(table: Table, chosen: list[tuple[dict, dict]], numbers: dict[str, int]) -> str:
    """`table`'s current rows, each with the number of its run in the list of runs (and its CPU, where the table
    holds rows of more than one)."""
    if not chosen:
        return f"_No run recorded yet: `{table.run_hint}` fills this table._\n"
    several_machines = len({machine_of(run)[:4] for run, _ in chosen}) > 1
    lines = header_lines(["run"] + (["machine"] if several_machines else []) + [h for _, h in table.columns])
    for run, row in chosen:
        where = [short_machine(run)] if several_machines else []
        cells = [row.get(f, run.get(f, "")) for f, _ in table.columns]  # a field of the whole run (serve's workers)
        lines.append(row_line([f"[{numbers[run['file']]}]"] + where + cells))
    return "\n".join(lines) + "\n"


def render_runs(runs: list[dict], numbers: dict[str, int]) -> str:
    """The runs behind the current tables, oldest first, numbered as the tables' `run` column cites them."""
    return "\n".join(run_line(numbers[run["file"]], run) for run in runs if run["file"] in numbers) + "\n"


def render_history(runs: list[dict], numbers: dict[str, int]) -> str:
    """Every recorded run that no current table shows (superseded by a newer run, or cut short), one line per reason;
    each file holds its command, commit and machine."""
    scripts = {table.script for table in TABLES}
    why: dict[str, list[str]] = {}
    for run in runs:
        if run["file"] not in numbers:
            reason = ("cut short" if not run.get("complete")
                      else "superseded by a newer run" if run["script"] in scripts else "no table for its script")
            why.setdefault(reason, []).append(f"`{run['file']}`")
    if not why:
        return "_None: every recorded run is behind a current table._\n"
    return "\n".join(f"- {reason} ({len(files)}): {', '.join(files)}" for reason, files in why.items()) + "\n"


def generate(readme: str, runs: list[dict]) -> str:
    """`readme` with every generated block rewritten; an unknown block name or a table without one is an error."""
    current = {table.name: current_rows(table, runs) for table in TABLES}
    shown = {run["file"] for rows in current.values() for run, _ in rows}
    numbers = {run["file"]: n for n, run in enumerate((r for r in runs if r["file"] in shown), 1)}
    blocks = {table.name: render(table, current[table.name], numbers) for table in TABLES}
    blocks |= {"targets": render_targets(current, numbers), "runs": render_runs(runs, numbers),
               "history": render_history(runs, numbers)}
    found = {m.group(2) for m in BLOCK.finditer(readme)}
    if unknown := found - set(blocks):
        raise SystemExit(f"bench/README.md has generated blocks report.py does not know: {sorted(unknown)}; "
                         f"known: {sorted(blocks)}")
    if missing := set(blocks) - found:
        raise SystemExit(f"bench/README.md lacks the blocks {sorted(missing)}: add `<!-- generated:NAME -->` and "
                         "`<!-- end -->` lines where each table belongs")
    return BLOCK.sub(lambda m: m.group(1) + blocks[m.group(2)] + m.group(4), readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if README.md is out of date")
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    parser.add_argument("--readme", type=Path, default=BENCH / "README.md")
    args = parser.parse_args(argv)
    old = args.readme.read_text()
    new = generate(old, load_runs(args.results))
    if args.check:
        if new != old:
            print(f"{args.readme} is out of date with {args.results}: run `python bench/report.py`", file=sys.stderr)
            return 1
        print(f"{args.readme} matches {args.results}")
        return 0
    if new != old:
        args.readme.write_text(new)
    print(f"{'rewrote' if new != old else 'unchanged:'} {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
