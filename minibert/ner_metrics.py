"""Entity-level precision, recall and F1 (micro, and F1 per entity type) and token accuracy, as seqeval computes them.

Two ways to read entities from tags, both seqeval's:
- `conlleval` (seqeval's default, what transformers' run_ner.py reports): lenient, the same reading for IOB1 and
  IOB2 tags: an entity starts at B-X, or at I-X after anything but B-X/I-X, and runs over the I-X that follow.
- `IOB2` / `IOB1` (seqeval's `mode="strict"`): only the starts and continuations the scheme allows; in IOB2 an
  entity is B-X I-X*, and an I- start is no entity at all.
seqeval is a test reference only; the strict tables below are its, so the two agree on any sequence of tags.
`evaluate_tagger` runs a token classifier over evaluation windows and scores its words.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from minibert.devices import Dist
from minibert.token_labels import TokenWindows, word_logits, word_tags
from minibert.training_data import sorted_batches

SCHEMES = ("conlleval", "IOB2", "IOB1")
Entity = tuple[str, int, int]  # (type, first word, one past the last word)


def _split(tag: str) -> tuple[str, str]:
    """(prefix, type) as seqeval's default reading splits a tag: 'B-PER' -> ('B', 'PER'), 'O' -> ('O', '_')."""
    return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _conlleval_entities(tags: Sequence[str]) -> list[Entity]:
    """seqeval's `get_entities`: a chunk ends and one starts by the previous and current prefix and type, as
    conlleval.pl decides (E- and S- read as there, for IOBES tags)."""
    out: list[Entity] = []
    prev_prefix, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, type_ = _split(tag)
        changed = prev_type != type_
        if (prev_prefix in ("E", "S") or (prev_prefix in ("B", "I") and prefix in ("B", "S", "O"))
                or (prev_prefix not in ("O", ".") and changed)):
            out.append((prev_type, begin, i))
        if (prefix in ("B", "S") or (prev_prefix in ("E", "S", "O") and prefix in ("E", "I"))
                or (prefix not in ("O", ".") and changed)):
            begin = i
        prev_prefix, prev_type = prefix, type_
    return out


# seqeval's strict schemes: (previous prefixes, current prefix, type condition) for an entity's start, for a
# token inside one, and for the end of one at the previous token ("any", "same" or "diff" type).
STRICT = {
    "IOB2": {
        "start": [("BIO", "B", "any")],
        "inside": [("B", "I", "same"), ("I", "I", "same")],
        "end": [("I", "O", "any"), ("I", "I", "diff"), ("I", "B", "any"), ("B", "O", "any"), ("B", "I", "diff"),
                ("B", "B", "any")],
    },
    "IOB1": {
        "start": [("O", "I", "any"), ("I", "I", "diff"), ("B", "I", "any"), ("I", "B", "same"), ("B", "B", "same")],
        "inside": [("B", "I", "same"), ("I", "I", "same")],
        "end": [("I", "I", "diff"), ("I", "O", "any"), ("I", "B", "any"), ("B", "O", "any"), ("B", "I", "diff"),
                ("B", "B", "same")],
    },
}


def _strict_token(tag: str) -> tuple[str, str]:
    if tag[:1] not in ("B", "I", "O"):
        raise ValueError(f"the tag {tag!r} is not B-, I- or O, so it has no reading in a strict IOB scheme.")
    return tag[:1], tag[1:].strip("-") or "_"


def _matches(rules: list[tuple[str, str, str]], prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    return any(prev[0] in before and cur[0] == now and (cond == "any" or (prev[1] == cur[1]) == (cond == "same"))
               for before, now, cond in rules)


def _strict_entities(tags: Sequence[str], scheme: str) -> list[Entity]:
    """seqeval's `Tokens.entities` for a strict scheme: from each start, run over the tokens inside, and keep the
    chunk if what follows it ends it."""
    rules = STRICT[scheme]
    tokens = [_strict_token(t) for t in tags] + [("O", "_")]
    out: list[Entity] = []
    i, prev = 0, ("O", "_")
    while i < len(tokens):
        if _matches(rules["start"], prev, tokens[i]):
            end = i + 1
            while _matches(rules["inside"], tokens[end - 1], tokens[end]):
                end += 1
            if _matches(rules["end"], tokens[end - 1], tokens[end]):
                out.append((tokens[i][1], i, end))
            i = end
        else:
            i += 1
        prev = tokens[i - 1]
    return out


def entities(tags: Sequence[str], scheme: str = "conlleval") -> list[Entity]:
    """The entities of one sentence's tags: (type, start word, end word exclusive)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}.")
    return _conlleval_entities(tags) if scheme == "conlleval" else _strict_entities(tags, scheme)


def _f1(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                  scheme: str = "conlleval") -> dict[str, float]:
    """Micro precision/recall/F1 over entities, F1 per type (`f1_PER`, ...), and token accuracy; 0 where undefined
    (seqeval's zero_division=0)."""
    gold_set = {(s, *e) for s, tags in enumerate(gold) for e in entities(tags, scheme)}
    pred_set = {(s, *e) for s, tags in enumerate(pred) for e in entities(tags, scheme)}
    hits = gold_set & pred_set
    precision, recall, f1 = _f1(len(hits), len(pred_set), len(gold_set))
    out = {"precision": precision, "recall": recall, "f1": f1}
    by_type = [Counter(e[1] for e in found) for found in (hits, pred_set, gold_set)]
    for type_ in sorted(set(by_type[1]) | set(by_type[2])):
        out[f"f1_{type_}"] = _f1(by_type[0][type_], by_type[1][type_], by_type[2][type_])[2]
    pairs = [(g, p) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]
    out["accuracy"] = sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0
    return out


def is_iob(names: Sequence[str]) -> bool:
    """Whether tags name entities (O, B-X, I-X): otherwise (part-of-speech tags) only token accuracy means much."""
    return all(name == "O" or name[:2] in ("B-", "I-") for name in names)


@torch.no_grad()
def evaluate_tagger(model: nn.Module, d: Dist, amp: torch.dtype | None, *, data: TokenWindows,
                    gold: Sequence[Sequence[str]], names: Sequence[str], batch_size: int) -> dict[str, float]:
    """Loss over the windows, then entity scores over words: each word tagged from its best window's first
    sub-token. Each rank runs its share of the windows; the logits are gathered."""
    model.eval()
    parts = []
    for indices in sorted_batches(data.lengths, batch_size, d.rank, d.world_size):
        batch = {k: v.to(d.device) for k, v in data.collate(indices).items()}
        with torch.autocast(d.device.type, dtype=amp, enabled=amp is not None):
            out = model(**batch)
        logits = out.logits.float().cpu()
        parts.append((indices, [logits[row, :data.lengths[i]] for row, i in enumerate(indices)],
                      out.loss.float().item() * len(indices)))
    if d.world_size > 1:
        gathered: list[Any] = [None] * d.world_size
        dist.all_gather_object(gathered, parts)
        parts = [p for rank_parts in gathered for p in rank_parts]
    window_logits: list[Any] = [None] * len(data)
    for indices, logits, _ in parts:
        for i, rows in zip(indices, logits):
            window_logits[i] = rows
    pred = [word_tags(scores, names) for scores in word_logits(data, window_logits, len(names))]
    scores = entity_scores(gold, pred) if is_iob(names) else {"accuracy": entity_scores(gold, pred)["accuracy"]}
    return {"loss": sum(loss for _, _, loss in parts) / len(data), **scores}
