"""Rerankers: (query, passage, 0/1) rows trained with binary cross-entropy on one logit, and judged as rankings.

`finetune --problem-type binary` saves the head as transformers and sentence-transformers both read it: one label,
problem_type "multi_label_classification" (transformers' loss for it is BCE-with-logits on the logit, and it
accepts no other name), plus sentence-transformers' CrossEncoder files (`st_files.write_cross_encoder_files`).

A validation file that pairs the same query text with several passages is read as a ranking task: each query's
passages ordered by logit (ties in file order, as `CrossEncoder.rank`), then MRR@10 and NDCG@10 (binary gains,
log2 discount) averaged over the queries that have a relevant passage; a query without one has no ideal ranking
and is left out, as sentence-transformers' reranking evaluator leaves it out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from minibert.data import Examples
from minibert.errors import MinibertError
from minibert.labels import Labels

BINARY = Labels("multi_label_classification", ["relevant"])  # the one-logit head of a reranker
TOP_K = 10


def ranking(scores: torch.Tensor, top_k: int | None = None) -> list[int]:
    """Indices by score, highest first; equal scores keep their input order (Python's stable sort, which is what
    sentence-transformers' `sorted(..., reverse=True)` gives)."""
    values = scores.tolist()
    order = sorted(range(len(values)), key=values.__getitem__, reverse=True)
    return order if top_k is None else order[:top_k]


def binary_targets(examples: Examples, what: str) -> torch.Tensor:
    """(rows, 1) float targets from labels 0 or 1 (also "0"/"1", 0.0/1.0); any other label is refused with its line."""
    assert examples.labels is not None
    targets = []
    for value, (path, line) in zip(examples.labels, examples.sources):
        text = str(value).strip()
        number = float(text) if text in ("0", "1", "0.0", "1.0") else None
        if isinstance(value, bool) or number is None:
            raise MinibertError(f"line {line} of {path} has label {value!r}; --problem-type binary needs 0 (not "
                                f"relevant) or 1 (relevant) in every row of the {what} data.")
        targets.append([number])
    return torch.tensor(targets, dtype=torch.float32)


def query_groups(examples: Examples, targets: torch.Tensor) -> list[int] | None:
    """Per row, the id of its query (rows with the same first text share one), or None when no query has two or
    more passages, one of them relevant (nothing to rank: accuracy alone is reported)."""
    if examples.pairs is None:
        return None
    ids: dict[str, int] = {}
    groups = [ids.setdefault(text, len(ids)) for text in examples.texts]
    sizes, relevant = [0] * len(ids), [False] * len(ids)
    for group, target in zip(groups, targets.view(-1).tolist()):
        sizes[group] += 1
        relevant[group] |= target > 0.5
    return groups if any(n > 1 and r for n, r in zip(sizes, relevant)) else None


def ranking_metrics(logits: torch.Tensor, labels: torch.Tensor, groups: Sequence[int],
                    k: int = TOP_K) -> dict[str, float]:
    """MRR@k and NDCG@k over the queries with a relevant passage (see the module docstring). logits, labels: (rows,)
    or (rows, 1); `groups`: per row its query id."""
    scores, relevant = logits.float().view(-1), labels.view(-1) > 0.5
    rows: dict[int, list[int]] = {}
    for row, group in enumerate(groups):
        rows.setdefault(group, []).append(row)
    mrr, ndcg = [], []
    for members in rows.values():
        gains = [bool(relevant[members[i]]) for i in ranking(scores[members], k)]
        total = int(relevant[members].sum())
        if total == 0:
            continue
        mrr.append(1.0 / (gains.index(True) + 1) if True in gains else 0.0)
        dcg = sum(1.0 / math.log2(i + 2) for i, gain in enumerate(gains) if gain)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(total, k)))
        ndcg.append(dcg / ideal)
    if not mrr:
        return {}
    return {f"mrr@{k}": sum(mrr) / len(mrr), f"ndcg@{k}": sum(ndcg) / len(ndcg)}
