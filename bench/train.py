"""Fine-tuning step throughput (samples/s) and peak memory on SST-2 batches, minibert vs transformers in one loop.

Each step: tokenise a batch of 32 SST-2 training sentences (dynamic padding), forward with labels, backward, AdamW
step (fused, over `minibert.train.param_groups`, as `minibert.finetune` runs it), zero_grad. Batches in file order
(`--order file`, much padding), or length-grouped as `python -m minibert.finetune` makes them (`--order grouped`,
little padding). Both models start from the same weights (MiniLM + a seeded classifier) and see the same batches;
steps of the two libraries are interleaved. Peak memory: the largest amount of live tensor
storage created during one forward + backward (activations, gradients; parameters and optimizer state, the same in
both, excluded).

`--profile` adds, per library, where a step's time goes (torch.profiler self time, ms per step, by kind of op):
what both must do (matmuls, the AdamW step) against what differs.

    python bench/train.py [--quick] [--model minilm] [--dtypes fp32,bf16] [--order file|grouped] [--profile]
"""

from __future__ import annotations

import argparse

import torch
from common import (
    Run,
    adamw,
    add_run_arguments,
    amp,
    batches,
    dtypes_to_run,
    interleaved,
    median,
    pair,
    peak_mb,
    setup,
    sst2,
    table,
    tokenizers,
)

from minibert.training_data import length_grouped_batches


def make_step(model, tok, groups, labels, dtype: str, ours: bool, device: str = "cpu"):
    optimizer = adamw(model, lr=2e-5)
    position = [0]

    def step(update: bool = True) -> float:
        i = position[0] % len(groups)
        position[0] += 1
        enc = tok(groups[i], padding="longest", truncation=True, max_length=128, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        y = labels[i].to(device)
        with amp(dtype, device):
            if ours:
                loss = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], labels=y).loss
            else:
                loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             token_type_ids=enc["token_type_ids"], labels=y).loss
        loss.backward()
        if update:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


# torch.profiler op names -> the kind of work they are (the first matching prefix wins)
KINDS = [("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
         ("attention", ("aten::_scaled_dot_product", "aten::_softmax", "aten::_softmax_backward")),
         ("optimizer", ("aten::_fused_adam", "Optimizer.")),
         ("zero fill", ("aten::fill_", "aten::zero_")),
         ("dropout", ("aten::bernoulli_", "aten::native_dropout")),
         ("norm, GELU", ("aten::native_layer_norm", "aten::gelu")),
         ("copies, casts", ("aten::copy_", "aten::_to_copy", "aten::index", "aten::cat", "aten::embedding"))]


def profile_kinds(step, steps: int) -> dict[str, float]:
    """ms per step of each kind of op (self CPU time), plus the rest and the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ms = dict.fromkeys([kind for kind, _ in KINDS] + ["other"], 0.0)
    for event in prof.key_averages():
        kind = next((k for k, prefixes in KINDS if event.key.startswith(prefixes)), "other")
        ms[kind] += event.self_cpu_time_total / 1e3 / steps
    return {**ms, "total": sum(ms.values())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4, help="steps per library per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--order", choices=["file", "grouped"], default="file")
    parser.add_argument("--profile", action="store_true", help="also print where each library's step time goes")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    setup(args.threads)
    run = Run("train", args)
    reps, steps = (1, 2) if args.quick else (args.reps, args.steps)
    hf_tok, our_tok = tokenizers(args.model)
    import csv

    from common import SHARED
    with open(SHARED / "data" / "sst2" / "train.tsv", newline="") as f:
        label_of = [int(r[1]) for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    n = args.batch * steps * (reps + 1)
    texts = sst2("train")
    if args.order == "file":
        order = list(range(n))
    else:  # the first n indices of minibert.finetune's first epoch over the whole training set
        lengths = [len(ids) for ids in our_tok(texts, truncation=True, max_length=128)["input_ids"]]
        order = [i for b in length_grouped_batches(lengths, args.batch, seed=0, epoch=0) for i in b][:n]
    groups = batches([texts[i] for i in order], args.batch)
    labels = [torch.tensor(g) for g in batches([label_of[i] for i in order], args.batch)]
    profiles = []
    for dtype in dtypes_to_run(args.dtypes, args):
        ref, ours = (m.to(args.device) for m in pair(args.model, num_labels=2, train=True))
        fns = {"transformers": make_step(ref, hf_tok, groups, labels, dtype, False, args.device),
               "minibert": make_step(ours, our_tok, groups, labels, dtype, True, args.device)}
        for fn in fns.values():  # warm-up: creates the optimizer state
            fn()
        # forward + backward only: activations, gradients and the step's temporaries; AdamW's update (identical in
        # both libraries, and the largest transient when it comes) would otherwise hide the difference
        memory = {k: peak_mb(lambda fn=fn: fn(update=False)) for k, fn in fns.items()}
        times = interleaved({k: (lambda fn=fn: [fn() for _ in range(steps)]) for k, fn in fns.items()}, reps, 0)
        rate = {k: args.batch * steps / median(v) for k, v in times.items()}
        run.add(dict(model=args.model, dtype=dtype, batch=args.batch, order=args.order,
                     hf_samples_s=rate["transformers"], mb_samples_s=rate["minibert"],
                     ratio=rate["minibert"] / rate["transformers"],
                     hf_peak_mb=memory["transformers"], mb_peak_mb=memory["minibert"],
                     memory_ratio=memory["minibert"] / memory["transformers"]), COLUMNS)
        if args.profile:
            kinds = {k: profile_kinds(fn, steps) for k, fn in fns.items()}
            profiles.append({"dtype": dtype, **kinds})
            print(table([{"kind": kind, **{f"{lib} ms/step": kinds[lib][kind] for lib in kinds}}
                         for kind in kinds["minibert"]], ["kind"] + [f"{lib} ms/step" for lib in kinds]), flush=True)
    print("\nfine-tuning steps, samples/s (median of interleaved repetitions) and peak live tensor memory\n")
    print(table(run.rows, COLUMNS))
    run.finish(profiles=profiles, reps=reps, steps=steps)


COLUMNS = ["model", "dtype", "batch", "order", "hf_samples_s", "mb_samples_s", "ratio", "hf_peak_mb", "mb_peak_mb",
           "memory_ratio"]

if __name__ == "__main__":
    main()
