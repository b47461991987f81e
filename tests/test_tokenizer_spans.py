"""Long texts and spans against transformers.BertTokenizer (Rust-backed), on the small vocabulary of tests/vocab.py
(always) and on MiniLM's (with ../shared): `return_overflowing_tokens` with `stride` for texts and pairs under each
truncation strategy, `return_offsets_mapping`, `return_special_tokens_mask`, `return_length`, and
`word_ids` / `sequence_ids` / `char_to_token` / `token_to_chars`. Where transformers refuses a combination, ours
raises a MinibertError."""

import copy
import os
import pickle

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibert.encoding import CharSpan
from minibert.errors import MinibertError
from minibert.tokenizer import BertTokenizer
from tests.texts import TORTURE, read_imdb
from tests.vocab import sentences, vocab_dir, write_small_vocab  # noqa: F401 - fixtures

SPANS = {"return_offsets_mapping": True, "return_special_tokens_mask": True, "return_length": True}


@pytest.fixture(scope="module")
def ours(vocab_dir):  # noqa: F811
    return BertTokenizer.from_pretrained(vocab_dir)


@pytest.fixture(scope="module")
def ref(vocab_dir):  # noqa: F811
    return transformers.BertTokenizer.from_pretrained(vocab_dir)


def plain(value):
    return value.tolist() if hasattr(value, "tolist") else value


def encode_both(ours, ref, *args, **kwargs):
    """Both encodings, or (None, None) after checking that ours refuses with a MinibertError where transformers
    refuses (a ValueError, a "Truncation error", or a Rust panic, which is not an Exception)."""
    try:
        expected = ref(*args, **kwargs)
    except BaseException as e:  # noqa: B036 - pyo3's PanicException derives from BaseException
        if isinstance(e, KeyboardInterrupt):
            raise
        with pytest.raises(MinibertError):
            ours(*args, **kwargs)
        return None, None
    return ours(*args, **kwargs), expected


def assert_same_spans(ours, ref, *args, **kwargs) -> bool:
    """Same keys and values (ids, masks, types, offsets, lengths, overflow mapping) and, row by row, the same word
    ids, sequence ids and token-to-characters spans. Returns False where both refused the input."""
    got, expected = encode_both(ours, ref, *args, **kwargs)
    if got is None:
        return False
    assert list(got) == list(expected)
    for key in expected:
        assert plain(got[key]) == plain(expected[key]), key
    ids = plain(expected["input_ids"])
    rows = len(ids) if ids and isinstance(ids[0], list) else 1
    for i in range(rows):
        assert got.word_ids(i) == expected.word_ids(i), i
        assert got.sequence_ids(i) == expected.sequence_ids(i), i
        length = len(ids[i]) if rows > 1 or isinstance(ids[0], list) else len(ids)
        for token in range(length + 1):
            assert got.token_to_chars(i, token) == expected.token_to_chars(i, token), (i, token)
    return True


# --- offsets, word ids, special-token mask, length ---------------------------------------------------------------


def test_spans_of_sentences(ours, ref, sentences):  # noqa: F811
    assert_same_spans(ours, ref, sentences[:300], **SPANS)
    assert_same_spans(ours, ref, sentences[:100], sentences[100:200], **SPANS)
    assert_same_spans(ours, ref, sentences[0], **SPANS)  # one text: no batch dimension (but `length` stays [n])
    assert_same_spans(ours, ref, sentences[0], sentences[1], **SPANS)


def test_spans_of_imdb_reviews(ours, ref, shared_dir):
    reviews = read_imdb(shared_dir / "data" / "imdb" / "train.csv", limit=300)
    assert_same_spans(ours, ref, reviews, **SPANS)


@pytest.mark.slow
def test_spans_and_windows_of_all_imdb_reviews(ours, ref, shared_dir):
    reviews = read_imdb(shared_dir / "data" / "imdb" / "train.csv")
    assert len(reviews) == 25_000
    for start in range(0, len(reviews), 2500):
        part = reviews[start:start + 2500]
        assert_same_spans(ours, ref, part, **SPANS)
        assert_same_spans(ours, ref, part, truncation=True, max_length=256, stride=64, return_overflowing_tokens=True,
                          **SPANS)


def test_spans_of_torture_strings(ours, ref):
    """Accents precomposed and decomposed, case that lower-cases to two characters, CJK, emoji, zero-width and
    control characters, long words, special tokens inside the text: offsets point into the original strings."""
    assert_same_spans(ours, ref, TORTURE, **SPANS)
    # as many characters dropped as added: the normalised text has the original's length but not its alignment
    assert_same_spans(ours, ref, ["\x00\x00北x", "北\x01\x02 y z", "e\u0301\u0301北 b"], **SPANS)
    assert_same_spans(ours, ref, TORTURE, TORTURE[::-1], **SPANS)
    assert_same_spans(ours, ref, TORTURE, add_special_tokens=False, **SPANS)
    assert_same_spans(ours, ref, TORTURE, padding=True, return_tensors="pt", **SPANS)


def test_offsets_by_hand(tmp_path):
    """Spans into the original string, worked out by hand on the small vocabulary: "Cre\u0300me\x00x" normalises to
    "cremex" (mark and NUL dropped, the x joins the word) = c ##re ##m ##e ##x, the mark at 3 falls between ##re
    and ##m; each Chinese character is a word; İ decomposes to I + U+0307 (stripped) before lower-casing: i."""
    tok = BertTokenizer.from_pretrained(write_small_vocab(tmp_path))
    text = "Cre\u0300me\x00x 北京 İ [MASK]"
    enc = tok(text, return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(enc.input_ids) == ["[CLS]", "c", "##re", "##m", "##e", "##x", "北", "京", "i",
                                                        "[MASK]", "[SEP]"]
    assert enc.offset_mapping == [(0, 0), (0, 1), (1, 3), (4, 5), (5, 6), (7, 8), (9, 10), (10, 11), (12, 13),
                                  (14, 20), (0, 0)]
    assert enc.word_ids() == [None, 0, 0, 0, 0, 0, 1, 2, 3, 4, None]
    assert enc.char_to_token(3) is None and enc.char_to_token(6) is None and enc.char_to_token(16) == 9
    assert enc.token_to_chars(2) == (1, 3) and enc.token_to_chars(10) is None


def test_spans_of_a_plain_call_come_on_demand(ours, ref, sentences):  # noqa: F811
    """A call without span options does not compute them, but word_ids() and the others still answer."""
    got, expected = ours(sentences[:20], sentences[20:40], padding=True), ref(sentences[:20], sentences[20:40],
                                                                              padding=True)
    assert callable(got._rows)
    assert [got.word_ids(i) for i in range(20)] == [expected.word_ids(i) for i in range(20)]
    assert [got.sequence_ids(i) for i in range(20)] == [expected.sequence_ids(i) for i in range(20)]
    tensors = ours(sentences[0], return_tensors="pt")
    assert tensors.word_ids() == ref(sentences[0], return_tensors="pt").word_ids()


def test_char_to_token_and_token_to_chars(ours, ref, sentences):  # noqa: F811
    texts, pairs = sentences[:15] + TORTURE[:15], sentences[15:30] + TORTURE[15:30]
    got, expected = ours(texts, pairs), ref(texts, pairs)
    for i, (a, b) in enumerate(zip(texts, pairs)):
        for sequence, text in ((0, a), (1, b)):
            for char in range(len(text) + 1):
                assert got.char_to_token(i, char, sequence_index=sequence) == \
                    expected.char_to_token(i, char, sequence_index=sequence), (text, char)
    single = ours("Hello there, world"), ref("Hello there, world")
    for char in range(20):
        assert single[0].char_to_token(char) == single[1].char_to_token(char)
        assert single[0].char_to_token(char, sequence_index=1) == single[1].char_to_token(char, sequence_index=1)
    span = single[0].token_to_chars(1)
    assert isinstance(span, CharSpan) and (span.start, span.end) == (0, 5) and single[0].token_to_chars(0) is None


def test_encodings_pickle(ours, ref):
    """A plain encoding pickles (its pending span computation does not travel); computed spans do."""
    plain_enc = pickle.loads(pickle.dumps(ours(["a b", "c"], padding=True)))
    assert dict(plain_enc) == dict(ref(["a b", "c"], padding=True))
    with pytest.raises(MinibertError, match="no word or character positions"):
        plain_enc.word_ids(0)
    spans = ours(["a b", "c"], return_offsets_mapping=True)
    assert copy.deepcopy(spans).word_ids(0) == pickle.loads(pickle.dumps(spans)).word_ids(0) == [None, 0, 1, None]


def test_span_questions_out_of_range(ours):
    enc = ours(["a b", "c"])
    with pytest.raises(MinibertError, match="batch index 2 is out of range"):
        enc.word_ids(2)
    assert enc.token_to_chars(0, 99) is None and enc.char_to_token(1, 99) is None


# --- overflowing windows -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [0, 2, 3, 4, 8, 17, 64])
@pytest.mark.parametrize("stride", [0, 1, 3, 7])
def test_windows_of_single_texts(ours, ref, sentences, max_length, stride):  # noqa: F811
    """Every window of `max_length` tokens overlapping by `stride`, or the same refusal (stride too large)."""
    texts = sentences[:30] + TORTURE[:10]
    for kwargs in ({}, {"add_special_tokens": False}, {"padding": True}):
        assert_same_spans(ours, ref, texts, truncation=True, max_length=max_length, stride=stride,
                          return_overflowing_tokens=True, **SPANS, **kwargs)
    assert_same_spans(ours, ref, texts[0], truncation=True, max_length=max_length, stride=stride,
                      return_overflowing_tokens=True)  # one text: batched anyway
    assert_same_spans(ours, ref, texts, stride=stride, return_overflowing_tokens=True)  # no truncation: one row each


@pytest.mark.parametrize("truncation", ["longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("max_length", [2, 3, 5, 9, 20, 48])
@pytest.mark.parametrize("stride", [0, 1, 2, 5])
def test_windows_of_pairs(ours, ref, sentences, truncation, max_length, stride):  # noqa: F811
    """Pairs one by one, so that each can be refused alone: the windows of both sides in tokenizers' order, or the
    same refusal (only_first/only_second with too little to cut, stride too large for a window)."""
    firsts, seconds = sentences[0:60:2] + sentences[:3], sentences[1:60:2] + sentences[:3]
    accepted = 0
    for a, b in zip(firsts, seconds):
        accepted += assert_same_spans(ours, ref, a, b, truncation=truncation, max_length=max_length, stride=stride,
                                      return_overflowing_tokens=True, **SPANS)
    if truncation == "longest_first" and max_length - 3 > stride * 2:
        assert accepted == len(firsts)


def test_windows_of_a_batch_of_pairs_with_padding_and_tensors(ours, ref, sentences):  # noqa: F811
    texts, pairs = sentences[:40], sentences[40:80]
    for kwargs in ({"padding": True, "return_tensors": "pt"}, {"padding": "max_length", "pad_to_multiple_of": 8},
                   {"add_special_tokens": False, "return_token_type_ids": False}):
        assert_same_spans(ours, ref, texts, pairs, truncation=True, max_length=24, stride=4,
                          return_overflowing_tokens=True, **SPANS, **kwargs)
    enc = ours(texts, pairs, truncation=True, max_length=24, stride=4, return_overflowing_tokens=True,
               padding=True, return_tensors="pt", **SPANS)
    rows = enc.input_ids.shape[0]
    assert enc.offset_mapping.shape == (rows, enc.input_ids.shape[1], 2) and enc.length.shape == (rows,)
    assert enc.overflow_to_sample_mapping.dtype == torch.long and enc.overflow_to_sample_mapping[-1] == 39


def test_windows_by_hand(tmp_path):
    """10 tokens, 4 per window (6 minus [CLS] and [SEP]), stride 1: windows start every 3 tokens."""
    words = [f"w{i}" for i in range(10)]
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words]) + "\n")
    tok = BertTokenizer.from_pretrained(tmp_path)
    enc = tok(" ".join(words), truncation=True, max_length=6, stride=1, return_overflowing_tokens=True)
    assert enc.input_ids == [[2, 4, 5, 6, 7, 3], [2, 7, 8, 9, 10, 3], [2, 10, 11, 12, 13, 3]]
    assert enc.overflow_to_sample_mapping == [0, 0, 0]
    pair = tok("w0 w1 w2", "w3 w4 w5", truncation="longest_first", max_length=7, stride=0,
               return_overflowing_tokens=True)  # 2 + 2 kept: text windows [w0 w1] [w2], pair windows [w3 w4] [w5]
    assert pair.input_ids == [[2, 4, 5, 3, 7, 8, 3], [2, 6, 3, 7, 8, 3], [2, 6, 3, 9, 3], [2, 4, 5, 3, 9, 3]]


def test_encode_batch_windows(ours, ref, sentences, monkeypatch):  # noqa: F811
    """encode_batch's windows (one process, and two) are __call__'s, without padding or offsets."""
    texts, pairs = sentences[:200], [text[:30] for text in sentences[200:400]]
    for args, kwargs in [((texts,), {"truncation": True, "max_length": 16, "stride": 5}),
                         ((texts, pairs), {"truncation": "only_first", "max_length": 64, "stride": 3}),
                         ((texts, pairs), {"truncation": "longest_first", "max_length": 20, "stride": 2})]:
        expected = ref(*args, return_overflowing_tokens=True, **kwargs)
        got = ours.encode_batch(*args, return_overflowing_tokens=True, **kwargs)
        assert dict(got) == {key: expected[key] for key in got}
        monkeypatch.setattr("minibert.tokenizer.MIN_TEXTS_PER_WORKER", 50)
        assert ours.encode_batch(*args, return_overflowing_tokens=True, num_workers=2, **kwargs) == got
        monkeypatch.undo()
    no_overflow = ours.encode_batch(texts, max_length=16, stride=5)
    assert no_overflow["input_ids"] == ref(texts, truncation=True, max_length=16, stride=5)["input_ids"]


def test_window_errors(ours):
    with pytest.raises(MinibertError, match="stride=-1 must be a whole number"):
        ours("a b", stride=-1)
    with pytest.raises(MinibertError, match="stride=3 must be at most max_length"):
        ours("a", truncation=True, max_length=4, stride=3)
    with pytest.raises(MinibertError, match="stride=2 must be smaller than the 2 tokens a window keeps"):
        ours("a b c d e", truncation=True, max_length=4, stride=2, return_overflowing_tokens=True)
    with pytest.raises(MinibertError, match="needs a text pair"):
        ours("a b c d e", truncation="only_second", max_length=4, return_overflowing_tokens=True)


# --- random Unicode: a property ----------------------------------------------------------------------------------

PIECES = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=8),  # anything, any script
    st.sampled_from(["\u0301", "\u0308\u0323", "\u200b", "\u200d", "\ufeff", "\x00", "\x1b", "\u2028", "\u00a0",
                     "\u3000", "\t", "\n", " ", "[MASK]", "[SEP]", "İ", "ẞ", "ǅ", "Σ", "ﬁ", "北京", "👍🏽", "e\u0301"]),
    st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True),  # words that split into pieces
    st.integers(90, 110).map(lambda n: "x" * n),  # around the 100-character word limit
)
TEXTS = st.lists(PIECES, max_size=12).map("".join)


def check_random_text(ours, ref, text: str, pair: str, max_length: int, stride: int) -> None:
    assert_same_spans(ours, ref, text, **SPANS)
    ids = ref(text)["input_ids"]
    assert ours.decode(ids) == ref.decode(ids) and ours.decode(ids, True) == ref.decode(ids, skip_special_tokens=True)
    assert_same_spans(ours, ref, [text], [pair], truncation=True, max_length=max_length, stride=stride,
                      return_overflowing_tokens=True, **SPANS)


RANDOM_ARGS = {"text": TEXTS, "pair": TEXTS, "max_length": st.integers(0, 24), "stride": st.integers(0, 6)}


@settings(max_examples=int(os.environ.get("MINIBERT_HYPOTHESIS_EXAMPLES", 40)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**RANDOM_ARGS)
def test_random_unicode_matches_transformers(ours, ref, text, pair, max_length, stride):
    check_random_text(ours, ref, text, pair, max_length, stride)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**RANDOM_ARGS)
def test_random_unicode_matches_transformers_many(ours, ref, text, pair, max_length, stride):
    check_random_text(ours, ref, text, pair, max_length, stride)
