"""Tagged sentences from files: CoNLL-style columns, or JSONL/parquet rows holding a list of words and of tags.

CoNLL (`.conll`, `.iob`, `.txt`): one word per line, whitespace-separated columns (tab-separated when the line has a
tab, so an empty column can be seen), the word first and the tag last (`tag_column` picks another), a blank line
between sentences, `-DOCSTART-` lines skipped. Rows: `tokens` (or `words`) and `ner_tags` (or `tags`), the tags as
strings, or as integers named by `label_names` or by the parquet file's `datasets` features.

Every sentence keeps the file and line it starts at, so each complaint names them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minibert.data import find_column, read_file_lines, read_table
from minibert.errors import MinibertError

logger = logging.getLogger("minibert")

CONLL_SUFFIXES = (".conll", ".iob", ".txt")
WORDS_NAMES = ("tokens", "words")
TAGS_NAMES = ("ner_tags", "tags")
DOCSTART = "-DOCSTART-"


@dataclass
class TaggedSentences:
    """Sentences as words, their tags (None when the input has none), and where each sentence starts.

    `one_word_per_line`: word j of a sentence starting at line n is on line n + j (CoNLL); else the whole sentence
    is one row (JSONL, parquet)."""

    words: list[list[str]]
    tags: list[list[str]] | None
    sources: list[tuple[str, int]] = field(default_factory=list)
    one_word_per_line: bool = False

    def __len__(self) -> int:
        return len(self.words)

    def select(self, indices: Sequence[int]) -> TaggedSentences:
        tags = None if self.tags is None else [self.tags[i] for i in indices]
        return TaggedSentences([self.words[i] for i in indices], tags, [self.sources[i] for i in indices],
                               self.one_word_per_line)

    def line_of(self, sentence: int, word: int) -> int:
        path_line = self.sources[sentence][1]
        return path_line + word if self.one_word_per_line else path_line


def is_conll(path: str | Path) -> bool:
    name = str(path).lower().removesuffix(".gz")
    return name.endswith(CONLL_SUFFIXES)


def read_conll(path: str | Path, tag_column: int = -1, need_tags: bool = True) -> TaggedSentences:
    """Sentences of a CoNLL-style file; tags when every word line has a tag column (required with `need_tags`)."""
    path = Path(path)
    words: list[list[str]] = []
    tags: list[list[str]] = []
    sources: list[tuple[str, int]] = []
    untagged: int | None = None  # the first line without a tag column
    current: list[str] = []
    current_tags: list[str] = []
    for number, line in read_file_lines(path):  # one line at a time, bad bytes named by their line
        line = line.rstrip("\r\n")
        columns = line.split("\t") if "\t" in line else line.split()
        if not line.strip() or columns[0] == DOCSTART:
            if current:
                words.append(current)
                tags.append(current_tags)
                current, current_tags = [], []
            continue
        if not current:
            sources.append((str(path), number))
        current.append(columns[0])
        if len(columns) < 2 or not -len(columns) <= tag_column < len(columns) or tag_column in (0, -len(columns)):
            if need_tags:
                raise MinibertError(f"line {number} of {path} has {len(columns)} column(s), so no tag in column "
                                    f"{tag_column} (the word is column 0); write 'word ... TAG' or check "
                                    "--tag-column.")
            untagged = untagged or number
            current_tags.append("")
            continue
        tag = columns[tag_column].strip()
        if not tag:
            raise MinibertError(f"line {number} of {path} has an empty tag for the word {columns[0]!r}; fill it in "
                                "(O for no entity).")
        current_tags.append(tag)
    if current:
        words.append(current)
        tags.append(current_tags)
    if not words:
        raise MinibertError(f"{path} has no sentences; a CoNLL file holds one 'word ... TAG' per line and a blank "
                            "line between sentences.")
    sentences = TaggedSentences(words, None if untagged else tags, sources, one_word_per_line=True)
    if sentences.tags is not None:
        warn_forbidden_starts(sentences)
    return sentences


def _class_names(table: Any, column: str) -> list[str] | None:
    names = table.class_names.get(column)
    return list(names) if names else None


def read_tagged_rows(path: str | Path, words_column: str | None = None, tags_column: str | None = None,
                     label_names: Sequence[str] | None = None, need_tags: bool = True) -> TaggedSentences:
    """Sentences of a JSONL or parquet file whose rows hold a list of words and a list of tags."""
    table = read_table(path)
    have = ", ".join(table.columns)
    for flag, name in (("--text-column", words_column), ("--label-column", tags_column)):
        if name is not None and name not in table.columns:
            raise MinibertError(f"{path} has no column {name!r}; its columns are: {have} (check {flag}).")
    words_column = words_column or find_column(table.columns, WORDS_NAMES)
    tags_column = tags_column or find_column(table.columns, TAGS_NAMES)
    if words_column is None:
        raise MinibertError(f"{path} has no column of words (tokens or words); its columns are: {have} (pass "
                            "--text-column).")
    if tags_column is None and need_tags:
        raise MinibertError(f"{path} has no column of tags (ner_tags or tags); its columns are: {have} (pass "
                            "--label-column).")
    names = list(label_names) if label_names else _class_names(table, tags_column) if tags_column else None
    words, tags, sources = [], [] if tags_column else None, []
    for record, line in zip(table.records, table.lines):
        row_words = record.get(words_column)
        if not isinstance(row_words, list) or not all(isinstance(w, str) for w in row_words):
            raise MinibertError(f"line {line} of {path} has {words_column!r} = {str(row_words)[:60]!r}, not a list "
                                "of words; each row needs a list of strings.")
        if not row_words:
            raise MinibertError(f"line {line} of {path} has no words in {words_column!r}; remove the row.")
        words.append(row_words)
        sources.append((str(path), line))
        if tags is not None:
            tags.append(_row_tags(record.get(tags_column), len(row_words), names, str(path), line, tags_column))
    sentences = TaggedSentences(words, tags, sources)
    if tags is not None:
        warn_forbidden_starts(sentences)
    return sentences


def _row_tags(value: Any, n_words: int, names: list[str] | None, path: str, line: int, column: str) -> list[str]:
    if not isinstance(value, list):
        raise MinibertError(f"line {line} of {path} has {column!r} = {str(value)[:60]!r}, not a list of tags.")
    if len(value) != n_words:
        raise MinibertError(f"line {line} of {path} has {n_words} words but {len(value)} tags; give one tag per "
                            "word.")
    out = []
    for tag in value:
        if isinstance(tag, int) and not isinstance(tag, bool):
            if names is None:
                raise MinibertError(f"line {line} of {path} has integer tags ({tag}) and no names for them; pass "
                                    "--label-names O,B-PER,I-PER,... in the order of the ids.")
            if not 0 <= tag < len(names):
                raise MinibertError(f"line {line} of {path} has tag id {tag}, but --label-names names only "
                                    f"{len(names)} ids (0 to {len(names) - 1}).")
            tag = names[tag]
        if not isinstance(tag, str) or not tag.strip():
            raise MinibertError(f"line {line} of {path} has an empty or null tag ({tag!r}); fill it in (O for no "
                                "entity).")
        out.append(tag.strip())
    return out


def read_tagged(path: str | Path, tag_column: int = -1, words_column: str | None = None,
                tags_column: str | None = None, label_names: Sequence[str] | None = None,
                need_tags: bool = True) -> TaggedSentences:
    """Tagged sentences from a CoNLL-style file (by extension), or from JSONL/parquet rows."""
    if is_conll(path):
        return read_conll(path, tag_column, need_tags)
    return read_tagged_rows(path, words_column, tags_column, label_names, need_tags)


def has_word_lists(path: str | Path, column: str | None = None) -> bool:
    """Whether a JSONL/parquet file's rows hold lists of words in `column` (default: tokens or words), the
    token-classification layout."""
    table = read_table(path)
    column = column or find_column(table.columns, WORDS_NAMES)
    return column is not None and isinstance(table.records[0].get(column), list)


def warn_forbidden_starts(sentences: TaggedSentences) -> None:
    """IOB2 begins every entity with B-; data that uses B- and also starts entities with I- mixes schemes, and its
    I- starts are read as starts (as seqeval and conlleval read them), which is worth knowing."""
    assert sentences.tags is not None
    if not any(tag.startswith("B-") for tags in sentences.tags for tag in tags):
        return  # IOB1 (CoNLL-2003's original files): I- starts an entity, B- only splits two adjacent ones
    found = []
    for s, tags in enumerate(sentences.tags):
        for j, tag in enumerate(tags):
            if tag.startswith("I-") and (j == 0 or tags[j - 1][:2] not in ("B-", "I-") or tags[j - 1][2:] != tag[2:]):
                found.append((s, j, tag))
    if found:
        s, j, tag = found[0]
        path = sentences.sources[s][0]
        logger.warning("%s has %d entity(ies) that start with I- although the file uses B- (IOB2 forbids it; first: "
                       "%s at line %d); they are read as starts of entities.", path, len(found), tag,
                       sentences.line_of(s, j))
