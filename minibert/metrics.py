"""What a classifier's evaluation reports: accuracy and macro-F1 (or MSE and Pearson; a reranker's MRR and NDCG),
gathered over all ranks."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from minibert.devices import Dist
from minibert.long_text import pool_windows
from minibert.ranking import ranking_metrics
from minibert.training_data import Encoded, collate, sorted_batches


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> dict[str, float]:
    """accuracy + macro-F1 (+ whether predictions collapsed to one class), or MSE + Pearson for regression."""
    if problem_type == "regression":
        pred, gold = logits.float().view(-1), labels.float().view(-1)
        pearson = torch.corrcoef(torch.stack([pred, gold]))[0, 1].item() if len(gold) > 1 else float("nan")
        return {"mse": torch.mean((pred - gold) ** 2).item(), "pearson": pearson}
    if problem_type == "multi_label_classification":
        pred, gold = logits > 0, labels > 0.5
        accuracy = (pred == gold).all(dim=1).float().mean().item()
        pairs = [(pred[:, c], gold[:, c]) for c in range(gold.shape[1])]
        collapsed = False
    else:
        pred, gold = logits.argmax(-1), labels
        accuracy = (pred == gold).float().mean().item()
        classes = sorted(set(gold.tolist()) | set(pred.tolist()))
        pairs = [(pred == c, gold == c) for c in classes]
        collapsed = len(set(pred.tolist())) == 1 and len(set(gold.tolist())) > 1
    f1s = []
    for p, g in pairs:
        tp, fp, fn = (p & g).sum().item(), (p & ~g).sum().item(), (~p & g).sum().item()
        if tp + fp + fn:  # a class never present nor predicted has no F1 (as in scikit-learn's macro average)
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "f1": sum(f1s) / len(f1s) if f1s else 0.0, "collapsed": collapsed}


def best_key(problem_type: str) -> tuple[str, float]:
    """The metric that picks the best model, and +1 if higher is better, -1 if lower."""
    return ("mse", -1.0) if problem_type == "regression" else ("f1", 1.0)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, d: Dist, amp: torch.dtype | None, *, data: Encoded, batch_size: int,
                        problem_type: str, pool: str = "mean", groups: Sequence[int] | None = None,
                        progress: bool = False) -> dict[str, float]:
    """Loss and metrics over the whole evaluation set: each rank runs its share, the results are gathered.

    `amp` is the training run's autocast dtype, so validation and test numbers come from the same arithmetic.
    For documents cut into windows, the loss is the windows' and the metrics are the documents': each document's
    windows' logits pooled (`pool`: mean or max) against its label. With `groups` (a reranker's query id per row),
    also MRR@10 and NDCG@10 (`ranking.ranking_metrics`)."""
    model.eval()
    parts = []
    batches = sorted_batches(data.lengths, batch_size, d.rank, d.world_size)
    for indices in tqdm(batches, desc="evaluating", unit=" batches", disable=not progress or not d.main, leave=False,
                        delay=1, file=sys.stderr):
        batch = {k: v.to(d.device) for k, v in collate(data, indices).items()}
        with torch.autocast(d.device.type, dtype=amp, enabled=amp is not None):
            out = model(**batch)
        parts.append((indices, out.logits.float().cpu(), out.loss.float().item() * len(indices)))
    if d.world_size > 1:
        gathered: list[Any] = [None] * d.world_size
        dist.all_gather_object(gathered, parts)
        parts = [p for rank_parts in gathered for p in rank_parts]
    order = [i for indices, _, _ in parts for i in indices]
    logits = torch.cat([lg for _, lg, _ in parts])[torch.argsort(torch.tensor(order))]
    labels = data.labels
    if data.doc_index is not None:
        logits, labels = pool_windows(logits, data.doc_index, data.num_documents, pool), data.document_labels
    metrics = compute_metrics(logits, labels, problem_type)
    if groups is not None:
        metrics.update(ranking_metrics(logits, labels, groups))
    return {"loss": sum(loss for _, _, loss in parts) / len(data), **metrics}
