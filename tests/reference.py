"""What the parity tests share: tiny configs, tolerances, transformers reference models and padded batches."""

from __future__ import annotations

import torch
import transformers

import minibert

ATOL = 1e-5
KERNELS = ["math", "sdpa", "unpadded", "auto"]

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)
ODD = dict(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
           max_position_embeddings=16, type_vocab_size=3)


def hf_model(name: str, seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    hf_config = transformers.BertConfig(**config)
    model = getattr(transformers, name)(hf_config)
    with torch.no_grad():  # transformers zero-initialises biases; random ones make the comparison stronger
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def pair_from_disk(name: str, tmp_path, attn_impl: str = "sdpa", **config):
    ref = hf_model(name, **config)
    ref.save_pretrained(tmp_path)
    ours = getattr(minibert, name).from_pretrained(tmp_path, attn_impl=attn_impl)
    return ref, ours


def padded_batch(vocab_size: int, lengths: list[int], seq_len: int | None = None, seed: int = 1):
    """Random ids for sequences of the given lengths, right-padded with 0; two segments per row."""
    g = torch.Generator().manual_seed(seed)
    seq_len = seq_len or max(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), seq_len), generator=g)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    types = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        types[row, n // 2: n] = 1
    return ids * mask, mask, types


def assert_close_on_tokens(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> None:
    """Compare (b, t, ...) tensors on real-token positions only (padding positions are undefined in both)."""
    keep = mask.bool()
    diff = (ours[keep] - ref[keep]).abs().max().item()
    assert diff <= ATOL, f"max abs difference {diff:.2e} > {ATOL}"
