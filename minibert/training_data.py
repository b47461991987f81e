"""Examples to token ids once, then batches: length-grouped (or random: `--batch-order`) for training, sorted for
evaluation, padded per batch.

The order of an epoch's batches is a function of (seed, epoch) alone, so a checkpoint stores the position in the
epoch instead of a sampler, and a resumed run sees the same batches as the uninterrupted one.
"""

from __future__ import annotations

import collections
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from minibert.data import Examples
from minibert.dynamic_batching import Row, collate_rows
from minibert.long_text import encode_long
from minibert.long_text_options import LongText
from minibert.tokenizer import MIN_TEXTS_PER_WORKER


@dataclass
class Encoded:
    """Token ids without padding, one list per sequence, and the label tensor (None for prediction).

    A long document cut into windows (`--long-text chunks`) is several sequences: `doc_index[i]` is sequence i's
    document, each window carries its document's label, and `document_labels` keeps one label per document for
    the metrics (the windows' logits are pooled per document first). Otherwise sequences are examples.

    As training data for the loop (`train.TrainData`): batches in `batch_order` (`length_grouped_batches`), padded to
    their longest sequence; with `windows="one"`, each epoch trains on one window per document, drawn from
    (seed, epoch), instead of all.
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: torch.Tensor | None
    pad_token_id: int = 0
    doc_index: list[int] | None = None
    document_labels: torch.Tensor | None = None
    windows: str = "all"
    longer: int = 0  # texts longer than max_length (cut into windows, or truncated)
    batch_order: str = "grouped"  # training batches: one of BATCH_ORDERS

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @property
    def num_documents(self) -> int:
        return len(self) if self.doc_index is None else (max(self.doc_index) + 1 if self.doc_index else 0)

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> list[list[int]]:
        if self.windows == "all" or self.doc_index is None:
            return length_grouped_batches(self.lengths, batch_size, seed, epoch, rank, world_size, self.batch_order)
        picked = one_window_per_document(self.doc_index, seed, epoch)
        lengths = self.lengths
        batches = length_grouped_batches([lengths[i] for i in picked], batch_size, seed, epoch, rank, world_size,
                                         self.batch_order)
        return [[picked[j] for j in batch] for batch in batches]

    def collate(self, indices: Sequence[int], key: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
        return collate(self, indices)


# Tokenising shows a progress bar from this many examples on (a few seconds of work).
PROGRESS_FROM = 20_000


def encode(tokenizer: Any, examples: Examples, max_length: int, labels: torch.Tensor | None = None,
           num_workers: int = 1, progress: bool = True, what: str = "tokenizing",
           long_text: LongText | None = None) -> Encoded:
    """Tokenize every example once (truncated, head+tail, or cut into windows); padding waits for the batch."""
    long_text = long_text or LongText()
    step = max(PROGRESS_FROM, MIN_TEXTS_PER_WORKER * num_workers)
    input_ids: list[list[int]] = []
    token_type_ids: list[list[int]] = []
    doc_index: list[int] = []
    longer = 0
    show = progress and len(examples) >= PROGRESS_FROM
    with tqdm(total=len(examples), desc=what, unit=" texts", disable=not show, file=sys.stderr) as bar:
        for start in range(0, len(examples), step):
            pairs = examples.pairs[start:start + step] if examples.pairs is not None else None
            part = encode_long(tokenizer, examples.texts[start:start + step], pairs, max_length, long_text.how,
                               long_text.head_tokens, long_text.stride, num_workers)
            input_ids += part.input_ids
            token_type_ids += part.token_type_ids
            doc_index += [start + i for i in part.doc_index]
            longer += sum(part.truncated)
            bar.update(min(step, len(examples) - start))
    if long_text.how != "chunks":
        return Encoded(input_ids, token_type_ids, labels, tokenizer.pad_token_id, longer=longer)
    windows = None if labels is None else labels[torch.tensor(doc_index, dtype=torch.long)]
    longer = sum(n > 1 for n in collections.Counter(doc_index).values())  # documents read in several windows
    return Encoded(input_ids, token_type_ids, windows, tokenizer.pad_token_id, doc_index, labels, long_text.windows,
                   longer)


def one_window_per_document(doc_index: Sequence[int], seed: int, epoch: int) -> list[int]:
    """One sequence index per document (in document order), each drawn at random among the document's windows from
    (seed, epoch) alone, so a resumed run draws the same ones."""
    windows: dict[int, list[int]] = {}
    for i, doc in enumerate(doc_index):
        windows.setdefault(doc, []).append(i)
    rng = random.Random(f"{seed}/{epoch}/windows")
    return [rng.choice(windows[doc]) for doc in sorted(windows)]


# --batch-order: batches per length-sorted group. grouped: 50 (sentences of similar length together, little
# padding); random: 1, i.e. no grouping: each batch is batch_size indices of a random permutation, what a random
# sampler (transformers' Trainer) draws, padded to its longest.
BATCH_ORDERS = {"grouped": 50, "random": 1}


def batch_order_fingerprint(order: str) -> dict[str, str]:
    """A resume fingerprint's entry for the batch order: none for grouped, so that checkpoints saved before
    --batch-order existed (all grouped) still resume, while a resume in another order is caught even without the
    run's run_options.json."""
    return {} if order == "grouped" else {"batch_order": order}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, rank: int = 0,
                           world_size: int = 1, order: str = "grouped") -> list[list[int]]:
    """This rank's batches for one epoch: similar lengths batched together (little padding), in a random order.

    Indices are shuffled, cut into groups of 50 batches, each group sorted by length and cut into batches, and the
    batches shuffled again, all from (seed, epoch) alone, so that a resumed run sees the same order. `order="random"`
    makes the groups one batch each: the batches of a random permutation, lengths mixed as they come (a batch's rows
    are still sorted by length, which changes nothing but their order). Every rank computes the same list and takes
    every `world_size`-th batch; the list is first made a multiple of `world_size` by repeating batches from its
    start (cyclically, when there are fewer batches than ranks), so every rank gets work and none waits for a step
    the others never take.
    """
    rng = random.Random(f"{seed}/{epoch}")
    shuffled = list(range(len(lengths)))
    rng.shuffle(shuffled)
    group = batch_size * BATCH_ORDERS[order]
    batches = []
    for start in range(0, len(shuffled), group):
        chunk = sorted(shuffled[start:start + group], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    batches += [batches[i % len(batches)] for i in range(-len(batches) % world_size)] if batches else []
    return batches[rank::world_size]


def sorted_batches(lengths: Sequence[int], batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Evaluation/prediction batches: sorted by length (least padding), each example exactly once over all ranks."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return batches[rank::world_size]


def collate(data: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example (dynamic padding; the padding of `dynamic_batching.collate_rows`, which
    serve's batches use too); the mask marks the real tokens."""
    rows = [Row(data.input_ids[i], data.token_type_ids[i]) for i in indices]
    batch = collate_rows(rows, data.pad_token_id)
    if data.labels is not None:
        batch["labels"] = data.labels[list(indices)]
    return batch
