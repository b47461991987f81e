"""Attention kernels alone, and the whole encoder forward per kernel, over batch x length grids, fp32 and bf16.

Grids: uniform lengths 32 / 128 / 512, and SST-2-like and IMDB-like length mixes (real lengths of the first
sentences of SST-2 dev and of an IMDB sample, tokenised), padded to the batch's longest ("dynamic") or to 128
("classic"). For each: median time, real tokens/s, max |difference| vs `math`, and peak live tensor memory.

Besides the kernels of the package this times two other ways to run attention on packed tokens, which lost:
`unpadded-padmax` (scatter the packed tokens into (b, longest, h, d) and run one masked SDPA call) and
`unpadded-nested` (torch nested jagged tensors through SDPA). And it times the fused q/k/v projection against three
separate ones. Last, the crossover: from which fraction of padding packing pays in a training step, the number
behind `attn_impl="auto"`'s rule; and, in bf16, from which size of the score matrix `sdpa` beats `math`.

    python bench/attention_kernels.py [--quick] [--only crossover,low-precision]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import (
    Run,
    add_run_arguments,
    bf16_allowed,
    dtypes_to_run,
    imdb,
    interleaved,
    median,
    peak_mb,
    setup,
    sst2,
    table,
    tokenizers,
)
from einops import rearrange

import minibert
from minibert.attention import KERNELS
from minibert.config import BertConfig
from minibert.padding import Packing, packing_from_mask, repad, unpad


def padmax_attention(q, k, v, packing: Packing, dropout_p: float, scale: float) -> torch.Tensor:
    """Packed (n, h, d) -> scattered into (b, longest, h, d) -> one masked SDPA -> gathered back."""
    longest, batch = packing.max_seqlen, packing.batch
    rows = torch.repeat_interleave(torch.arange(batch), torch.tensor(packing.seqlens))
    cols = torch.arange(len(rows)) - packing.cu_seqlens[:-1].long()[rows]
    index = rows * longest + cols
    key_mask = torch.zeros(batch * longest, dtype=torch.bool).index_fill(0, index, True).view(batch, longest)
    padded = [x.new_zeros(batch * longest, *x.shape[1:]).index_copy(0, index, x) for x in (q, k, v)]
    padded = [rearrange(x, "(b t) h d -> b h t d", b=batch) for x in padded]
    bias = (~key_mask[:, None, None, :]).to(q.dtype) * torch.finfo(q.dtype).min
    out = F.scaled_dot_product_attention(*padded, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return rearrange(out, "b h t d -> (b t) h d")[index]


def nested_attention(q, k, v, packing: Packing, dropout_p: float, scale: float) -> torch.Tensor:
    offsets = packing.cu_seqlens.long()
    nq, nk, nv = (torch.nested.nested_tensor_from_jagged(x, offsets).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(nq, nk, nv, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2).values()


def unpadded(q, k, v, packing: Packing, dropout_p: float, scale: float) -> torch.Tensor:
    return KERNELS["unpadded"](q, k, v, None, dropout_p, scale, packing=packing)[0]


VARIANTS = {"unpadded": unpadded, "unpadded-padmax": padmax_attention,
            "unpadded-nested": nested_attention}


def grids(quick: bool) -> dict[str, list[int] | tuple[list[int], int]]:
    """name -> (lengths of the batch, padded length)."""
    _, tok = tokenizers("minilm")

    def lengths(texts):
        return [len(ids) for ids in tok(texts, truncation=True, max_length=512)["input_ids"]]

    sst = lengths(sst2("dev", 32))
    im = lengths(imdb(8))
    out = {"uniform 32x32": ([32] * 32, 32), "uniform 8x128": ([128] * 8, 128),
           "sst2 32 dynamic": (sst, max(sst)), "sst2 16 classic-128": ([min(n, 128) for n in sst[:16]], 128),
           "imdb 8 dynamic": (im, max(im))}
    if not quick:
        out["uniform 2x512"] = ([512] * 2, 512)
    return out


def mask_of(lengths: list[int], seq_len: int) -> torch.Tensor:
    return torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]


def bench_attention(run: Run, grid, dtypes, reps) -> None:
    heads, dim = 12, 32  # MiniLM's
    for name, (lengths, seq_len) in grid.items():
        mask = mask_of(lengths, seq_len)
        packing = packing_from_mask(mask)
        for dtype in dtypes:
            torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(len(lengths), heads, seq_len, dim, generator=g).to(torch_dtype) for _ in range(3))
            packed = [unpad(rearrange(x, "b h t d -> b t h d"), packing) for x in (q, k, v)]
            fns = {kname: (lambda f=f: f(q, k, v, mask, 0.0, dim**-0.5)[0]) for kname, f in KERNELS.items()}  # noqa: B023 (called within this iteration)
            fns.update({kname: (lambda f=f: f(*packed, packing, 0.0, dim**-0.5)) for kname, f in VARIANTS.items()})  # noqa: B023 (called within this iteration)
            with torch.no_grad():  # not inference_mode: nested tensors refuse inference tensors
                ref = fns["math"]().float()
                keep = rearrange(mask, "b t -> b 1 t 1").expand_as(ref)
                times = interleaved(fns, reps, warmup=1)
                for kname, fn in fns.items():
                    out = fn().float()
                    if kname.startswith("unpadded"):
                        out = rearrange(repad(out, packing), "b t h d -> b h t d")
                    run.add(dict(part="attention", grid=name, dtype=dtype, kernel=kname,
                                 ms=median(times[kname]) * 1e3,
                                 tokens_per_s=packing.total / median(times[kname]),
                                 max_diff_vs_math=(out - ref)[keep].abs().max().item(),
                                 peak_mb=peak_mb(fn)), COLUMNS)


def same_weight_encoders(impls: tuple[str, ...], train: bool) -> dict[str, minibert.BertModel]:
    """One MiniLM-shaped BertModel per attn_impl, all with the same seeded random weights."""
    config = BertConfig.from_json(minibert_config())
    torch.manual_seed(0)
    models = {impl: minibert.BertModel(config, attn_impl=impl).train(train) for impl in impls}
    for model in models.values():
        model.load_state_dict(models[impls[0]].state_dict())
    return models


def bench_encoder(run: Run, grid, dtypes, reps) -> None:
    models = same_weight_encoders(("math", "sdpa", "unpadded"), train=False)
    for name, (lengths, seq_len) in grid.items():
        mask = mask_of(lengths, seq_len).long()
        ids = torch.randint(1000, 30000, mask.shape) * mask
        for dtype in dtypes:
            fns = {impl: (lambda m=m: m(ids, mask).last_hidden_state) for impl, m in models.items()}  # noqa: B023 (called within this iteration)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                ref = fns["math"]().float()
                times = interleaved(fns, reps, warmup=1)
                for impl, fn in fns.items():
                    run.add(dict(part="encoder", grid=name, dtype=dtype, kernel=impl,
                                 ms=median(times[impl]) * 1e3,
                                 tokens_per_s=int(mask.sum()) / median(times[impl]),
                                 max_diff_vs_math=(fn().float() - ref)[mask.bool()].abs().max().item(),
                                 peak_mb=peak_mb(fn)), COLUMNS)


def bench_qkv(run: Run, reps) -> None:
    """One (hidden -> 3 hidden) matmul against three (hidden -> hidden) ones, on SST-2-sized packed tokens."""
    for hidden, tokens in ((384, 712), (768, 712), (768, 1024)):
        x = torch.randn(tokens, hidden)
        fused = torch.nn.Linear(hidden, 3 * hidden)
        separate = [torch.nn.Linear(hidden, hidden) for _ in range(3)]
        fns = {"fused": lambda: fused(x), "separate": lambda: [lin(x) for lin in separate]}  # noqa: B023 (called within this iteration)
        with torch.inference_mode():
            times = interleaved(fns, reps * 3, warmup=2)
        for impl in fns:
            run.add(dict(part="qkv", grid=f"{tokens} tokens x {hidden}", dtype="fp32", kernel=impl,
                         ms=median(times[impl]) * 1e3, tokens_per_s=tokens / median(times[impl])), COLUMNS)


def bench_crossover(run: Run, dtypes, reps) -> None:
    """Where packing starts to pay: a MiniLM training forward + backward on batches of 32 whose lengths are spread
    evenly below the longest, so that a given share of the batch is padding, per kernel. The per-sequence attention
    calls of `unpadded` cost a fixed amount per sequence; what packing saves grows with the padding per sequence;
    `auto` packs from `AUTO_MIN_PADDING_PER_SEQUENCE` (float32) or `..._LOW_PRECISION` (bf16) padding positions per
    sequence on."""
    models = same_weight_encoders(("sdpa", "unpadded", "auto"), train=True)
    for longest in (32, 64, 128):
        for fraction in (0.05, 0.1, 0.2, 0.4):
            shortest = round(longest * (1 - 2 * fraction))
            lengths = [round(longest - (longest - shortest) * i / 31) for i in range(32)]
            mask = mask_of(lengths, longest).long()
            ids = torch.randint(1000, 30000, mask.shape) * mask
            per_sequence = (mask.numel() - int(mask.sum())) / len(lengths)
            for dtype in dtypes:
                def step(model):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):  # noqa: B023
                        model(ids, mask).last_hidden_state.float().square().mean().backward()  # noqa: B023
                fns = {impl: (lambda m=m: step(m)) for impl, m in models.items()}
                times = interleaved(fns, reps, warmup=1)
                for impl in fns:
                    run.add(dict(part="crossover", grid=f"32 x {longest}, {per_sequence:.1f} padding/sequence",
                                 dtype=dtype, kernel=impl, ms=median(times[impl]) * 1e3,
                                 tokens_per_s=int(mask.sum()) / median(times[impl])), COLUMNS)


def bench_low_precision(run: Run, reps) -> None:
    """The padded kernels in bf16 on CPU: `math` (bf16 matmuls, float32 softmax) against `sdpa`, inference and
    training (dropout 0.1, forward + backward), for MiniLM's and bert-base's head sizes, a quarter of each batch's
    sequences a quarter shorter. `scores` = batch x heads x longest², the size of the score matrix `math`
    materialises: the number behind `attention.AUTO_MATH_MAX_SCORES`."""
    heads = 12
    for dim, batch, lengths in ((32, 32, (16, 32, 64, 128, 256)), (64, 8, (64, 128, 256, 512))):
        for seq_len in lengths:
            mask = torch.ones(batch, seq_len, dtype=torch.bool)
            mask[: batch // 4, seq_len - seq_len // 4:] = False
            for train in (False, True):
                g = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(batch, heads, seq_len, dim, generator=g, dtype=torch.bfloat16)
                           .requires_grad_(train) for _ in range(3))

                def call(kernel):
                    if train:  # noqa: B023
                        kernel(q, k, v, mask, 0.1, dim**-0.5)[0].float().sum().backward()  # noqa: B023
                    else:
                        with torch.no_grad():
                            kernel(q, k, v, mask, 0.0, dim**-0.5)  # noqa: B023
                fns = {name: (lambda f=KERNELS[name]: call(f)) for name in ("math", "sdpa")}
                times = interleaved(fns, reps, warmup=1)
                for name in fns:
                    run.add(dict(part="low-precision", grid=f"{batch}x{heads}x{seq_len}, d {dim}"
                                 + (", train" if train else ""), dtype="bf16", kernel=name,
                                 ms=median(times[name]) * 1e3, scores=batch * heads * seq_len * seq_len,
                                 math_over_sdpa=median(times["math"]) / median(times["sdpa"])), LOW_PRECISION_COLUMNS)


def minibert_config():
    from common import MINILM

    return MINILM / "config.json"


COLUMNS = ["part", "grid", "dtype", "kernel", "ms", "tokens_per_s", "max_diff_vs_math", "peak_mb"]
LOW_PRECISION_COLUMNS = COLUMNS[:5] + ["scores", "math_over_sdpa"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--only", default="", help="comma-separated parts: attention, encoder, qkv, crossover, "
                        "low-precision")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    setup(args.threads)
    run = Run("attention_kernels", args)
    reps = 2 if args.quick else args.reps
    start = time.perf_counter()
    dtypes = dtypes_to_run(args.dtypes, args)
    parts = {"attention": lambda: bench_attention(run, grids(args.quick), dtypes, reps),
             "encoder": lambda: bench_encoder(run, grids(args.quick), dtypes, max(2, reps // 2)),
             "qkv": lambda: bench_qkv(run, reps),
             "crossover": lambda: bench_crossover(run, dtypes, max(3, reps // 2)),
             "low-precision": lambda: bench_low_precision(run, reps)}
    for name in args.only.split(",") if args.only else parts:
        if name != "low-precision" or "bf16" in dtypes or bf16_allowed(args, "the low-precision part (bf16 only)"):
            parts[name]()
    print(f"\n(ms: median of interleaved repetitions; {time.perf_counter() - start:.0f} s in all)\n")
    print(table(run.rows, COLUMNS + (LOW_PRECISION_COLUMNS[5:] if any("scores" in r for r in run.rows) else [])))
    run.finish(reps=reps)


if __name__ == "__main__":
    main()
