"""MLM pre-training step throughput (real tokens/s), minibert vs transformers, on the same IMDB unlabelled text.

transformers, as people run it (`run_mlm.py --line_by_line`): each review tokenised and truncated to --max-length,
batches padded by `DataCollatorForLanguageModeling` (which masks them), `BertForMaskedLM` with sdpa attention and the
decoder over every position. minibert, as `python -m minibert.pretrain` runs it: the same reviews packed into
sequences of exactly --max-length tokens (no padding), masked by `MaskedSequences.collate`, the decoder on the
masked positions only (`masked_only=True`). Both start from the same weights (MiniLM's encoder, the same MLM head)
and take fused AdamW steps; the steps of the two are interleaved. Tokenisation is done once beforehand for both
(datasets.map / minibert's cache); masking and collation are inside the timed step.

Throughput counts the real tokens of a batch (padding excluded) per second of step. A third row,
"transformers packed", feeds transformers the same packed batches, to separate what packing buys from what the
sparse decoder buys. `of peak`: the step's useful matmul work (forward and backward, 3x the forward's 2·m·n·k: the
encoder over real tokens, attention over each sequence's real length, the MLM head over the masked positions only)
per second, as a fraction of this machine's matmul peak in that dtype (roofline.py's measurement). Work a library
does on padding or on unmasked positions does not count, so the fractions compare like with like.

    python bench/pretrain.py [--quick] [--models minilm,base] [--dtypes fp32,bf16] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import gzip

import torch
from common import SHARED, adamw, amp, interleaved, median, pair, setup, table, tokenizers, write_json
from roofline import matmul_peak

from minibert.devices import cpu_has_bf16
from minibert.documents import pack, tokenize_documents
from minibert.masking import MaskedSequences, Masker


def reviews(n: int) -> list[str]:
    with gzip.open(SHARED / "data" / "imdb" / "unsup.txt.gz", "rt", encoding="utf-8") as f:
        out = []
        for line in f:
            if line.strip():
                out.append(line.strip())
            if len(out) == n:
                return out
    return out


def bf16_reason() -> str | None:
    """Why bf16 rows are skipped here, or None when this CPU computes bf16 natively."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return None
    if cpu_has_bf16():
        return None
    return (f"no native bf16 on this CPU (torch capability {torch.backends.cpu.get_cpu_capability()}, no "
            "avx512_bf16/amx_bf16 in /proc/cpuinfo): bf16 would be emulated and slow")


def useful_flops(config, lengths: list[int], masked: int) -> float:
    """Training FLOPs (3x forward) of the matmuls a step needs: sequences of `lengths` real tokens, `masked`
    positions through the MLM head (transform h x h, decoder h x vocab)."""
    h, f, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    tokens = sum(lengths)
    encoder = layers * (2 * tokens * (4 * h * h + 2 * h * f) + 4 * h * sum(n * n for n in lengths))
    return 3 * (encoder + 2 * masked * (h * h + h * vocab))


def batch_work(config, batch: dict) -> tuple[int, float]:
    """(real tokens, useful FLOPs) of a batch: rows of real tokens by its attention mask (all real when packed)."""
    ids = batch["input_ids"]
    lengths = batch["attention_mask"].sum(1).tolist() if "attention_mask" in batch else [ids.shape[1]] * len(ids)
    return sum(lengths), useful_flops(config, lengths, int((batch["labels"] != -100).sum()))


def ours_step(model, data: MaskedSequences, batch_size: int, dtype: str):
    optimizer = adamw(model, lr=1e-4)
    batches = data.epoch_batches(batch_size, 0, 0)
    position = [0]

    def step() -> int:
        i = position[0] % len(batches)
        position[0] += 1
        batch = data.collate(batches[i], (0, 0, i))
        with amp(dtype):
            loss = model(**batch, masked_only=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch_work(model.config, batch)

    return step


def hf_step(model, examples: list[dict], collator, batch_size: int, dtype: str):
    optimizer = adamw(model, lr=1e-4)
    position = [0]

    def step() -> int:
        i = position[0] % (len(examples) // batch_size)
        position[0] += 1
        batch = collator(examples[i * batch_size:(i + 1) * batch_size])
        with amp(dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch_work(model.config, batch)

    return step


def counted(step, work: list[tuple[int, float]]):
    return lambda: work.append(step())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--reviews", type=int, default=300)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 timed steps per row")
    args = parser.parse_args()
    setup(args.threads)
    import transformers

    reps = 3 if args.quick else args.reps
    hf_tok, our_tok = tokenizers("minilm")
    texts = reviews(args.reviews)
    # transformers: line by line, truncated, padded per batch by the collator (which also masks)
    enc = hf_tok(texts, truncation=True, max_length=args.max_length, return_special_tokens_mask=True)
    examples = [{k: enc[k][i] for k in enc} for i in range(len(texts))]
    collator = transformers.DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15)
    # minibert: the same reviews packed
    seqs = pack(tokenize_documents(texts, our_tok), args.max_length, our_tok.cls_token_id, our_tok.sep_token_id)
    data = MaskedSequences(seqs, Masker.for_tokenizer(our_tok, 0.15))
    packed_examples = [{"input_ids": s.tolist()} for s in seqs]
    real = sum(len(e["input_ids"]) for e in examples) / len(examples)
    print(f"{len(texts)} reviews: line by line {real:.1f} real tokens per example (max {args.max_length}); packed "
          f"{len(seqs)} sequences of {args.max_length}", flush=True)

    rows = []
    reason = bf16_reason()
    dtypes = [d for d in args.dtypes.split(",") if not (d == "bf16" and reason)]
    if len(dtypes) < len(args.dtypes.split(",")):
        print(f"skipped the bf16 rows: {reason}", flush=True)
    peaks = {d: matmul_peak(torch.float32 if d == "fp32" else torch.bfloat16, 4) for d in dtypes}
    for d, (gflops, shape) in peaks.items():
        print(f"{d} matmul peak: {gflops:.0f} GFLOP/s at {shape}", flush=True)
    for name in args.models.split(","):
        for dtype in dtypes:
            overrides = {} if name == "minilm" else {"vocab_size": len(our_tok)}
            ref, ours = pair(name, "BertForMaskedLM", train=True, **overrides)
            ref_packed, _ = pair(name, "BertForMaskedLM", train=True, **overrides)
            steps = {"minibert": ours_step(ours, data, args.batch_size, dtype),
                     "transformers": hf_step(ref, examples, collator, args.batch_size, dtype),
                     "transformers packed": hf_step(ref_packed, packed_examples, collator, args.batch_size, dtype)}
            work = {k: [] for k in steps}

            times = interleaved({k: counted(step, work[k]) for k, step in steps.items()}, reps)
            for k in steps:
                timed = work[k][-reps:]  # every row's batches hold about the same number of tokens
                rate = sum(n for n, _ in timed) / sum(times[k])
                gflops = sum(f for _, f in timed) / sum(times[k]) / 1e9
                row = {"model": name, "dtype": dtype, "max length": args.max_length, "library": k,
                       "ms/step": 1000 * median(times[k]), "tokens/step": timed[-1][0], "tokens/s": rate,
                       "useful GFLOP/s": gflops, "of peak": gflops / peaks[dtype][0]}
                rows.append(row)
                print(f"{name} {dtype} {k}: {row['ms/step']:.0f} ms/step, {rate:.0f} tokens/s, "
                      f"{row['of peak']:.0%} of the {dtype} matmul peak", flush=True)
            ours_rate, hf_rate = rows[-3]["tokens/s"], rows[-2]["tokens/s"]
            print(f"{name} {dtype}: minibert / transformers = {ours_rate / hf_rate:.2f}x", flush=True)
            for r in rows[-3:]:
                r["vs transformers"] = r["tokens/s"] / hf_rate
    print(table(rows, ["model", "dtype", "max length", "library", "ms/step", "tokens/step", "tokens/s",
                       "vs transformers", "useful GFLOP/s", "of peak"]))
    peak_info = {d: {"gflops": g, "at": at} for d, (g, at) in peaks.items()}
    print(f"results in {write_json('pretrain', {'rows': rows, 'args': vars(args), 'matmul_peak': peak_info})}")


if __name__ == "__main__":
    main()
