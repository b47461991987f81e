"""A token classifier's logits to tags and entities: for words (CoNLL, JSONL) and for raw text, as transformers'
token-classification pipeline gives them.

Raw text: each token becomes a pre-entity (its token, softmax scores, character span); `aggregation` then means
what it means in the pipeline: `none` one entity per token (with its index in the input ids); `simple` tokens
grouped by tag (B-X starts a group, I-X/X of the same type continues it); `first`, `average`, `max` first fuse each
word's sub-tokens (the first one's label, the mean of their scores, or the most confident one's label) and group
words the same way. Entities labelled O are dropped. `start`/`end` are character offsets into the original text.

Words: each word is tagged from the first sub-token in its best window (token_labels.py); entities are the
conlleval reading of the tags (ner_metrics.py), with word indices as `start`/`end` and the mean of the words'
tag probabilities as `score`.

`tag_texts` and `tag_words` are what predict and the server call with a loaded model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from minibert.conll import TaggedSentences
from minibert.dynamic_batching import plan_batches
from minibert.ner_metrics import entities
from minibert.token_labels import TokenWindows, encode_pieces, encode_words, word_logits, word_tags
from minibert.tokenizer import tokens_to_string

AGGREGATIONS = ("simple", "first", "average", "max", "none")


def _tag(label: str) -> tuple[str, str]:
    """(B or I, type): a label without a B-/I- prefix continues a group of its own type (the pipeline's rule)."""
    return (label[0], label[2:]) if label[:2] in ("B-", "I-") else ("I", label)


def _group(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adjacent entities of one type, each B- starting a new group."""
    groups: list[list[dict[str, Any]]] = []
    for item in items:
        bi, type_ = _tag(item["entity"])
        if groups and bi != "B" and _tag(groups[-1][-1]["entity"])[1] == type_:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [{"entity_group": g[0]["entity"].split("-", 1)[-1],
             "score": float(torch.tensor([e["score"] for e in g], dtype=torch.float32).mean()),
             "word": tokens_to_string([e["word"] for e in g]), "start": g[0]["start"], "end": g[-1]["end"]}
            for g in groups]


def text_entities(text: str, tokens: Sequence[str], ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                  probs: torch.Tensor, id2label: dict[int, str], aggregation: str, unk_id: int) -> list[dict[str, Any]]:
    """The pipeline's entities of one text from its tokens (no [CLS]/[SEP]), their character spans and their
    (tokens, labels) softmax probabilities."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}.")
    pre = []
    for i, (token, token_id, (start, end)) in enumerate(zip(tokens, ids, offsets)):
        ref = text[start:end]
        unknown = token_id == unk_id
        pre.append({"word": ref if unknown else token, "scores": probs[i], "start": start, "end": end,
                    "index": i + 1, "is_subword": not unknown and len(token) != len(ref)})
    if aggregation in ("none", "simple"):
        items = []
        for p in pre:
            best = int(p["scores"].argmax())
            items.append({"entity": id2label[best], "score": float(p["scores"][best]), "index": p["index"],
                          "word": p["word"], "start": p["start"], "end": p["end"]})
        if aggregation == "none":
            return [e for e in items if e["entity"] != "O"]
    else:
        words: list[list[dict[str, Any]]] = []
        for p in pre:
            if words and p["is_subword"]:
                words[-1].append(p)
            else:
                words.append([p])
        items = [_fuse(word, aggregation, id2label) for word in words]
    return [e for e in _group(items) if e["entity_group"] != "O"]


def _fuse(word: list[dict[str, Any]], aggregation: str, id2label: dict[int, str]) -> dict[str, Any]:
    """One word's sub-tokens as one entity: the first's label, the most confident one's, or the mean scores'."""
    if aggregation == "first":
        scores = word[0]["scores"]
    elif aggregation == "max":
        scores = max(word, key=lambda p: float(p["scores"].max()))["scores"]
    else:
        scores = torch.stack([p["scores"] for p in word]).mean(dim=0)
    best = int(scores.argmax())
    return {"entity": id2label[best], "score": float(scores[best]), "word": tokens_to_string([p["word"] for p in word]),
            "start": word[0]["start"], "end": word[-1]["end"]}


@torch.no_grad()
def window_logits(model: nn.Module, data: TokenWindows, device: torch.device, amp: torch.dtype | None,
                  max_batch_tokens: int = 16384, batch_size: int = 64,
                  batches: Callable[[list[list[int]]], Any] = iter) -> list[torch.Tensor]:
    """Each window's (tokens, labels) float32 logits, over batches of at most `max_batch_tokens` real tokens
    (`batches` may wrap the batch list, e.g. in a progress bar)."""
    model.eval()
    out: list[Any] = [None] * len(data)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for indices in batches(plan_batches(data.lengths, max_batch_tokens, batch_size)):
            batch = {k: v.to(device) for k, v in data.collate(indices).items()}
            logits = model(**batch).logits.float().cpu()
            for row, i in enumerate(indices):
                out[i] = logits[row, :data.lengths[i]]
    return out


def tag_words(model: nn.Module, tokenizer: Any, sentences: TaggedSentences, max_length: int, stride: int,
              device: torch.device, amp: torch.dtype | None = None, **batching: Any) -> list[dict[str, Any]]:
    """One record per sentence: `tags` (one per word) and `entities` (word indices as start/end)."""
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    data = encode_words(tokenizer, sentences, max_length, stride, progress=False)
    logits = window_logits(model, data, device, amp, **batching)
    records = []
    for words, scores in zip(sentences.words, word_logits(data, logits, len(names))):
        probs = torch.softmax(scores, dim=-1)
        tags = word_tags(scores, names)
        found = []
        for type_, start, end in entities(tags):
            chosen = [float(probs[j].max()) for j in range(start, end) if not torch.isnan(probs[j]).any()]
            found.append({"entity_group": type_, "score": sum(chosen) / len(chosen) if chosen else 0.0,
                          "word": " ".join(words[start:end]), "start": start, "end": end})
        records.append({"tags": tags, "entities": found})
    return records


def tag_texts(model: nn.Module, tokenizer: Any, texts: Sequence[str], aggregation: str, max_length: int, stride: int,
              device: torch.device, amp: torch.dtype | None = None, **batching: Any) -> list[dict[str, Any]]:
    """One record per text: `entities` as the pipeline gives them. A text longer than `max_length` is read in
    windows overlapping by `stride` tokens, each token scored from the window where it has the most context."""
    encoded, data = text_windows(tokenizer, texts, max_length, stride)
    logits = window_logits(model, data, device, amp, **batching)
    return texts_entities(tokenizer, texts, encoded, data, logits, model.config.id2label, aggregation)


def text_windows(tokenizer: Any, texts: Sequence[str], max_length: int, stride: int) -> tuple[list[Any], TokenWindows]:
    """Each text's tokens with their character offsets, and the model's windows over them (each token a "word")."""
    encoded = [tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) for text in texts]
    return encoded, encode_pieces(tokenizer, [[[i] for i in enc["input_ids"]] for enc in encoded], max_length, stride)


def texts_entities(tokenizer: Any, texts: Sequence[str], encoded: Sequence[Any], data: TokenWindows,
                   logits: Sequence[torch.Tensor], id2label: dict[int, str], aggregation: str) -> list[dict[str, Any]]:
    """`text_windows`' windows scored (`logits[w]`: window w's (tokens, labels)) -> one record per text."""
    records = []
    for text, enc, scores in zip(texts, encoded, word_logits(data, logits, len(id2label))):
        ids = enc["input_ids"]
        probs = torch.softmax(scores, dim=-1)
        found = text_entities(text, tokenizer.convert_ids_to_tokens(ids), ids, enc["offset_mapping"], probs,
                              id2label, aggregation, tokenizer.unk_token_id)
        records.append({"entities": found})
    return records
