"""Dynamic MLM masking: the 15 % / 80-10-10 rates on a large sample, specials never masked, whole words together,
and masks that depend on (seed, epoch, batch) alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minibert.masking import IGNORE_INDEX, MaskedSequences, Masker, masking_generator
from minibert.tokenizer import BertTokenizer
from tests.tiny import write_tiny_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizer:
    return BertTokenizer.from_pretrained(write_tiny_model(tmp_path_factory.mktemp("masking") / "model"))


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """`count` successes out of `n` agree with a binomial(n, p) within `sigmas` standard deviations."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def random_batch(tokenizer: BertTokenizer, rows: int, length: int, seed: int = 0) -> torch.Tensor:
    """[CLS] random non-special ids [SEP] ... [SEP] [PAD] [PAD]: every kind of special token in every row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(tokenizer.vocab), (rows, length), generator=g)
    ids[:, 0] = tokenizer.cls_token_id
    ids[:, length // 2] = tokenizer.sep_token_id
    ids[:, -3] = tokenizer.sep_token_id
    ids[:, -2:] = tokenizer.pad_token_id
    return ids


def test_rates_follow_bert(tokenizer):
    masker = Masker.for_tokenizer(tokenizer, 0.15)
    ids = random_batch(tokenizer, 400, 128)
    masked, labels = masker.mask(ids, masking_generator(1, 0, 0))
    special = masker.special_mask(ids)
    maskable = int((~special).sum())
    chosen = labels != IGNORE_INDEX
    n = int(chosen.sum())
    assert within(n, maskable, 0.15)
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original ids
    to_mask = int((masked[chosen] == tokenizer.mask_token_id).sum())
    unchanged = int((masked[chosen] == ids[chosen]).sum())
    vocab = len(tokenizer.vocab)
    assert within(to_mask, n, 0.8 + 0.1 / vocab)
    assert within(unchanged, n, 0.1 + 0.1 / vocab)  # a random token can draw the original id
    assert within(n - to_mask - unchanged, n, 0.1 - 0.2 / vocab)
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes


def test_special_tokens_and_padding_are_never_masked(tokenizer):
    masker = Masker.for_tokenizer(tokenizer, 0.9)  # nearly everything else is chosen
    ids = random_batch(tokenizer, 50, 32)
    for whole_word in (False, True):
        masker = Masker.for_tokenizer(tokenizer, 0.9, whole_word)
        masked, labels = masker.mask(ids, masking_generator(0, 0, 0))
        special = masker.special_mask(ids)
        assert special.sum() == 50 * 5
        assert (labels[special] == IGNORE_INDEX).all()
        assert torch.equal(masked[special], ids[special])
        assert (labels[~special] != IGNORE_INDEX).float().mean() > 0.8


def test_whole_words_are_masked_together(tokenizer):
    # words missing from the tiny vocabulary split into letters: "xyz" -> x ##y ##z
    words = ["the", "xyz", "movie", "qwk", "is", "vjb", "good", "zzzz", "fun"]
    rows = []
    g = np.random.default_rng(0)
    for _ in range(300):
        text = " ".join(g.choice(words, 20))
        rows.append(tokenizer.encode(text))
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    masker = Masker.for_tokenizer(tokenizer, 0.15, whole_word=True)
    _, labels = masker.mask(ids, masking_generator(0, 0, 0))
    chosen = labels != IGNORE_INDEX
    continuation = masker.continuation[ids]
    n_words, n_chosen_words = 0, 0
    for row in range(len(ids)):
        for t in range(1, ids.shape[1]):
            if ids[row, t] in (tokenizer.sep_token_id, tokenizer.pad_token_id):
                continue
            if continuation[row, t]:  # a "##" piece shares its word's fate
                assert chosen[row, t] == chosen[row, t - 1]
            else:
                n_words += 1
                n_chosen_words += int(chosen[row, t])
    assert continuation.sum() > 1000  # the sample does hold many multi-piece words
    assert within(n_chosen_words, n_words, 0.15)


def test_a_sequence_that_starts_inside_a_word_can_mask_it(tokenizer):
    """Packing may cut a word: "##y ##z" right after [CLS] is a word of its own, not part of [CLS]."""
    masker = Masker.for_tokenizer(tokenizer, 0.5, whole_word=True)
    piece = tokenizer.vocab["##y"]
    ids = torch.tensor([[tokenizer.cls_token_id, piece, piece, tokenizer.sep_token_id]] * 200)
    _, labels = masker.mask(ids, masking_generator(0, 0, 0))
    chosen = labels != IGNORE_INDEX
    assert torch.equal(chosen[:, 1], chosen[:, 2])
    assert 50 < chosen[:, 1].sum() < 150


def test_masks_depend_on_the_key_alone(tokenizer):
    masker = Masker.for_tokenizer(tokenizer)
    ids = random_batch(tokenizer, 8, 64)
    state = torch.get_rng_state()
    a = masker.mask(ids, masking_generator(42, 3, 7, [1, 2]))
    torch.manual_seed(123)  # the global RNG plays no part...
    b = masker.mask(ids, masking_generator(42, 3, 7, [1, 2]))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for key in [(43, 3, 7), (42, 4, 7), (42, 3, 8)]:
        c = masker.mask(ids, masking_generator(*key, [1, 2]))
        assert not torch.equal(a[1], c[1]), key
    torch.set_rng_state(state)


def test_data_object_batches_and_collates(tokenizer):
    seqs = random_batch(tokenizer, 23, 16).numpy().astype(np.int32)
    data = MaskedSequences(seqs, Masker.for_tokenizer(tokenizer))
    epoch0 = data.epoch_batches(4, 5, 0)
    assert sorted(i for b in epoch0 for i in b) == list(range(23))
    assert epoch0 == data.epoch_batches(4, 5, 0) and epoch0 != data.epoch_batches(4, 5, 1)
    ranks = [data.epoch_batches(4, 5, 0, r, 2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3 and ranks[0] + ranks[1] != epoch0
    assert sorted(i for b in data.eval_batches(4) for i in b) == list(range(23))
    batch = data.collate(epoch0[0], (5, 0, 0))
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (4, 16)
    again = data.collate(epoch0[0], (5, 0, 0))
    assert torch.equal(batch["input_ids"], again["input_ids"])
    assert not torch.equal(batch["labels"], data.collate(epoch0[0], (5, 1, 0))["labels"])


def test_probability_is_checked():
    from minibert.errors import MinibertError

    with pytest.raises(MinibertError, match="mlm-probability"):
        Masker(4, 10, (0,), 1.5)
