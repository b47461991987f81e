"""End-to-end classification (tokenise + forward) of SST-2 dev and an IMDB sample, minibert vs transformers.

Same checkpoint, same batches, each library with its own tokenizer; both under the same torch threads, timed
interleaved. Recipes:
    classic   pad every sentence to 128 tokens, batch 16 (the recipe of most tutorials)
    dynamic   pad each batch to its longest sentence, batch 32, in file order
    sorted    dynamic, but batches of length-sorted sentences (SST-2 only: padding all but gone)
minibert runs attn_impl="auto" (what a user gets by default); transformers its default (sdpa). With --ort, ONNX
Runtime joins the fp32 rows: transformers' model exported and fused as CPU deployments run it (onnx_engine.py).

With --ort, the fp32 rows also time int8: ORT's `quantize_dynamic` of the fused graph, and minibert's
`model.quantize("int8")` (minibert/quantize.py); with --classifier, each engine's SST-2 dev accuracy sits beside.

    python bench/inference.py [--quick] [--models minilm,bert-base] [--dtypes fp32,bf16] [--ort] [--classifier DIR]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import transformers
from common import (
    Run,
    add_run_arguments,
    amp,
    batches,
    dtypes_to_run,
    imdb,
    interleaved,
    median,
    pair,
    setup,
    sst2,
    sst2_labels,
    table,
    tokenizers,
)

import minibert

RECIPES = {"classic": dict(padding="max_length", max_length=128, batch=16),
           "dynamic": dict(padding="longest", max_length=512, batch=32),
           "sorted": dict(padding="longest", max_length=512, batch=32)}


def make_pass(model, tok, texts: list[str], recipe: str, dtype: str, engine: str, device: str = "cpu"):
    """One timed pass over `texts` in `recipe`'s batches: tokenise + forward; engine "hf", "mb" or "ort"."""
    spec = RECIPES[recipe]
    groups = batches(texts, spec["batch"])

    def run(limit: int | None = None) -> list[torch.Tensor]:
        logits = []
        with torch.inference_mode(), amp(dtype, device):
            for group in groups[:limit]:
                enc = tok(group, padding=spec["padding"], truncation=True, max_length=spec["max_length"],
                          return_tensors="pt")
                enc = {k: v.to(device) for k, v in enc.items()}
                if engine.startswith("ort"):
                    logits.append(model.logits(enc))
                elif engine.startswith("mb"):
                    logits.append(model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).logits.float())
                else:
                    logits.append(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                        token_type_ids=enc["token_type_ids"]).logits.float())
        return logits

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few batches, one repetition: a smoke run")
    parser.add_argument("--models", default="minilm,bert-base")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (dynamic shapes); the "
                        "compile time (first calls) is reported apart, in compile_s")
    parser.add_argument("--batch-scale", type=int, default=1, help="multiply both recipes' batch sizes (GPU)")
    parser.add_argument("--ort", action="store_true", help="add ONNX Runtime (fused export of transformers' model) "
                        "to the fp32 rows, and int8 columns: ORT's quantize_dynamic of that graph and minibert's "
                        "model.quantize('int8'); needs the bench extra")
    parser.add_argument("--classifier", help="a fine-tuned MiniLM SST-2 classifier folder in place of MiniLM with a "
                        "random head: each engine's accuracy on the SST-2 dev sentences is reported")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sst2", type=int, default=192, help="first N SST-2 dev sentences (MiniLM; bert-base: N/3)")
    parser.add_argument("--imdb", type=int, default=32, help="IMDB reviews sampled (MiniLM; bert-base: N/4)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    setup(args.threads)
    run = Run("inference", args)
    dtypes = dtypes_to_run(args.dtypes, args)
    reps = 1 if args.quick else args.reps
    for spec in RECIPES.values():
        spec["batch"] *= args.batch_scale
    hf_tok, our_tok = tokenizers("minilm")
    for name in args.models.split(","):
        shrink = 1 if name == "minilm" else 3
        n_sst2 = 64 if args.quick else args.sst2 // shrink
        n_imdb = 8 if args.quick else max(8, args.imdb // (1 if name == "minilm" else 4))
        data = {"sst2-dev": sst2("dev", n_sst2), "imdb": imdb(n_imdb)}
        if args.classifier and name == "minilm":
            ref = transformers.BertForSequenceClassification.from_pretrained(args.classifier).eval()
            ours = minibert.BertForSequenceClassification.from_pretrained(args.classifier)
            ref, ours = ref.to(args.device), ours.to(args.device)
        else:
            ref, ours = (m.to(args.device) for m in pair(name, num_labels=2))
        ort = ort8 = ours8 = None
        if args.ort and "fp32" in dtypes:
            from onnx_engine import OrtClassifier

            ort = OrtClassifier(ref, torch.get_num_threads())
            ort8 = OrtClassifier(ref, torch.get_num_threads(), int8=True)
            ours8 = copy.deepcopy(ours).quantize("int8")
            print(f"{name}: ONNX Runtime model fused {ort.fused}", flush=True)
        if args.compile:  # minibert's auto runs padded sdpa inside a compiled graph (packing is data-dependent)
            ref, ours = torch.compile(ref, dynamic=True), torch.compile(ours, dynamic=True)
        for dtype in dtypes:
            for data_name, texts in data.items():
                print(f"{name} {data_name} {dtype}: {len(texts)} texts, warm-up and {reps} repetitions", flush=True)
                by_length = sorted(texts, key=lambda s: len(hf_tok.tokenize(s)))
                recipes = ("classic", "dynamic", "sorted") if data_name == "sst2-dev" else ("classic", "dynamic")
                engines = {"hf": (ref, hf_tok), "mb": (ours, our_tok)}
                if ort is not None and dtype == "fp32":
                    engines.update(ort=(ort, hf_tok), ort8=(ort8, hf_tok), mb8=(ours8, our_tok))
                fns = {f"{engine} {recipe}": make_pass(model, tok, by_length if recipe == "sorted" else texts, recipe,
                                                       dtype, engine, args.device)
                       for recipe in recipes for engine, (model, tok) in engines.items()}
                compile_s = {}
                for k, f in fns.items():  # warm-up on the first batches; with --compile, this is the compile time
                    start = time.perf_counter()
                    f(2)
                    compile_s[k] = time.perf_counter() - start
                # the same predictions: agreement of argmax, and the largest logit difference (fp32: ~1e-6)
                a, b = fns["hf dynamic"](2), fns["mb dynamic"](2)
                diff = max((x - y).abs().max().item() for x, y in zip(a, b))
                agree = float(torch.cat([x.argmax(-1) == y.argmax(-1) for x, y in zip(a, b)]).float().mean())
                if "ort dynamic" in fns:
                    c = fns["ort dynamic"](2)
                    ort_diff = max((x - y).abs().max().item() for x, y in zip(a, c))
                # every text in file order, per engine: int8's argmax agreement with fp32, accuracy with labels
                full = {e: torch.cat(fns[f"{e} dynamic"](None)).argmax(-1) for e in engines}
                quality = {f"{e}_agree": float((full[e] == full[e[:-1]]).float().mean()) for e in full if e[-1] == "8"}
                if args.classifier and name == "minilm" and data_name == "sst2-dev":
                    gold = torch.tensor(sst2_labels("dev", len(texts)))
                    quality.update({f"acc_{e}": float((p.cpu() == gold).float().mean()) for e, p in full.items()})
                times = interleaved({k: (lambda f=f: f(None)) for k, f in fns.items()}, reps, warmup=0)
                rate = {k: len(texts) / median(v) for k, v in times.items()}
                for recipe in recipes:
                    row = dict(model=name, data=data_name, n=len(texts), dtype=dtype, recipe=recipe,
                               hf=rate[f"hf {recipe}"], mb=rate[f"mb {recipe}"],
                               ratio=rate[f"mb {recipe}"] / rate[f"hf {recipe}"],
                               hf_sorted=rate.get("hf sorted", float("nan")),
                               mb_vs_hf_sorted=rate[f"mb {recipe}"] / rate.get("hf sorted", float("nan")),
                               max_logit_diff=diff, argmax_agree=agree, compiled=args.compile,
                               hf_compile_s=compile_s[f"hf {recipe}"], mb_compile_s=compile_s[f"mb {recipe}"])
                    if f"ort {recipe}" in fns:
                        row.update(ort=rate[f"ort {recipe}"], mb_vs_ort=rate[f"mb {recipe}"] / rate[f"ort {recipe}"],
                                   ort_max_logit_diff=ort_diff, ort_fused=ort.fused, ort8=rate[f"ort8 {recipe}"],
                                   mb8=rate[f"mb8 {recipe}"],
                                   mb8_vs_ort8=rate[f"mb8 {recipe}"] / rate[f"ort8 {recipe}"],
                                   mb8_vs_mb=rate[f"mb8 {recipe}"] / rate[f"mb {recipe}"])
                    row.update(quality)
                    run.add(row, COLUMNS)
    print("\nsentences/s (median of interleaved repetitions; tokenise + forward)\n")
    print(table(run.rows, COLUMNS))
    run.finish(reps=reps)


COLUMNS = ["model", "data", "n", "dtype", "recipe", "hf", "mb", "ratio", "hf_sorted", "mb_vs_hf_sorted",
           "max_logit_diff", "argmax_agree", "ort", "mb_vs_ort", "ort8", "mb8", "mb8_vs_ort8", "acc_hf", "acc_ort8",
           "acc_mb", "acc_mb8", "mb8_agree", "ort8_agree"]

if __name__ == "__main__":
    main()
