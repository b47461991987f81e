"""Words and their tags to token ids and per-token labels, as transformers' run_ner.py aligns them, in windows.

Each word is tokenized alone (what `is_split_into_words=True` does); its first sub-token carries the word's tag and
the others -100, ignored by the loss (`label_all_tokens`: they carry it too, B-X turned into I-X). A sentence longer
than `max_length` is cut into windows that overlap by at most `stride` tokens and never split a word; every window
is a training sequence, and each word is predicted from the window where it has the most context on both sides
(the fewer tokens on its poorer side, the worse). A word longer than a whole window keeps its first tokens.

The result is also the loop's training data (`train.TrainData`): length-grouped batches (or random ones:
`batch_order`) padded per batch, labels padded with -100; with the packed kernel the padding never reaches the encoder.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from minibert.conll import TaggedSentences
from minibert.dynamic_batching import Row, collate_rows
from minibert.errors import MinibertError
from minibert.training_data import PROGRESS_FROM, length_grouped_batches

IGNORE = -100  # cross_entropy's ignore_index


@dataclass
class TokenWindows:
    """Windows of token ids ([CLS] ... [SEP]), their labels, and where each word is read from.

    `word_ids[w][t]`: the word (index in its sentence) of token t of window w, None for [CLS]/[SEP].
    `sentence[w]`: the sentence window w comes from. `reads[s][j]`: (window, token) whose logits predict word j of
    sentence s, or None for a word that has no token (only characters the tokenizer drops)."""

    input_ids: list[list[int]]
    labels: list[list[int]] | None
    word_ids: list[list[int | None]]
    sentence: list[int]
    reads: list[list[tuple[int, int] | None]]
    pad_token_id: int = 0
    batch_order: str = "grouped"  # training batches: one of training_data.BATCH_ORDERS

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> list[list[int]]:
        return length_grouped_batches(self.lengths, batch_size, seed, epoch, rank, world_size, self.batch_order)

    def collate(self, indices: Sequence[int], key: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
        rows = [Row(self.input_ids[i], [0] * len(self.input_ids[i])) for i in indices]
        batch = collate_rows(rows, self.pad_token_id)
        if self.labels is not None:
            labels = torch.full(batch["input_ids"].shape, IGNORE, dtype=torch.long)
            for row, i in enumerate(indices):
                labels[row, :len(self.labels[i])] = torch.tensor(self.labels[i])
            batch["labels"] = labels
        return batch


def word_windows(counts: Sequence[int], room: int, stride: int) -> list[tuple[int, int]]:
    """(first word, end word) of each window: as many whole words as fit in `room` tokens, the next window starting
    at the earliest word that leaves at most `stride` tokens shared with the previous one (and later than its start)
    and room for a word the previous one did not hold.
    `counts` are the words' token counts, each at most `room`."""
    if not counts:
        return [(0, 0)]  # an empty text: one window of [CLS] [SEP]
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < len(counts) and used + counts[end] <= room:
            used += counts[end]
            end += 1
        end = max(end, start + 1)
        spans.append((start, end))
        if end >= len(counts):
            return spans
        shared, nxt = 0, end
        while nxt - 1 > start and shared + counts[nxt - 1] <= stride:
            nxt -= 1
            shared += counts[nxt]
        while nxt < end and shared + counts[end] > room:  # room for at least one new word, else a wasted window
            shared -= counts[nxt]
            nxt += 1
        start = nxt


def best_windows(counts: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each word, the window (index in `spans`) where min(tokens before it, tokens after it) is largest; the
    first such window on a tie."""
    best = [-1] * len(counts)
    score = [-1] * len(counts)
    for w, (start, end) in enumerate(spans):
        before, total = 0, sum(counts[start:end])
        for j in range(start, end):
            context = min(before, total - before - counts[j])
            if context > score[j]:
                best[j], score[j] = w, context
            before += counts[j]
    return best


def b_to_i(names: Sequence[str]) -> list[int]:
    """For `label_all_tokens`: the id each label's later sub-tokens carry (B-X -> I-X when I-X exists)."""
    ids = {name: i for i, name in enumerate(names)}
    return [ids.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(names)]


class WordPieces:
    """Each distinct word's token ids, computed once (CoNLL-2003 has 300k words but 24k distinct ones)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, word: str) -> list[int]:
        ids = self.cache.get(word)
        if ids is None:
            ids = self.cache[word] = self.tokenizer.encode(word, add_special_tokens=False)
        return ids


def encode_words(tokenizer: Any, sentences: TaggedSentences, max_length: int, stride: int,
                 names: Sequence[str] | None = None, label_all_tokens: bool = False, what: str = "tokenizing",
                 progress: bool = True) -> TokenWindows:
    """Windows of every sentence; labels when `names` (the label of each id) is given and the sentences have tags."""
    label2id = {name: i for i, name in enumerate(names)} if names is not None else None
    tagged = label2id is not None and sentences.tags is not None
    if tagged:
        check_known_tags(sentences, label2id, what)
    pieces = WordPieces(tokenizer)
    show = progress and len(sentences) >= PROGRESS_FROM
    words = [[pieces(word) for word in sentence]
             for sentence in tqdm(sentences.words, desc=what, unit=" sentences", disable=not show, file=sys.stderr)]
    tags = [[label2id[tag] for tag in sentence] for sentence in sentences.tags] if tagged else None
    later = b_to_i(names) if tagged and label_all_tokens else None
    return encode_pieces(tokenizer, words, max_length, stride, tags, later)


def encode_pieces(tokenizer: Any, sentences: Sequence[Sequence[list[int]]], max_length: int, stride: int,
                  tags: Sequence[Sequence[int]] | None = None, later: Sequence[int] | None = None) -> TokenWindows:
    """Windows of sentences given as the token ids of each word (for raw text, each token is a "word"); labels
    from `tags` (ids) on first sub-tokens, and on the others `later[tag]` when given, else -100."""
    room = max_length - 2
    if stride >= room:
        raise MinibertError(f"--stride {stride} must be less than --max-length minus the 2 special tokens "
                            f"({room}), or windows would not move forward.")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = TokenWindows([], [] if tags is not None else None, [], [], [], tokenizer.pad_token_id)
    for s, words in enumerate(sentences):
        word_pieces = [p[:room] for p in words]
        counts = [len(p) for p in word_pieces]
        spans = word_windows(counts, room, stride)
        best = best_windows(counts, spans)
        reads: list[tuple[int, int] | None] = [None] * len(words)
        for w, (start, end) in enumerate(spans):
            window = len(out.input_ids)
            ids, word_ids, labels = [cls], [None], [IGNORE]
            for j in range(start, end):
                if best[j] == w and counts[j]:
                    reads[j] = (window, len(ids))
                ids += word_pieces[j]
                word_ids += [j] * counts[j]
                if tags is not None:
                    tag = tags[s][j]
                    labels += [tag] + [later[tag] if later is not None else IGNORE] * (counts[j] - 1)
            out.input_ids.append(ids + [sep])
            out.word_ids.append(word_ids + [None])
            out.sentence.append(s)
            if out.labels is not None:
                out.labels.append(labels + [IGNORE])
        out.reads.append(reads)
    return out


def check_known_tags(sentences: TaggedSentences, label2id: dict[str, int], what: str) -> None:
    """Tags the model has no id for, listed with their lines."""
    unseen: dict[str, int] = {}
    for s, tags in enumerate(sentences.tags or []):
        for j, tag in enumerate(tags):
            if tag not in label2id:
                unseen.setdefault(tag, sentences.line_of(s, j))
    if unseen:
        listed = ", ".join(f"{tag!r} (line {line})" for tag, line in list(unseen.items())[:5])
        known = "were given in --label-names" if what == "training" else "the model knows"
        raise MinibertError(f"the {what} data in {sentences.sources[0][0]} has tags without a label id: {listed}; "
                            f"the tags that {known} are {', '.join(label2id)}.")


def word_logits(data: TokenWindows, logits: Sequence[torch.Tensor], num_labels: int) -> list[torch.Tensor]:
    """Per sentence, a (words, num_labels) tensor: each word's logits from its best window's first sub-token
    (`logits[w]`: window w's (tokens, num_labels)); NaN for a word without tokens."""
    out = []
    for reads in data.reads:
        rows = torch.full((len(reads), num_labels), float("nan"))
        for j, read in enumerate(reads):
            if read is not None:
                rows[j] = logits[read[0]][read[1]]
        out.append(rows)
    return out


def word_tags(scores: torch.Tensor, names: Sequence[str]) -> list[str]:
    """The best tag of each word; O for a word without tokens (NaN scores)."""
    return ["O" if torch.isnan(row).any() else names[int(row.argmax())] for row in scores]
