"""A tiny BERT checkpoint (2 layers, hidden 32) and a tiny vocabulary, written into a folder in seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from minibert.config import BertConfig
from minibert.heads import BertForSequenceClassification

WORDS = ("good great fine fun love best nice bad awful boring worst hate dull poor movie film plot actor the a is "
         "was and not very it this").split()
POSITIVE, NEGATIVE = WORDS[:7], WORDS[7:14]


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """config.json + model.safetensors + vocab.txt + tokenizer_config.json of a random 2-layer BERT."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *(c for c in letters if c not in WORDS),
             *(f"##{c}" for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": true, "model_max_length": 512}\n')
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Separable toy data: positive words -> "pos", negative words -> "neg", with varied lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = POSITIVE if label == "pos" else NEGATIVE
        k = 2 + int(torch.randint(0, 10, (1,), generator=g))
        text = " ".join(["the", "movie", "was"] + [words[int(j)] for j in torch.randint(0, 7, (k,), generator=g)])
        rows.append((text, label))
    return rows


def write_csv(path: Path, rows: list[tuple], header: tuple = ("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path
