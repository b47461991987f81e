"""Which of the encoder's matmuls int8 can take: each left in float32 in turn, against all four in int8, with and
without smoothing (minibert/quantize.py).

For every choice: a fine-tuned MiniLM SST-2 classifier's dev accuracy and argmax agreement with fp32 (all 872
sentences), and MiniLM's sentence embeddings' cosine to fp32 (mean pooling, normalised: the lowest and the mean
over the first 300 dev sentences), with the forward's CPU seconds per text on length-sorted batches of 32
(thread CPU time, so that other processes on a shared machine count less). The result decides
`minibert.quantize.INT8_LINEARS`.

    python bench/int8_matmuls.py --classifier weights/minilm-sst2-8k/best [--threads 1] [--limit N]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from common import MINILM, Run, add_run_arguments, batches, setup, sst2, sst2_labels

import minibert
from minibert.quantize import INT8_LINEARS

# choice -> (keep_float, smooth): every choice smooths q/k/v and up where they are int8, but the first
CHOICES = {"all int8, not smoothed": ((), False), "all int8": ((), True),
           **{f"{name} float": ((name,), True) for name in INT8_LINEARS},
           "qkv + down float": (("attention.qkv", "ffn.down"), True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", required=True, help="a fine-tuned MiniLM SST-2 classifier folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="only the first N dev sentences (a quick run)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    setup(args.threads)
    run = Run("int8_matmuls", args)
    texts, gold = sst2("dev", args.limit), torch.tensor(sst2_labels("dev", args.limit))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    tok = minibert.BertTokenizer.from_pretrained(MINILM)
    encoded = [(group, tok([texts[i] for i in group], padding=True, truncation=True, max_length=128,
                           return_tensors="pt")) for group in batches(order, 32)]
    classifier = minibert.BertForSequenceClassification.from_pretrained(args.classifier)
    encoder = minibert.SentenceEncoder.from_pretrained(MINILM)
    few = texts[:300]

    @torch.inference_mode()
    def predict(model: torch.nn.Module) -> tuple[torch.Tensor, float]:
        model(**encoded[0][1])  # untimed: an int8 model's first forward compiles its fused kernels
        logits, start = torch.empty(len(texts), 2), time.thread_time()
        for group, enc in encoded:
            logits[group] = model(**enc).logits
        return logits, (time.thread_time() - start) / len(texts)

    ref_logits, ref_s = predict(classifier)
    ref_vectors = encoder.encode(few)
    run.add({"choice": "fp32", "accuracy": float((ref_logits.argmax(-1) == gold).float().mean()),
             "cpu_ms_per_text": ref_s * 1e3}, COLUMNS)
    for choice, (keep, smooth) in CHOICES.items():
        logits, seconds = predict(copy.deepcopy(classifier).quantize("int8", keep_float=keep, smooth=smooth))
        quantized = copy.copy(encoder)
        quantized.model = copy.deepcopy(encoder.model).quantize("int8", keep_float=keep, smooth=smooth)
        cosine = torch.nn.functional.cosine_similarity(ref_vectors, quantized.encode(few))
        run.add({"choice": choice, "accuracy": float((logits.argmax(-1) == gold).float().mean()),
                 "agree": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
                 "max_logit_diff": float((logits - ref_logits).abs().max()), "cosine_min": float(cosine.min()),
                 "cosine_mean": float(cosine.mean()), "cpu_ms_per_text": seconds * 1e3,
                 "speedup": ref_s / seconds}, COLUMNS)
    run.finish(n=len(texts), n_embedded=len(few))


COLUMNS = ["choice", "accuracy", "agree", "max_logit_diff", "cosine_min", "cosine_mean", "cpu_ms_per_text", "speedup"]

if __name__ == "__main__":
    main()
