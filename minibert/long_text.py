"""Documents longer than the model's 512 tokens, for classification: three ways in, one way back out.

    inputs = encode_long(tokenizer, texts, max_length=512, how="chunks", stride=128)   # or "truncate", "head-tail"
    logits = model(...) on inputs.input_ids / inputs.token_type_ids, one row per sequence
    per_doc = pool_windows(logits, inputs.doc_index, len(texts), how="mean")           # (documents, classes)

- "truncate": the first max_length tokens (what `truncation=True` does);
- "head-tail": the first `head` and the last `max_length - 2 - head` tokens (Sun et al. 2019, "How to Fine-Tune BERT
  for Text Classification?": head 128 + tail 382 was their best for IMDB at 512);
- "chunks": windows of max_length tokens overlapping by `stride`, every token in at least one; the model's logits
  over a document's windows are then pooled (mean or max).

Each returns `LongTextInputs`: per sequence its ids and token types (with [CLS]/[SEP], not padded) and the index of
the document it comes from, so a caller batches and collates them like any other encoded data set; and per document
whether tokens were left out. Every text is tokenised once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from minibert.errors import MinibertError
from minibert.tokenizer import truncate

SUN_ET_AL_HEAD = 128  # head tokens of the best head+tail split in Sun et al. 2019 (with 382 tail tokens, 512 in all)


class LongTextInputs(NamedTuple):
    """Sequences ready for the model: `input_ids` and `token_type_ids` (lists of lists, unpadded) and `doc_index`
    (for each sequence, the index of its document in the input texts); `truncated` (per document): tokens of it are
    in no sequence."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    doc_index: list[int]
    truncated: list[bool]


def head_tail(ids: Sequence[int], max_tokens: int, head: int) -> list[int]:
    """The first `head` tokens and the last `max_tokens - head` of `ids` (token ids without [CLS]/[SEP]); ids that
    fit in `max_tokens` are returned whole."""
    if not 0 <= head <= max_tokens:
        raise MinibertError(f"head={head} must be between 0 and max_tokens={max_tokens}.")
    ids = list(ids)
    if len(ids) <= max_tokens:
        return ids
    return ids[:head] + ids[len(ids) - (max_tokens - head):]


def wordpieces(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, num_workers: int
               ) -> tuple[list[list[int]], list[list[int]] | list[None]]:
    """Every text's (and pair's) token ids in full, without [CLS]/[SEP]: the one tokeniser pass of a document."""
    firsts = tokenizer.encode_batch(texts, max_length=None, truncation=False, add_special_tokens=False,
                                    num_workers=num_workers)["input_ids"]
    seconds = [None] * len(texts) if pairs is None else tokenizer.encode_batch(
        pairs, max_length=None, truncation=False, add_special_tokens=False, num_workers=num_workers)["input_ids"]
    if len(seconds) != len(firsts):
        raise MinibertError(f"got {len(firsts)} texts but {len(seconds)} text pairs.")
    return firsts, seconds


def with_specials(tokenizer: Any, a: list[int], b: list[int] | None) -> tuple[list[int], list[int]]:
    """[CLS] a [SEP] (b [SEP]) and its token types, as the tokenizer builds them."""
    ids = [tokenizer.cls_token_id, *a, tokenizer.sep_token_id]
    types = [0] * len(ids)
    if b is not None:
        ids += [*b, tokenizer.sep_token_id]
        types += [1] * (len(b) + 1)
    return ids, types


def truncate_inputs(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int = 512,
                    num_workers: int = 1) -> LongTextInputs:
    """The first `max_length` tokens of each document (pairs: truncation="longest_first"), as `truncation=True`
    gives them."""
    firsts, seconds = wordpieces(tokenizer, texts, pairs, num_workers)
    input_ids, token_type_ids, truncated = [], [], []
    for a, b in zip(firsts, seconds):
        kept_a, kept_b = truncate(a, b, max_length - (2 if b is None else 3), "longest_first")
        ids, types = with_specials(tokenizer, kept_a, kept_b)
        input_ids.append(ids)
        token_type_ids.append(types)
        truncated.append(len(kept_a) < len(a) or (b is not None and len(kept_b) < len(b)))
    return LongTextInputs(input_ids, token_type_ids, list(range(len(texts))), truncated)


def head_tail_inputs(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int = 512,
                     head: int = SUN_ET_AL_HEAD, num_workers: int = 1) -> LongTextInputs:
    """[CLS] head_tail(text) [SEP] (pair [SEP]) for each document: the text keeps its first `head` tokens and fills
    the rest of `max_length` from its end; a pair is kept whole (it must leave room for the head)."""
    firsts, seconds = wordpieces(tokenizer, texts, pairs, num_workers)
    input_ids, token_type_ids, truncated = [], [], []
    for i, (a, b) in enumerate(zip(firsts, seconds)):
        room = max_length - 2 - (0 if b is None else len(b) + 1)
        if room < head:
            raise MinibertError(f"max_length={max_length} leaves {room} tokens for text {i} (its pair takes the "
                                f"rest), fewer than head={head}; raise max_length or lower head.")
        ids, types = with_specials(tokenizer, head_tail(a, room, head), b)
        input_ids.append(ids)
        token_type_ids.append(types)
        truncated.append(len(a) > room)
    return LongTextInputs(input_ids, token_type_ids, list(range(len(texts))), truncated)


def chunk(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int = 512,
          stride: int = 128, num_workers: int = 1) -> LongTextInputs:
    """Windows of `max_length` tokens (specials included) over each document, each overlapping the one before by
    `stride` tokens, exactly as transformers' `return_overflowing_tokens=True, stride=stride`; with pairs, the
    windows run over the text and each repeats the whole pair (truncation="only_first")."""
    enc = tokenizer.encode_batch(texts, pairs, max_length=max_length,
                                 truncation="only_first" if pairs is not None else True, stride=stride,
                                 return_overflowing_tokens=True, num_workers=num_workers)
    return LongTextInputs(enc["input_ids"], enc["token_type_ids"], enc["overflow_to_sample_mapping"],
                          [False] * len(texts))


LONG_TEXT_MODES: dict[str, Callable[..., LongTextInputs]] = {
    "truncate": truncate_inputs, "head-tail": head_tail_inputs, "chunks": chunk}


def encode_long(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int = 512,
                how: str = "truncate", head: int = SUN_ET_AL_HEAD, stride: int = 128, num_workers: int = 1
                ) -> LongTextInputs:
    """The documents as model inputs, by one of LONG_TEXT_MODES (`finetune --long-text` / `predict` choose)."""
    if how not in LONG_TEXT_MODES:
        raise MinibertError(f"long-text mode {how!r} is not one of {', '.join(LONG_TEXT_MODES)}.")
    extra = {"head-tail": {"head": head}, "chunks": {"stride": stride}}.get(how, {})
    return LONG_TEXT_MODES[how](tokenizer, texts, pairs, max_length=max_length, num_workers=num_workers, **extra)


def pool_windows(logits: torch.Tensor, doc_index: Sequence[int] | torch.Tensor, num_docs: int, how: str = "mean"
                 ) -> torch.Tensor:
    """Per-document logits (num_docs, ...) from per-window logits (windows, ...): the mean or the max over each
    document's windows; `doc_index[i]` is window i's document."""
    if how not in ("mean", "max"):
        raise MinibertError(f"pooling {how!r} is not one of mean, max.")
    index = torch.as_tensor(doc_index, dtype=torch.long, device=logits.device)
    if index.shape != logits.shape[:1]:
        raise MinibertError(f"doc_index has {index.numel()} entries for {logits.shape[0]} windows of logits; give "
                            "one document index per window.")
    if index.numel() and (index.min() < 0 or index.max() >= num_docs):
        raise MinibertError(f"doc_index must lie in 0..{num_docs - 1} (num_docs={num_docs}).")
    counts = torch.bincount(index, minlength=num_docs)
    if (counts == 0).any():
        missing = int((counts == 0).nonzero()[0])
        raise MinibertError(f"document {missing} has no window in doc_index; every document needs at least one.")
    shape = (num_docs, *logits.shape[1:])
    expanded = index.view(-1, *([1] * (logits.dim() - 1))).expand_as(logits)
    if how == "max":
        return logits.new_empty(shape).scatter_reduce(0, expanded, logits, reduce="amax", include_self=False)
    sums = logits.new_zeros(shape).index_add(0, index, logits)
    return sums / counts.view(-1, *([1] * (logits.dim() - 1))).to(logits.dtype)
