"""Dynamic masking for masked-language-model training: which tokens to hide, drawn afresh each time a batch is drawn.

BERT's recipe: choose each maskable token with probability p (0.15); of the chosen, 80 % become [MASK], 10 % a random
token, 10 % stay unchanged; the loss is computed on the chosen ones only (labels hold their ids, -100 elsewhere).
Special tokens ([CLS], [SEP], [PAD], ...) are never chosen. With whole-word masking the choice is made per word,
and every WordPiece of a chosen word is masked (the 80/10/10 split stays per token, as in Google's original code).

The randomness comes only from a `torch.Generator` seeded from (seed, epoch, batch number, the batch's indices), so
the masks of a batch are the same in a resumed run as in an uninterrupted one, whatever happened in between.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from minibert.errors import MinibertError

IGNORE_INDEX = -100  # the label of positions that carry no loss (F.cross_entropy's default ignore_index)


def masking_generator(seed: int, epoch: int, batch: int, indices: Sequence[int] = ()) -> torch.Generator:
    """A CPU generator whose state is a function of its arguments alone (a hash, so nearby keys do not correlate)."""
    key = f"{seed}/{epoch}/{batch}/" + ",".join(map(str, indices))
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1)


@dataclass
class Masker:
    """What the masking needs to know about the vocabulary; `mask()` does the work."""

    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15
    continuation: torch.Tensor | None = None  # (vocab,) bool: True for "##" pieces; set for whole-word masking

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise MinibertError(f"--mlm-probability must be between 0 and 1 (exclusive), not {self.probability}.")

    @classmethod
    def for_tokenizer(cls, tokenizer: object, probability: float = 0.15, whole_word: bool = False) -> Masker:
        """From a `BertTokenizer`: its [MASK] id, vocabulary size, special ids and, for whole words, its "##" pieces."""
        vocab: dict[str, int] = tokenizer.vocab
        continuation = None
        if whole_word:
            continuation = torch.zeros(len(vocab), dtype=torch.bool)
            continuation[[i for token, i in vocab.items() if token.startswith("##")]] = True
        return cls(tokenizer.mask_token_id, len(vocab), tuple(sorted(tokenizer.all_special_ids)), probability,
                   continuation)

    def special_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(input_ids, torch.tensor(self.special_ids, dtype=input_ids.dtype))

    def mask(self, input_ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (b, t) on CPU -> (masked input_ids, labels), both (b, t); the input is not modified."""
        special = self.special_mask(input_ids)
        if self.continuation is None:
            chosen = torch.rand(input_ids.shape, generator=generator) < self.probability
        else:
            chosen = self._whole_words(input_ids, special, generator)
        chosen &= ~special
        labels = torch.where(chosen, input_ids, IGNORE_INDEX)
        # one draw per position decides [MASK] (< 0.8), random token (0.8-0.9) or unchanged (>= 0.9)
        action = torch.rand(input_ids.shape, generator=generator)
        random_ids = torch.randint(self.vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
        masked = torch.where(chosen & (action < 0.8), self.mask_token_id, input_ids)
        masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
        return masked, labels

    def _whole_words(self, input_ids: torch.Tensor, special: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
        """(b, t) bool: every token of each word chosen with probability p. A word starts at a token that is not a
        "##" piece or at a special token; "##" pieces right after a special token (a word cut by packing) share its
        draw, and the caller then unchooses the special token alone."""
        starts = ~self.continuation[input_ids] | special
        starts[:, 0] = True
        word = torch.cumsum(starts.flatten(), 0) - 1  # (b*t,) the word each token belongs to, numbered over the batch
        chosen_word = torch.rand(int(word[-1]) + 1, generator=generator) < self.probability
        return chosen_word[word].view(input_ids.shape)


class MaskedSequences:
    """Packed sequences (n, max_length) as the training loop draws them (`train.TrainData`): `epoch_batches` says
    which sequences go together, `collate` masks them afresh with the generator of its key and indices."""

    def __init__(self, sequences: np.ndarray, masker: Masker) -> None:
        self.sequences, self.masker = sequences, masker

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def tokens(self) -> int:
        return self.sequences.size

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0,
                      world_size: int = 1) -> list[list[int]]:
        """This rank's batches of one epoch, shuffled from (seed, epoch) alone; the list is first made a multiple of
        `world_size` by repeating its first batches, so that every rank takes the same number of steps."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self.sequences)).tolist()
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        batches += batches[: (-len(batches)) % world_size]
        return batches[rank::world_size]

    def eval_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
        """Every sequence once over all ranks, in order; evaluation masks with the key (seed, -1, batch number), so
        every evaluation sees the same masks and the losses compare."""
        n = len(self.sequences)
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        return batches[rank::world_size]

    def collate(self, indices: Sequence[int], key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        """key = (seed, epoch, batch number) -> input_ids (masked) and labels, both (len(indices), max_length); no
        padding, so no attention_mask."""
        ids = torch.from_numpy(self.sequences[list(indices)].astype(np.int64))
        input_ids, labels = self.masker.mask(ids, masking_generator(*key, indices))
        return {"input_ids": input_ids, "labels": labels}
