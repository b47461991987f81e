"""minibert/long_text.py: head+tail truncation, windows over long documents and pooling their logits, checked by
hand on a vocabulary of ten one-token words, and the windows against transformers' overflowing tokens."""

import pytest
import torch
import transformers

from minibert.errors import MinibertError
from minibert.long_text import (
    LongTextInputs,
    chunk,
    encode_long,
    head_tail,
    head_tail_inputs,
    pool_windows,
    truncate_inputs,
)
from minibert.tokenizer import BertTokenizer
from tests.vocab import sample_sentences, write_small_vocab

DOC = " ".join(f"w{i}" for i in range(10))  # ids 4..13 in the tokenizer below; [CLS] = 2, [SEP] = 3


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ten_words")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + DOC.split()) + "\n")
    return BertTokenizer.from_pretrained(folder)


def test_head_tail_by_hand():
    ids = list(range(10))
    assert head_tail(ids, 6, 2) == [0, 1, 6, 7, 8, 9]
    assert head_tail(ids, 6, 0) == [4, 5, 6, 7, 8, 9]
    assert head_tail(ids, 6, 6) == [0, 1, 2, 3, 4, 5]
    assert head_tail(ids, 10, 3) == ids and head_tail(ids[:4], 6, 2) == [0, 1, 2, 3]
    long = list(range(1000))
    kept = head_tail(long, 510, 128)  # Sun et al.: 128 + 382 tokens, 512 with [CLS] and [SEP]
    assert kept == long[:128] + long[-382:] and len(kept) == 510
    with pytest.raises(MinibertError, match="head=7 must be between 0 and max_tokens=6"):
        head_tail(ids, 6, 7)


def test_head_tail_inputs_by_hand(tok):
    got = head_tail_inputs(tok, [DOC, "w3 w4"], max_length=8, head=2)
    assert got.input_ids == [[2, 4, 5, 10, 11, 12, 13, 3], [2, 7, 8, 3]]  # 2 head + 4 tail; a short text whole
    assert got.token_type_ids == [[0] * 8, [0] * 4] and got.doc_index == [0, 1] and got.truncated == [True, False]
    pair = head_tail_inputs(tok, [DOC], ["w5"], max_length=8, head=2)  # the pair takes 2: 2 head + 2 tail
    assert pair == LongTextInputs([[2, 4, 5, 12, 13, 3, 9, 3]], [[0, 0, 0, 0, 0, 0, 1, 1]], [0], [True])
    with pytest.raises(MinibertError, match="leaves 1 tokens for text 0"):
        head_tail_inputs(tok, [DOC], ["w1 w2 w3 w4"], max_length=8, head=2)


def test_chunks_by_hand(tok):
    got = chunk(tok, [DOC, "w0 w1"], max_length=6, stride=1)  # 4 tokens a window, starting every 3
    assert got.input_ids == [[2, 4, 5, 6, 7, 3], [2, 7, 8, 9, 10, 3], [2, 10, 11, 12, 13, 3], [2, 4, 5, 3]]
    assert got.doc_index == [0, 0, 0, 1] and got.token_type_ids[0] == [0] * 6
    pair = chunk(tok, [DOC], ["w9"], max_length=7, stride=2)  # 7 - 3 specials - 1 pair token: windows of 3, every 1
    assert [ids[1:4] for ids in pair.input_ids] == [[4, 5, 6], [5, 6, 7], [6, 7, 8], [7, 8, 9], [8, 9, 10],
                                                    [9, 10, 11], [10, 11, 12], [11, 12, 13]]
    assert all(ids[4:] == [3, 13, 3] for ids in pair.input_ids) and pair.token_type_ids[0] == [0] * 5 + [1, 1]


def test_chunks_match_transformers_overflowing_tokens(tmp_path, monkeypatch):
    folder = write_small_vocab(tmp_path)
    ours, ref = BertTokenizer.from_pretrained(folder), transformers.BertTokenizer.from_pretrained(folder)
    texts = sample_sentences(300)
    expected = ref(texts, truncation=True, max_length=16, stride=5, return_overflowing_tokens=True)
    got = chunk(ours, texts, max_length=16, stride=5)
    assert got.input_ids == expected["input_ids"] and got.token_type_ids == expected["token_type_ids"]
    assert got.doc_index == expected["overflow_to_sample_mapping"]
    monkeypatch.setattr("minibert.tokenizer.MIN_TEXTS_PER_WORKER", 50)  # 300 texts: parallel in two processes
    assert chunk(ours, texts, max_length=16, stride=5, num_workers=2) == got
    pairs = [text[:20] for text in texts[::-1]]  # at most 20 tokens: room is left for windows of the text
    expected = ref(texts, pairs, truncation="only_first", max_length=64, stride=5, return_overflowing_tokens=True)
    got = chunk(ours, texts, pairs, max_length=64, stride=5, num_workers=2)
    assert got.input_ids == expected["input_ids"] and got.doc_index == expected["overflow_to_sample_mapping"]


def test_truncate_inputs_match_transformers_truncation(tmp_path):
    """One tokeniser pass, then `longest_first` by hand: the ids transformers gives with truncation=True, for texts
    and pairs, and `truncated` exactly where the full encoding is longer than max_length."""
    folder = write_small_vocab(tmp_path)
    ours, ref = BertTokenizer.from_pretrained(folder), transformers.BertTokenizer.from_pretrained(folder)
    texts = sample_sentences(200)
    pairs = [text[: 5 + i % 40] for i, text in enumerate(texts[::-1])]
    for second in (None, pairs):
        got = truncate_inputs(ours, texts, second, max_length=24)
        expected = ref(texts, second, truncation=True, max_length=24)
        assert got.input_ids == expected["input_ids"] and got.token_type_ids == expected["token_type_ids"]
        full = ref(texts, second)["input_ids"]
        assert got.truncated == [len(ids) > 24 for ids in full] and 0 < sum(got.truncated) < len(texts)


def test_encode_long_modes(tok):
    assert encode_long(tok, [DOC], max_length=6, how="truncate") == truncate_inputs(tok, [DOC], max_length=6)
    assert encode_long(tok, [DOC], max_length=6, how="truncate").input_ids == [[2, 4, 5, 6, 7, 3]]
    assert encode_long(tok, [DOC], max_length=6, how="head-tail", head=1).input_ids == [[2, 4, 11, 12, 13, 3]]
    assert encode_long(tok, [DOC], max_length=6, how="chunks", stride=1).doc_index == [0, 0, 0]
    with pytest.raises(MinibertError, match="'sliding' is not one of truncate, head-tail, chunks"):
        encode_long(tok, [DOC], how="sliding")


def test_pool_windows_by_hand():
    logits = torch.tensor([[1.0, 2.0], [3.0, 6.0], [10.0, 0.0], [-1.0, -5.0]])
    doc_index = [0, 0, 2, 1]
    assert torch.equal(pool_windows(logits, doc_index, 3), torch.tensor([[2.0, 4.0], [-1.0, -5.0], [10.0, 0.0]]))
    assert torch.equal(pool_windows(logits, torch.tensor(doc_index), 3, how="max"),
                       torch.tensor([[3.0, 6.0], [-1.0, -5.0], [10.0, 0.0]]))
    assert torch.equal(pool_windows(torch.tensor([1.0, 5.0, 2.0]), [1, 0, 1], 2, how="max"), torch.tensor([5.0, 2.0]))
    with pytest.raises(MinibertError, match="document 3 has no window"):
        pool_windows(logits, doc_index, 4)
    with pytest.raises(MinibertError, match="doc_index has 3 entries for 4 windows"):
        pool_windows(logits, doc_index[:3], 3)
    with pytest.raises(MinibertError, match="must lie in 0..1"):
        pool_windows(logits, doc_index, 2)
    with pytest.raises(MinibertError, match="pooling 'sum' is not one of mean, max"):
        pool_windows(logits, doc_index, 3, how="sum")
