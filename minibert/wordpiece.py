"""BERT's text pipeline between the special tokens: normalise, split into words, WordPiece each word.

The reference is what `transformers.BertTokenizer` runs (the Rust `tokenizers` BertNormalizer, BertPreTokenizer and
WordPiece model), step for step:

1. clean: drop U+0000, U+FFFD and control characters (categories Cc, Cf, Co, Cs, but not tab, newline and carriage
   return, which are whitespace); unassigned code points (Cn) are kept, unlike the legacy Python tokenizer;
2. put a space on each side of every CJK ideograph, so each is a word of its own;
3. strip accents (NFD, then drop the nonspacing marks, Mn) when `strip_accents`, which defaults to `lowercase`;
4. lower-case one character at a time (so no Greek final sigma, unlike `str.lower`);
5. split on whitespace, and split off every punctuation character (ASCII non-alphanumerics and Unicode P*);
6. WordPiece: greedy longest match first, continuations prefixed "##"; a word longer than 100 characters, or one the
   vocabulary cannot cover, becomes the unknown token as a whole.

Speed: steps 1-4 run over the whole text with str methods and compiled regexes (C loops), and pure-ASCII text skips
what cannot apply to it. Steps 5-6 run once per distinct whitespace-separated word: their ids are cached.

Offsets (`encode_spans`): steps 1-4 act on each character alone (a character becomes zero, one or several), so the
normalised text is the concatenation of each original character's image, and every normalised character points back
to the original character it came from. A token spans from its first normalised character's origin to its last's,
as in tokenizers (a mark dropped after the last letter is outside; one dropped inside a word is inside).
"""

from __future__ import annotations

import itertools
import re
import sys
import unicodedata

MAX_CHARS_PER_WORD = 100
CONTINUATION = "##"
# Enough for one run over real text (IMDB train has ~300k distinct words); past it the cache starts afresh rather
# than growing without bound on an endless stream.
CACHE_LIMIT = 1_000_000

# The CJK Unified Ideographs blocks and their extensions and compatibility forms, as BERT defines them. Hangul,
# kana and other Asian scripts are not in them: they are split on whitespace like Latin text. tokenizers starts
# Extension E at 0x2B920 where BERT's Python code has 0x2B820; we follow tokenizers (0x2B820-0x2B91F stay letters).
CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]

# tokenizers classifies characters with Unicode 9.0 tables; Python's unicodedata is newer (14.0 in Python 3.11).
# Characters assigned since then are ordinary letters to tokenizers, even where Python calls them marks (Mn), format
# controls (Cf) or punctuation (P*); three changed category. Found by running every code point through both.
NEWER_THAN_UNICODE_9 = [
    # Mn
    0x7FD, (0x898, 0x89F), (0x8CA, 0x8E1), 0x9FE, (0xAFA, 0xAFF), 0xB55, 0xC04, 0xC3C, 0xD00, (0xD3B, 0xD3C), 0xD81,
    0xEBA, 0x180F, (0x1885, 0x1886), (0x1ABF, 0x1ACE), (0x1DF6, 0x1DFB), 0xA82C, 0xA8C5, 0xA8FF, 0xA9BD,
    (0x10D24, 0x10D27), (0x10EAB, 0x10EAC), (0x10F46, 0x10F50), (0x10F82, 0x10F85), 0x11070, (0x11073, 0x11074),
    0x110C2, 0x111CF, 0x1123E, 0x1133B, (0x11438, 0x1143F), (0x11442, 0x11444), 0x11446, 0x1145E,
    (0x1182F, 0x11837), (0x11839, 0x1183A), (0x1193B, 0x1193C), 0x1193E, 0x11943, (0x119D4, 0x119D7),
    (0x119DA, 0x119DB), 0x119E0, (0x11A01, 0x11A0A), (0x11A33, 0x11A38), (0x11A3B, 0x11A3E), 0x11A47,
    (0x11A51, 0x11A56), (0x11A59, 0x11A5B), (0x11A8A, 0x11A96), (0x11A98, 0x11A99), (0x11C30, 0x11C36),
    (0x11C38, 0x11C3D), 0x11C3F, (0x11C92, 0x11CA7), (0x11CAA, 0x11CB0), (0x11CB2, 0x11CB3), (0x11CB5, 0x11CB6),
    (0x11D31, 0x11D36), 0x11D3A, (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45), 0x11D47, (0x11D90, 0x11D91), 0x11D95,
    0x11D97, (0x11EF3, 0x11EF4), 0x16F4F, 0x16FE4, (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46), (0x1E000, 0x1E006),
    (0x1E008, 0x1E018), (0x1E01B, 0x1E021), (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E130, 0x1E136), 0x1E2AE,
    (0x1E2EC, 0x1E2EF), (0x1E944, 0x1E94A),
    # Cf
    (0x890, 0x891), 0x8E2, 0x110CD, (0x13430, 0x13438),
    # P*
    0x61D, 0x9FD, 0xA76, 0xC77, 0xC84, (0x1B7D, 0x1B7E), (0x2E43, 0x2E4F), (0x2E52, 0x2E5D), 0x10EAD,
    (0x10F55, 0x10F59), (0x10F86, 0x10F89), (0x1144B, 0x1144F), (0x1145A, 0x1145B), 0x1145D, (0x11660, 0x1166C),
    0x116B9, 0x1183B, (0x11944, 0x11946), 0x119E2, (0x11A3F, 0x11A46), (0x11A9A, 0x11A9C), (0x11A9E, 0x11AA2),
    (0x11C41, 0x11C45), (0x11C70, 0x11C71), (0x11EF7, 0x11EF8), 0x11FFF, (0x12FF1, 0x12FF2), (0x16E97, 0x16E9A),
    0x16FE2, (0x1E95E, 0x1E95F),
]
CATEGORY_IN_UNICODE_9 = {
    0x1734: "Mn",  # HANUNOO SIGN PAMUDPOD, Mc since Unicode 14
    0x166D: "Po",  # CANADIAN SYLLABICS CHI SIGN, So since Unicode 12
    0x111C9: "Po",  # SHARADA SANDHI MARK, Mn since Unicode 11
}


def _expand(items: list[int | tuple[int, int]]) -> set[int]:
    return {cp for item in items for cp in (range(item[0], item[1] + 1) if isinstance(item, tuple) else [item])}


def _char_class(codepoints: list[int]) -> str:
    """A regex character class body matching exactly `codepoints` (sorted), written as ranges."""
    parts: list[str] = []
    start = prev = codepoints[0]
    for cp in [*codepoints[1:], None]:
        if cp is not None and cp == prev + 1:
            prev = cp
            continue
        parts.append(re.escape(chr(start)) if start == prev else f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
        if cp is not None:
            start = prev = cp
    return "".join(parts)


def _build_classes() -> tuple[re.Pattern, re.Pattern, re.Pattern, re.Pattern, frozenset[str]]:
    """Scan all of Unicode once (~0.2 s) for the character classes of steps 1, 2, 3 and 5."""
    letters = _expand(NEWER_THAN_UNICODE_9)
    dropped, marks, punctuation = [], [], []
    for cp in range(sys.maxunicode + 1):
        category = "Lo" if cp in letters else CATEGORY_IN_UNICODE_9.get(cp) or unicodedata.category(chr(cp))
        if (category in ("Cc", "Cf", "Co", "Cs") and chr(cp) not in "\t\n\r") or cp in (0, 0xFFFD):
            dropped.append(cp)
        elif category == "Mn":
            marks.append(cp)
        if category.startswith("P") or (33 <= cp <= 126 and not chr(cp).isalnum()):
            punctuation.append(cp)
    cjk = "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in CJK_RANGES)
    return (re.compile(f"[{_char_class(dropped)}]+"), re.compile(f"([{cjk}])"), re.compile(f"[{_char_class(marks)}]+"),
            re.compile(f"([{_char_class(punctuation)}])"), frozenset(map(chr, punctuation)))


DROPPED, CJK, MARKS, PUNCTUATION_SPLIT, PUNCTUATION = _build_classes()
ASCII_DROPPED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")  # DROPPED, restricted to ASCII
NON_SPACE = re.compile(r"\S+")  # re's \s is str.split's whitespace

# One whitespace-separated chunk's tokens: ids, (start, end) in the chunk, word index in the chunk, and its word count;
# or, for a chunk that is one token and one word (most are), that token's id alone.
ChunkSpans = tuple[list[int], list[tuple[int, int]], list[int], int] | int


class WordPiece:
    """Text (free of special tokens) to vocabulary ids, with BERT's normalisation and a per-word cache."""

    def __init__(self, vocab: dict[str, int], unk_id: int, lowercase: bool = True, strip_accents: bool | None = None,
                 split_cjk: bool = True) -> None:
        self.vocab = vocab
        self.unk_id = unk_id
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.split_cjk = split_cjk
        self.longest_piece = max(map(len, vocab), default=1)
        self.cache: dict[str, list[int]] = {}
        self.span_cache: dict[str, ChunkSpans] = {}
        self.char_cache: dict[str, str] = {}

    def normalize(self, text: str) -> str:
        """Steps 1-4 over a whole text."""
        if text.isascii():
            text = ASCII_DROPPED.sub("", text)
            return text.lower() if self.lowercase else text
        text = DROPPED.sub("", text)
        if self.split_cjk:
            text = CJK.sub(r" \1 ", text)
        if self.strip_accents:
            text = MARKS.sub("", unicodedata.normalize("NFD", text))
        if self.lowercase:
            # str.lower maps a word-final capital sigma to the final form; tokenizers (char by char) does not
            text = text.replace("\u03a3", "\u03c3").lower()
        return text

    def encode(self, text: str) -> list[int]:
        """The ids of `text`: normalised, split into words, each word's ids from the cache or WordPiece."""
        ids: list[int] = []
        cache = self.cache
        # once control characters are gone, str.split's whitespace is exactly tokenizers' (Unicode White_Space)
        for word in self.normalize(text).split():
            word_ids = cache.get(word)
            if word_ids is None:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                word_ids = cache[word] = self._encode_word(word)
            ids += word_ids
        return ids

    def encode_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]], list[int]]:
        """The ids of `text`, each token's (start, end) character span in `text`, and each token's word index (a
        word: a whitespace-separated run split at punctuation, as tokenizers' pre-tokenizer counts them)."""
        normalized, origin = self._normalize_aligned(text)
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        words: list[int] = []
        cache = self.span_cache
        word_count = 0
        for match in NON_SPACE.finditer(normalized):
            chunk = match.group()
            entry = cache.get(chunk)
            if entry is None:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                entry = cache[chunk] = self._chunk_spans(chunk)
            start, end = match.span()
            if entry.__class__ is int:  # most chunks: one token, one word, all of the chunk
                ids.append(entry)
                offsets.append((start, end) if origin is None else (origin[start], origin[end - 1] + 1))
                words.append(word_count)
                word_count += 1
                continue
            chunk_ids, spans, chunk_words, count = entry
            ids += chunk_ids
            if origin is None:
                offsets += [(start + a, start + b) for a, b in spans]
            else:
                offsets += [(origin[start + a], origin[start + b - 1] + 1) for a, b in spans]
            words += [word_count + word for word in chunk_words]
            word_count += count
        return ids, offsets, words

    def _normalize_aligned(self, text: str) -> tuple[str, list[int] | None]:
        """Steps 1-4, and for each normalised character the index of the original one (None: the identity)."""
        if text.isascii() and not ASCII_DROPPED.search(text):
            return (text.lower() if self.lowercase else text), None
        images = self.char_cache
        for char in set(text).difference(images):
            images[char] = self.normalize(char)
        pieces = list(map(images.__getitem__, text))
        normalized = "".join(pieces)
        lengths = list(map(len, pieces))
        if len(normalized) == len(text) and max(lengths, default=1) == 1:
            return normalized, None
        return normalized, list(itertools.chain.from_iterable(map(itertools.repeat, range(len(text)), lengths)))

    def _chunk_spans(self, chunk: str) -> ChunkSpans:
        """Step 5 and 6 on one whitespace-separated chunk, keeping where each token sits in it."""
        if PUNCTUATION.isdisjoint(chunk):
            word_ids = self.cache.get(chunk) or self._wordpiece(chunk)
            if len(word_ids) == 1:  # one token over the whole chunk: no spans to work out
                return word_ids[0]
            pieces = [chunk]
        else:
            pieces = [p for p in PUNCTUATION_SPLIT.split(chunk) if p]
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        words: list[int] = []
        at = 0
        for word, piece in enumerate(pieces):
            start = at
            for token_id, end in self._wordpiece_ends(piece):
                ids.append(token_id)
                spans.append((start, at + end))
                words.append(word)
                start = at + end
            at += len(piece)
        return ids[0] if len(ids) == 1 else (ids, spans, words, len(pieces))

    def _encode_word(self, word: str) -> list[int]:
        """Step 5's punctuation split, then step 6 on each piece."""
        if PUNCTUATION.isdisjoint(word):
            return self._wordpiece(word)
        ids: list[int] = []
        for piece in PUNCTUATION_SPLIT.split(word):
            if piece:
                ids += self._wordpiece(piece)
        return ids

    def _wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first: the longest vocabulary entry that starts the rest of the word, each time.
        (`_wordpiece_ends` is the same loop keeping where each piece ends; this one, for the plain path, is kept
        apart because a cold cache runs it once per distinct word.)"""
        if len(word) > MAX_CHARS_PER_WORD:
            return [self.unk_id]
        ids: list[int] = []
        start = 0
        while start < len(word):
            prefix = CONTINUATION if start > 0 else ""
            for end in range(min(len(word), start + self.longest_piece), start, -1):
                piece_id = self.vocab.get(prefix + word[start:end])
                if piece_id is not None:
                    ids.append(piece_id)
                    start = end
                    break
            else:  # no entry covers the next character: the whole word is unknown
                return [self.unk_id]
        return ids

    def _wordpiece_ends(self, word: str) -> list[tuple[int, int]]:
        """`_wordpiece`, with where each piece ends in the word."""
        if len(word) > MAX_CHARS_PER_WORD:
            return [(self.unk_id, len(word))]
        tokens: list[tuple[int, int]] = []
        start = 0
        while start < len(word):
            prefix = CONTINUATION if start > 0 else ""
            for end in range(min(len(word), start + self.longest_piece), start, -1):
                piece_id = self.vocab.get(prefix + word[start:end])
                if piece_id is not None:
                    tokens.append((piece_id, end))
                    start = end
                    break
            else:  # no entry covers the next character: the whole word is unknown
                return [(self.unk_id, len(word))]
        return tokens
