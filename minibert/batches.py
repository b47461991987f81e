"""Examples to token ids once, then batches: length-grouped for training, sorted for evaluation, padded per batch.

The order of an epoch's batches is a function of (seed, epoch) alone, so a checkpoint stores the position in the
epoch instead of a sampler, and a resumed run sees the same batches as the uninterrupted one.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from minibert.data import Examples
from minibert.tokenizer import MIN_TEXTS_PER_WORKER


@dataclass
class Encoded:
    """Token ids without padding, one list per example, and the label tensor (None for prediction).

    As training data for the loop (`train.TrainData`): length-grouped batches, padded to their longest example.
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: torch.Tensor | None
    pad_token_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> list[list[int]]:
        return length_grouped_batches(self.lengths, batch_size, seed, epoch, rank, world_size)

    def collate(self, indices: Sequence[int], key: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
        return collate(self, indices)


# Tokenising shows a progress bar from this many examples on (a few seconds of work).
PROGRESS_FROM = 20_000


def encode(tokenizer: Any, examples: Examples, max_length: int, labels: torch.Tensor | None = None,
           num_workers: int = 1, progress: bool = True, what: str = "tokenizing") -> Encoded:
    """Tokenize every example once, truncated to `max_length`; padding waits for the batch."""
    step = max(PROGRESS_FROM, MIN_TEXTS_PER_WORKER * num_workers)
    input_ids: list[list[int]] = []
    token_type_ids: list[list[int]] = []
    show = progress and len(examples) >= PROGRESS_FROM
    with tqdm(total=len(examples), desc=what, unit=" texts", disable=not show, file=sys.stderr) as bar:
        for start in range(0, len(examples), step):
            pairs = examples.pairs[start:start + step] if examples.pairs is not None else None
            enc = tokenizer.encode_batch(examples.texts[start:start + step], pairs, max_length=max_length,
                                         truncation=True, num_workers=num_workers)
            input_ids += enc["input_ids"]
            token_type_ids += enc["token_type_ids"]
            bar.update(len(enc["input_ids"]))
    return Encoded(input_ids, token_type_ids, labels, tokenizer.pad_token_id)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, rank: int = 0,
                           world_size: int = 1) -> list[list[int]]:
    """This rank's batches for one epoch: similar lengths batched together (little padding), in a random order.

    Indices are shuffled, cut into groups of 50 batches, each group sorted by length and cut into batches, and the
    batches shuffled again, all from (seed, epoch) alone, so that a resumed run sees the same order. Every rank
    computes the same list and takes every `world_size`-th batch; the list is first made a multiple of
    `world_size` by repeating batches from its start (cyclically, when there are fewer batches than ranks), so every
    rank gets work and none waits for a step the others never take.
    """
    rng = random.Random(f"{seed}/{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * 50
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start:start + group], key=lambda i: -lengths[i])
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
    """Pad a batch to its longest example (dynamic padding); the mask marks the real tokens."""
    width = max(len(data.input_ids[i]) for i in indices)
    input_ids = torch.full((len(indices), width), data.pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), width), dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        input_ids[row, :n] = torch.tensor(data.input_ids[i])
        token_type_ids[row, :n] = torch.tensor(data.token_type_ids[i])
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    if data.labels is not None:
        batch["labels"] = data.labels[list(indices)]
    return batch
