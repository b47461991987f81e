"""Labels on sub-tokens as run_ner.py puts them, windows that never split a word, each word read from its best
window: by hand on small sentences, and against transformers' word_ids on CoNLL-2003."""

import pytest
import torch
import transformers

from minibert.conll import TaggedSentences, read_tagged
from minibert.token_labels import IGNORE, best_windows, encode_words, word_logits, word_windows
from minibert.tokenizer import BertTokenizer
from tests.tiny import write_tiny_model

NAMES = ["B-PER", "I-PER", "O"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return BertTokenizer.from_pretrained(write_tiny_model(tmp_path_factory.mktemp("tiny")))


def test_first_sub_token_carries_the_tag(tokenizer):
    s = TaggedSentences([["good", "xyz", "film"]], [["O", "B-PER", "O"]], [("x", 1)])
    data = encode_words(tokenizer, s, 32, 8, NAMES)
    assert tokenizer.convert_ids_to_tokens(data.input_ids[0]) == ["[CLS]", "good", "x", "##y", "##z", "film", "[SEP]"]
    assert data.labels[0] == [IGNORE, 2, 0, IGNORE, IGNORE, 2, IGNORE]
    assert data.word_ids[0] == [None, 0, 1, 1, 1, 2, None]
    every = encode_words(tokenizer, s, 32, 8, NAMES, label_all_tokens=True)
    assert every.labels[0] == [IGNORE, 2, 0, 1, 1, 2, IGNORE]  # B-PER's later pieces carry I-PER


def test_windows_by_hand():
    assert word_windows([1] * 10, room=6, stride=3) == [(0, 6), (3, 9), (6, 10)]
    # word 4: one token after it in the first window, one before it in the second: a tie goes to the first
    assert best_windows([1] * 10, [(0, 6), (3, 9), (6, 10)]) == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    # a 3-token word never straddles two windows; no overlap fits in a stride of 2 before it
    assert word_windows([1, 3, 2, 1, 2], room=4, stride=2) == [(0, 2), (2, 4), (3, 5)]


def test_word_cut_by_window_edge(tokenizer):
    s = TaggedSentences([["good", "xyz", "film", "bad", "qwertyu"]], [["O", "B-PER", "I-PER", "O", "B-PER"]],
                        [("x", 1)])
    data = encode_words(tokenizer, s, max_length=6, stride=2, names=NAMES)  # 4 tokens per window
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in data.input_ids]
    assert tokens == [["[CLS]", "good", "x", "##y", "##z", "[SEP]"], ["[CLS]", "film", "bad", "[SEP]"],
                      ["[CLS]", "q", "##w", "##e", "##r", "[SEP]"]]  # qwertyu keeps its first 4 tokens
    # no overlap: "xyz" (3 tokens) is more than the stride, and "bad" alone would leave no room for "qwertyu"
    assert data.reads == [[(0, 1), (0, 2), (1, 1), (1, 2), (2, 1)]]
    assert data.labels[2] == [IGNORE, 0, IGNORE, IGNORE, IGNORE, IGNORE]
    logits = [torch.randn(len(ids), 3) for ids in data.input_ids]
    picked = word_logits(data, logits, 3)[0]
    assert torch.equal(picked, torch.stack([logits[w][t] for w, t in data.reads[0]]))


def test_labels_as_run_ner_on_conll(shared_dir, minilm_dir):
    """run_ner.py's tokenize_and_align_labels with transformers' tokenizer (is_split_into_words, word_ids)."""
    sentences = read_tagged(shared_dir / "data" / "conll2003" / "dev.txt").select(range(300))
    names = sorted({t for tags in sentences.tags for t in tags})
    ids = {n: i for i, n in enumerate(names)}
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    for all_tokens in (False, True):
        ours = encode_words(BertTokenizer.from_pretrained(minilm_dir), sentences, 128, 32, names, all_tokens)
        enc = hf(sentences.words, is_split_into_words=True, truncation=True, max_length=128)
        for i, tags in enumerate(sentences.tags):
            labels, previous = [], None
            for word in enc.word_ids(i):
                if word is None:
                    labels.append(IGNORE)
                elif word != previous:
                    labels.append(ids[tags[word]])
                else:
                    tag = tags[word].replace("B-", "I-") if all_tokens else None
                    labels.append(ids[tag] if tag else IGNORE)
                previous = word
            assert ours.input_ids[i] == enc["input_ids"][i]
            assert ours.labels[i] == labels


def test_overlapping_windows_keep_words_whole(tokenizer):
    s = TaggedSentences([["good", "bad", "film", "fun", "xyz"]], [["O"] * 5], [("x", 1)])
    data = encode_words(tokenizer, s, max_length=6, stride=2, names=NAMES)
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in data.input_ids]
    # the second window shares only "fun": sharing "film fun" too would leave no room for the 3 tokens of "xyz"
    assert tokens == [["[CLS]", "good", "bad", "film", "fun", "[SEP]"], ["[CLS]", "fun", "x", "##y", "##z", "[SEP]"]]
    assert data.reads == [[(0, 1), (0, 2), (0, 3), (0, 4), (1, 2)]]
    assert data.word_ids == [[None, 0, 1, 2, 3, None], [None, 3, 4, 4, 4, None]]
