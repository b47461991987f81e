"""What the tokenizer returns, and the sliding windows over long inputs.

`BatchEncoding` is the dict of model inputs (`model(**enc)`); it also answers transformers' span questions:
`word_ids`, `sequence_ids`, `char_to_token`, `token_to_chars`. Those need each row's character offsets, word and
sequence indices (`SpanRow`); a plain encoding does not compute them, but remembers how to, and does so on first use.

`windows` and `pair_windows` cut a long input into overlapping pieces (`return_overflowing_tokens=True, stride=N`)
in exactly the order and sizes of the `tokenizers` library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from minibert.errors import MinibertError


class CharSpan(NamedTuple):
    """Characters [start, end) of the original text, as transformers' `CharSpan`."""

    start: int
    end: int


class SpanRow(NamedTuple):
    """One encoded (and padded) sequence with what each token came from: `offsets` into its own text ((0, 0) for
    [CLS], [SEP] and padding), `words` (word index in its text, None for added and padding tokens), `sequences`
    (0 for the text, 1 for the pair, None for added and padding tokens), `special` (1 for added and padding tokens)
    and `n_sequences` (1 or 2)."""

    ids: list[int]
    type_ids: list[int]
    attention_mask: list[int]
    offsets: list[tuple[int, int]]
    words: list[int | None]
    sequences: list[int | None]
    special: list[int]
    n_sequences: int


class BatchEncoding(dict):
    """The model inputs: a dict (so `model(**enc)` works) whose keys are also attributes (`enc.input_ids`)."""

    def __init__(self, *args: Any, rows: list[SpanRow] | Callable[[], list[SpanRow]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows = rows

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (DataLoader workers, deepcopy) without a pending span computation, which is a closure: only rows
        already computed travel."""
        return {"_rows": None if callable(self._rows) else self._rows}

    def to(self, device: Any) -> BatchEncoding:
        """Move the tensors to `device`, in place, as transformers' BatchEncoding does."""
        self.update({key: value.to(device) for key, value in self.items() if hasattr(value, "to")})
        return self

    def _row(self, batch_index: int) -> SpanRow:
        if callable(self._rows):
            self._rows = self._rows()
        if self._rows is None:
            raise MinibertError("this BatchEncoding has no word or character positions (it was not made by the "
                                "tokenizer, or was pickled before they were computed); encode the text again, "
                                "with return_offsets_mapping=True to keep them through a pickle.")
        if not 0 <= batch_index < len(self._rows):
            raise MinibertError(f"batch index {batch_index} is out of range: the encoding has {len(self._rows)} "
                                "sequence(s).")
        return self._rows[batch_index]

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Each token's word index in its text (None for [CLS], [SEP] and padding)."""
        return list(self._row(batch_index).words)

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Each token's sequence: 0 for the text, 1 for the pair, None for [CLS], [SEP] and padding."""
        return list(self._row(batch_index).sequences)

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
                      ) -> int | None:
        """The index of the first token covering character `char_index` of sequence `sequence_index` (0: the text,
        1: the pair) of row `batch_index`; None where no token does (a space, a dropped character)."""
        batch_index, char_index = (0, batch_or_char_index) if char_index is None else (batch_or_char_index,
                                                                                       char_index)
        row = self._row(batch_index)
        wanted = sequence_index if sequence_index < row.n_sequences else None
        for i, ((start, end), sequence) in enumerate(zip(row.offsets, row.sequences)):
            if start <= char_index < end and sequence is not None and (wanted is None or sequence == wanted):
                return i
        return None

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> CharSpan | None:
        """The characters (start, end) of the text that token `token_index` of row `batch_index` came from; None
        for [CLS], [SEP], padding and indices past the end."""
        batch_index, token_index = (0, batch_or_token_index) if token_index is None else (batch_or_token_index,
                                                                                          token_index)
        row = self._row(batch_index)
        if not 0 <= token_index < len(row.ids) or row.sequences[token_index] is None:
            return None
        return CharSpan(*row.offsets[token_index])


def keep_lengths(len_a: int, len_b: int | None, room: int, strategy: str) -> tuple[int, int | None]:
    """How many tokens of a text (and its pair) survive truncation to `room` tokens, exactly as in `tokenizers`.

    Its rules differ from transformers' legacy Python tokenizer: `longest_first` does not remove tokens one at a
    time from the longer side; when both must shrink, the shorter keeps room // 2 and the longer the rest (10 + 10
    tokens into 7 gives 3 + 4 where the legacy code gives 4 + 3). When the special tokens alone exceed max_length
    (room < 0) nothing is cut at all; room == 0 cuts everything, whatever the strategy."""
    total = len_a + (len_b or 0)
    if room < 0 or total <= room:
        return len_a, len_b
    if room == 0:
        return 0, None if len_b is None else 0
    if strategy == "longest_first":
        if len_b is None:
            return room, None
        short, long = sorted((len_a, len_b))
        long = short if short > room else max(short, room - short)
        if short + long > room:
            short, long = room // 2, room // 2 + room % 2
        return (long, short) if len_a > len_b else (short, long)
    if strategy == "only_second" and len_b is None:
        raise MinibertError("truncation='only_second' needs a text pair; use truncation=True for a single text.")
    target = len_a if strategy == "only_first" else len_b
    excess = total - room
    if target <= excess:
        raise MinibertError(f"truncation={strategy!r} cannot fit the input into max_length: the "
                            f"{'first' if strategy == 'only_first' else 'second'} text has {target} tokens and "
                            f"{excess} must go; use truncation='longest_first' or a larger max_length.")
    if strategy == "only_first":
        return len_a - excess, len_b
    return len_a, len_b - excess


def windows(length: int, keep: int, stride: int) -> list[tuple[int, int]]:
    """The [start, stop) token ranges of one sequence cut to `keep` tokens: the first is the kept part, the others
    overflow, each starting `keep - stride` after the one before, the last ending at the end (tokenizers' rule;
    `keep == 0` keeps nothing and overflows the whole sequence at once)."""
    if keep >= length:
        return [(0, length)]
    if keep == 0:
        return [(0, 0), (0, length)]
    if stride >= keep:
        raise MinibertError(f"stride={stride} must be smaller than the {keep} tokens a window keeps of this "
                            "sequence (max_length minus the special tokens, shared between the pair); lower stride "
                            "or raise max_length.")
    ranges = []
    for start in range(0, length, keep - stride):
        ranges.append((start, min(start + keep, length)))
        if start + keep >= length:
            break
    return ranges


def pair_windows(a: list[tuple[int, int]], b: list[tuple[int, int]] | None
                 ) -> list[tuple[tuple[int, int], tuple[int, int] | None]]:
    """The (text window, pair window) rows, in tokenizers' order: the two kept parts first, then each overflowing
    text window with the kept pair part and then with each overflowing pair window, then the kept text part with
    each overflowing pair window."""
    if b is None:
        return [(window, None) for window in a]
    rows = [(a[0], b[0])]
    for window in a[1:]:
        rows += [(window, b[0])] + [(window, other) for other in b[1:]]
    return rows + [(a[0], other) for other in b[1:]]


Spans = tuple[list[int], list[tuple[int, int]], list[int]]  # one text's ids, (start, end) offsets and word indices


def span_row(seq_a: Spans, window_a: tuple[int, int], seq_b: Spans | None, window_b: tuple[int, int] | None,
             specials: tuple[int, int] | None) -> SpanRow:
    """[CLS] a [SEP] (b [SEP]) from a window of each text, with each token's origin; `specials`: the ids of [CLS]
    and [SEP], or None for no special tokens."""
    row = SpanRow([], [], [], [], [], [], [], 1 if seq_b is None else 2)

    def add_special(token_id: int, type_id: int) -> None:
        for field, value in zip(row, (token_id, type_id, 1, (0, 0), None, None, 1)):
            field.append(value)

    if specials is not None:
        add_special(specials[0], 0)
    for sequence, (seq, (start, stop)) in enumerate([(seq_a, window_a)] + ([] if seq_b is None else
                                                                           [(seq_b, window_b)])):
        n = stop - start
        row.ids.extend(seq[0][start:stop])
        row.type_ids.extend([sequence] * n)
        row.attention_mask.extend([1] * n)
        row.offsets.extend(seq[1][start:stop])
        row.words.extend(seq[2][start:stop])
        row.sequences.extend([sequence] * n)
        row.special.extend([0] * n)
        if specials is not None:
            add_special(specials[1], sequence)
    return row


def pad_row(row: SpanRow, length: int, pad_id: int) -> SpanRow:
    """`row` padded on the right to `length` tokens: [PAD], type 0, mask 0, offsets (0, 0), special."""
    n = length - len(row.ids)
    if n <= 0:
        return row
    return SpanRow(row.ids + [pad_id] * n, row.type_ids + [0] * n, row.attention_mask + [0] * n,
                   row.offsets + [(0, 0)] * n, row.words + [None] * n, row.sequences + [None] * n,
                   row.special + [1] * n, row.n_sequences)
