"""What a long document costs: IMDB reviews of about 1,200 tokens read as head+tail (one 512-token sequence) or as
chunks (512-token windows overlapping by 128, logits averaged per document), minibert against transformers.

Both libraries get the same reviews, the same windows (each library's own tokenizer: identical ids) and the same
weights (MiniLM with a seeded 2-class head). minibert: `minibert.long_text.encode_long` + `pool_windows`, batches
right-padded to their longest sequence, `attn_impl="auto"` (the windows of a document are just more rows of a
packed batch: the short last window costs its own length). transformers: the tokenizer's
`return_overflowing_tokens=True, stride=128` and `overflow_to_sample_mapping`, padded batches, sdpa; head+tail cut
by hand from the untruncated ids, as people write it. Timed per document: tokenise + forward (+ pooling) for
`predict`, forward + backward of the windows' cross-entropy for `train` (the optimizer step costs the same for
both strategies and is left out).

    python bench/long_text.py [--docs 4] [--batch-docs 2] [--dtypes fp32,bf16] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from common import Run, add_run_arguments, amp, dtypes_to_run, imdb, interleaved, median, pair, setup, tokenizers

from minibert.long_text import SUN_ET_AL_HEAD, encode_long, pool_windows

MAX_LENGTH, STRIDE = 512, 128


def long_reviews(tok, n: int, low: int = 1100, high: int = 1300) -> list[str]:
    """The first n of a fixed sample of IMDB training reviews whose WordPiece length lies in [low, high]."""
    found = [t for t in imdb(4000, seed=1) if low <= len(tok.tokenize(t)) <= high]
    if len(found) < n:
        raise SystemExit(f"only {len(found)} reviews of {low}-{high} tokens in the sample; lower --docs")
    return found[:n]


def padded(input_ids: list[list[int]], token_type_ids: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    width = max(map(len, input_ids))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in input_ids])
    types = torch.tensor([r + [0] * (width - len(r)) for r in token_type_ids])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in input_ids])
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def minibert_batch(tok, texts: list[str], how: str) -> tuple[dict, torch.Tensor]:
    enc = encode_long(tok, texts, max_length=MAX_LENGTH, how=how, head=SUN_ET_AL_HEAD, stride=STRIDE)
    return padded(enc.input_ids, enc.token_type_ids, tok.pad_token_id), torch.tensor(enc.doc_index)


def transformers_batch(tok, texts: list[str], how: str) -> tuple[dict, torch.Tensor]:
    if how == "chunks":
        enc = tok(texts, truncation=True, max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True,
                  padding=True, return_tensors="pt")
        doc_index = enc.pop("overflow_to_sample_mapping")
        return dict(enc), doc_index
    tail = MAX_LENGTH - 2 - SUN_ET_AL_HEAD
    ids = [[tok.cls_token_id, *(i[:SUN_ET_AL_HEAD] + i[-tail:] if len(i) > MAX_LENGTH - 2 else i), tok.sep_token_id]
           for i in tok(texts, add_special_tokens=False)["input_ids"]]
    return padded(ids, [[0] * len(i) for i in ids], tok.pad_token_id), torch.arange(len(texts))


def make_pass(model, tok, groups: list[list[str]], how: str, mode: str, dtype: str, ours: bool, stats: dict):
    """One pass over the document groups; `stats` gets the sequences and (real, padded) tokens it ran."""
    def run() -> None:
        stats.update(sequences=0, real=0, padded=0)
        for texts in groups:
            batch, doc_index = (minibert_batch if ours else transformers_batch)(tok, texts, how)
            stats["sequences"] += len(doc_index)
            stats["real"] += int(batch["attention_mask"].sum())
            stats["padded"] += batch["input_ids"].numel()
            with amp(dtype), torch.set_grad_enabled(mode == "train"):
                logits = model(**batch).logits.float()
                if mode == "train":
                    labels = torch.tensor([i % 2 for i in doc_index.tolist()])
                    torch.nn.functional.cross_entropy(logits, labels).backward()
                else:
                    pool_windows(logits, doc_index, len(texts), "mean")
        model.zero_grad(set_to_none=True)

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=4, help="reviews of 1,100-1,300 tokens")
    parser.add_argument("--batch-docs", type=int, default=2, help="documents per forward")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--modes", default="predict,train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    setup(args.threads)
    run = Run("long_text", args)
    hf_tok, our_tok = tokenizers("minilm")
    texts = long_reviews(hf_tok, args.docs)
    tokens = sum(len(hf_tok.tokenize(t)) for t in texts) / len(texts)
    print(f"{len(texts)} reviews, {tokens:.0f} WordPiece tokens on average", flush=True)
    groups = [texts[i:i + args.batch_docs] for i in range(0, len(texts), args.batch_docs)]
    ref, ours = pair("minilm", num_labels=2)
    for mode in args.modes.split(","):
        ref.train(mode == "train")
        ours.train(mode == "train")
        for dtype in dtypes_to_run(args.dtypes, args):
            fns, stats = {}, {}
            for how in ("head-tail", "chunks"):
                for lib, model, tok in (("transformers", ref, hf_tok), ("minibert", ours, our_tok)):
                    stats[lib, how] = {}
                    fns[lib, how] = make_pass(model, tok, groups, how, mode, dtype, lib == "minibert", stats[lib, how])
            times = interleaved(fns, args.reps)
            ms = {k: 1000 * median(v) / len(texts) for k, v in times.items()}
            for (lib, how), s in stats.items():
                run.add(dict(mode=mode, dtype=dtype, strategy=how, library=lib, doc_tokens=round(tokens),
                             sequences_per_doc=s["sequences"] / len(texts), padded_fraction=1 - s["real"] / s["padded"],
                             ms_per_doc=ms[lib, how], chunks_vs_head_tail=ms[lib, "chunks"] / ms[lib, "head-tail"],
                             vs_transformers=ms["transformers", how] / ms[lib, how]), COLUMNS)
    run.finish(reps=args.reps)


COLUMNS = ["mode", "dtype", "strategy", "library", "sequences_per_doc", "padded_fraction", "ms_per_doc",
           "chunks_vs_head_tail", "vs_transformers"]

if __name__ == "__main__":
    main()
