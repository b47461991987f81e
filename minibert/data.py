"""From files to examples: reading CSV/TSV/JSONL/parquet (or a Hub dataset) into texts, text pairs and raw labels.

Labels become ids in `labels.py`; examples become token ids and batches in `training_data.py`.

Every row read keeps the line it came from, so any complaint about the data names the file and the line. Nothing is
dropped quietly: blank lines are the only rows skipped, and their count is reported.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import logging
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from minibert.errors import MinibertError

logger = logging.getLogger("minibert")

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
TEXT_NAMES = ("text", "sentence", "sentence1", "question1", "premise", "question", "review", "content", "document")
PAIR_NAMES = {"sentence1": "sentence2", "question1": "question2", "premise": "hypothesis", "question": "sentence"}
LABEL_NAMES = ("label", "labels", "sentiment", "class", "target", "score")


# --- reading files -----------------------------------------------------------------------------------------------


@dataclass
class Table:
    """The raw rows of one file: `records[i]` came from line `lines[i]` (for parquet, row number) of `path`."""

    path: str
    columns: list[str]
    records: list[dict[str, Any]]
    lines: list[int]
    blank_lines: int = 0
    class_names: dict[str, list[str]] = field(default_factory=dict)  # from a Hub parquet file's ClassLabel features


def file_format(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    fmt = FORMATS.get(Path(name).suffix)
    if fmt is None or (fmt == "parquet" and str(path).lower().endswith(".gz")):
        raise MinibertError(f"cannot tell the format of {path} from its extension; use .csv, .tsv, .jsonl or "
                            ".parquet (.gz accepted for the text formats).")
    return fmt


def read_lines(raw: BinaryIO, where: str, max_line_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """(number, text) of each line of a binary stream, read one at a time and decoded as UTF-8 (a BOM dropped), so
    input of any size is read in bounded memory; a line over `max_line_bytes` is refused before it is read whole.
    Bad bytes are reported with their line of `where`."""
    number = 0
    while True:
        data = raw.readline(max_line_bytes + 1) if max_line_bytes else raw.readline()
        if not data:
            return
        number += 1
        if max_line_bytes and len(data) > max_line_bytes:
            raise MinibertError(f"line {number} of {where} is longer than {max_line_bytes:,} bytes; split that text, "
                                "or raise --max-text-bytes.")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MinibertError(f"line {number} of {where} is not valid UTF-8 (byte 0x{data[e.start]:02x}); re-save "
                                "it as UTF-8.") from None
        yield number, text.removeprefix("\ufeff") if number == 1 else text  # a BOM (Excel writes one) is no text


def read_file_lines(path: Path, max_line_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """`read_lines` of a file (gunzipped if .gz); a file with nothing but whitespace is an error."""
    try:
        raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise MinibertError(f"{path} does not exist; check the path.") from None
    except IsADirectoryError:
        raise MinibertError(f"{path} is a folder; pass a data file.") from None
    content = False
    with raw:
        try:
            for number, text in read_lines(raw, str(path), max_line_bytes):
                content = content or bool(text.strip())
                yield number, text
        except IsADirectoryError:
            raise MinibertError(f"{path} is a folder; pass a data file.") from None
        except (gzip.BadGzipFile, EOFError) as e:
            raise MinibertError(f"{path} is not a valid gzip file ({e}); re-compress it or pass it "
                                "uncompressed.") from None
    if not content:
        raise MinibertError(f"{path} is empty; a data file needs a header (or JSON objects) and at least one row.")


@dataclass
class _Rows:
    """What a reader yields: records with their lines, the columns seen, blank lines skipped."""

    columns: dict[str, None] = field(default_factory=dict)
    blank: int = 0


def _delimited_records(path: Path, lines: Iterator[tuple[int, str]], delimiter: str, quoting: bool, rows: _Rows
                       ) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader((text for _, text in lines), delimiter=delimiter, strict=True,
                        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    header: list[str] | None = None
    previous_end = 0
    try:
        for row in reader:
            line = previous_end + 1
            previous_end = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip() and header is not None and len(header) > 1):
                rows.blank += header is not None
                continue
            if header is None:
                header = [name.strip() for name in row]
                twice = sorted({name for name in header if header.count(name) > 1})
                if twice:
                    raise MinibertError(f"the header of {path} names column {twice[0]!r} more than once; rename one "
                                        "of them (a row would silently keep only the last).")
                rows.columns = dict.fromkeys(header)
                continue
            if len(row) != len(header):
                hint = " (an unquoted quote or delimiter inside a text?)" if quoting else ""
                raise MinibertError(f"line {line} of {path} has {len(row)} fields but the header has {len(header)}"
                                    f"{hint}; fix that row.")
            yield line, dict(zip(header, row))
    except csv.Error as e:
        raise MinibertError(f"line {reader.line_num} of {path} cannot be parsed ({e}); fix the quoting there, "
                            "or for TSV read without quote processing.") from None
    if header is None:
        raise MinibertError(f"{path} is empty; it needs a header row and at least one data row.")


def _jsonl_records(path: Path, lines: Iterator[tuple[int, str]], rows: _Rows) -> Iterator[tuple[int, dict]]:
    # JSON Lines ends lines with \n alone (`read_lines` splits there): str.splitlines() would also split at
    # U+2028/U+2029 (and other separators) that json.dumps(ensure_ascii=False) leaves raw inside strings
    for number, line in lines:
        if not line.strip():
            rows.blank += 1
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MinibertError(f"line {number} of {path} is not valid JSON ({e.msg}); each line must be one "
                                "JSON object.") from None
        if not isinstance(record, dict):
            raise MinibertError(f"line {number} of {path} is a JSON {type(record).__name__}, not an object; each "
                                "line must be one JSON object such as {\"text\": ..., \"label\": ...}.")
        rows.columns.update(dict.fromkeys(record))
        yield number, record


def _parquet_tables(path: Path, rows: int | None) -> Iterator[Table]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MinibertError(f"reading {path} needs pyarrow; install it with: pip install \"minibert[data]\".") from None
    try:
        file = pq.ParquetFile(path)
    except FileNotFoundError:
        raise MinibertError(f"{path} does not exist; check the path.") from None
    except Exception as e:  # pyarrow raises its own error types for truncated or foreign files
        raise MinibertError(f"{path} is not a readable parquet file ({e}).") from None
    if file.metadata.num_rows == 0:
        raise MinibertError(f"{path} has columns ({', '.join(file.schema_arrow.names)}) but no rows.")
    class_names = _class_names(file.schema_arrow.metadata or {})
    first = 1
    try:
        for batch in file.iter_batches(batch_size=rows or file.metadata.num_rows):
            columns = batch.to_pydict()
            records = [dict(zip(columns, values)) for values in zip(*columns.values())]
            yield Table(str(path), list(columns), records, list(range(first, first + len(records))),
                        class_names=class_names)
            first += len(records)
    except OSError as e:
        raise MinibertError(f"{path} is not a readable parquet file ({e}).") from None


def _class_names(metadata: dict[bytes, bytes]) -> dict[str, list[str]]:
    """Label names that `datasets` stores in parquet metadata (IMDB: 0 -> "neg", 1 -> "pos")."""
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError, TypeError):
        return {}
    names = {}
    for name, f in features.items():
        if isinstance(f, dict) and f.get("_type") in ("Sequence", "List"):  # a ClassLabel per word (NER tags)
            f = f.get("feature")
        if isinstance(f, dict) and f.get("_type") == "ClassLabel" and isinstance(f.get("names"), list):
            names[name] = f["names"]
    return names


def iter_tables(path: str | Path, quoted_tsv: bool = False, rows: int | None = None,
                max_line_bytes: int | None = None) -> Iterator[Table]:
    """Read a data file, by extension, as Tables of at most `rows` records (None: one Table), one at a time, so that
    `predict` and `embed` run over files of any size in bounded memory. TSV is read without quote processing (SST-2
    texts contain bare quotes). `blank_lines` of each Table counts the blank lines skipped so far."""
    path = Path(path)
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _parquet_tables(path, rows)
        return
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) would reject a long document
    seen = _Rows()
    lines = read_file_lines(path, max_line_bytes)
    records = (_jsonl_records(path, lines, seen) if fmt == "jsonl" else
               _delimited_records(path, lines, "," if fmt == "csv" else "\t", fmt == "csv" or quoted_tsv, seen))
    total = 0
    while True:
        part = list(itertools.islice(records, rows)) if rows else list(records)
        if not part:
            break
        total += len(part)
        yield Table(str(path), list(seen.columns), [r for _, r in part], [line for line, _ in part], seen.blank)
        if not rows:
            break
    if total == 0:
        if fmt == "jsonl":
            raise MinibertError(f"{path} has no JSON objects; it needs at least one row.")
        raise MinibertError(f"{path} has a header ({', '.join(seen.columns)}) but no data rows.")


def read_table(path: str | Path, quoted_tsv: bool = False) -> Table:
    """A whole data file as one Table (`iter_tables`)."""
    return next(iter_tables(path, quoted_tsv))


# --- columns -----------------------------------------------------------------------------------------------------


@dataclass
class Columns:
    text: str
    pair: str | None
    label: str | None


def find_column(columns: list[str], candidates: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[name] for name in candidates if name in lower), None)


def choose_columns(table: Table, text: str | None, pair: str | None, label: str | None,
                   need_label: bool = True) -> Columns:
    """Use the named columns, or detect them among common names; a missing one lists the columns that exist."""
    have = ", ".join(table.columns)
    for flag, name in (("--text-column", text), ("--text-pair-column", pair), ("--label-column", label)):
        if name is not None and name not in table.columns:
            raise MinibertError(f"{table.path} has no column {name!r}; its columns are: {have} (check {flag}).")
    text = text or find_column(table.columns, TEXT_NAMES)
    if text is None:
        raise MinibertError(f"{table.path} has no column with a usual text name; its columns are: {have} "
                            "(pass --text-column).")
    if pair is None and text.lower() in PAIR_NAMES:
        pair = find_column(table.columns, (PAIR_NAMES[text.lower()],))
    if label is None and need_label:
        label = find_column(table.columns, LABEL_NAMES)
        if label is None:
            raise MinibertError(f"{table.path} has no column with a usual label name; its columns are: {have} "
                                "(pass --label-column).")
    return Columns(text, pair, label)


@dataclass
class Examples:
    """Texts (and optional second texts and raw labels) with the file and line each one came from."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any] | None
    sources: list[tuple[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> Examples:
        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in indices]

        return Examples(pick(self.texts), pick(self.pairs), pick(self.labels), pick(self.sources))


def _text(value: Any, path: str, line: int, column: str) -> str:
    if value is None:
        raise MinibertError(f"line {line} of {path} has no text (null) in column {column!r}; fill it in or remove "
                            "the row.")
    # never float() a text: "NA", "null" and "nan" are words here, not missing values
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _missing(label: Any) -> bool:
    """A label that is no label: null, empty, or NaN (how pandas writes a missing value, as a float or "nan")."""
    if label is None or (isinstance(label, float) and label != label):
        return True
    return isinstance(label, str) and label.strip().lower() in ("", "nan")


def examples_from(table: Table, columns: Columns) -> Examples:
    texts, pairs, labels = [], [] if columns.pair else None, [] if columns.label else None
    for record, line in zip(table.records, table.lines):
        for name in (columns.text, columns.pair, columns.label):
            if name is not None and name not in record:
                raise MinibertError(f"line {line} of {table.path} has no field {name!r}; every row needs it.")
        texts.append(_text(record[columns.text], table.path, line, columns.text))
        if pairs is not None:
            pairs.append(_text(record[columns.pair], table.path, line, columns.pair))
        if labels is not None:
            value = record[columns.label]
            if _missing(value):
                raise MinibertError(f"line {line} of {table.path} has no label (empty, null or NaN) in column "
                                    f"{columns.label!r}; fill it in or remove the row.")
            names = table.class_names.get(columns.label)
            if names and isinstance(value, int) and 0 <= value < len(names):
                value = names[value]
            labels.append(value)
    empty = [line for text, line in zip(texts, table.lines) if not text.strip()]
    if empty:
        logger.warning("%d row(s) of %s have an empty text (first at line %d); they are kept as empty texts.",
                       len(empty), table.path, empty[0])
    return Examples(texts, pairs, labels, [(table.path, line) for line in table.lines])


def read_examples(path: str | Path, text: str | None = None, pair: str | None = None, label: str | None = None,
                  need_label: bool = True, quoted_tsv: bool = False) -> tuple[Examples, Columns]:
    table = read_table(path, quoted_tsv)
    if table.blank_lines:
        logger.warning("skipped %d blank line(s) in %s.", table.blank_lines, path)
    columns = choose_columns(table, text, pair, label, need_label)
    return examples_from(table, columns), columns


def iter_examples(source: str, text: str | None, pair: str | None, label: str | None, quoted_tsv: bool,
                  chunk: int, max_text_bytes: int | None, find_label: bool = False) -> Iterator[Examples]:
    """`predict`'s and `embed`'s input, `chunk` rows at a time: "-" for stdin, one text per line (blank lines are
    empty texts), or a data file's columns (chosen from its first rows; with `find_label`, a label column is picked
    up when there is one, for scoring)."""
    if source == "-":
        # a text stream without bytes underneath (an embedding application's, a test's) is in memory already
        raw = getattr(sys.stdin, "buffer", None) or io.BytesIO(sys.stdin.read().encode("utf-8"))
        lines = read_lines(raw, "<stdin>", max_text_bytes)
        while part := [(n, line.rstrip("\r\n")) for n, line in itertools.islice(lines, chunk)]:
            yield Examples([line for _, line in part], None, None, [("<stdin>", n) for n, _ in part])
        return
    columns = None
    for table in iter_tables(source, quoted_tsv, chunk, max_text_bytes):
        if columns is None:
            columns = choose_columns(table, text, pair, label, need_label=False)
            if find_label:
                columns.label = columns.label or find_column(table.columns, LABEL_NAMES)
        yield examples_from(table, columns)


# --- Hub datasets ------------------------------------------------------------------------------------------------

SPLIT_PATTERN = re.compile(r"(?:^|/)(train|validation|valid|dev|test)(?:[-_.]|/|$)")


def hub_dataset_files(repo_id: str, revision: str | None = None) -> dict[str, list[Path]]:
    """The parquet files of a Hub dataset by split ("train", "validation", "test"), from the repo or its
    `refs/convert/parquet` branch; read from the local cache when offline."""
    from huggingface_hub import snapshot_download

    from minibert.hub import hub_errors

    for rev in ([revision] if revision else [None, "refs/convert/parquet"]):
        with hub_errors(repo_id, rev, "dataset"):
            folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=rev, allow_patterns=["*.parquet"]))
        files = sorted(p for p in folder.rglob("*.parquet"))
        configs = sorted({p.relative_to(folder).parent for p in files})
        if not files:
            continue
        if len(configs) > 1:
            logger.warning("dataset %s has several configurations (%s); using %s.", repo_id,
                           ", ".join(map(str, configs)), configs[0])
        splits: dict[str, list[Path]] = {}
        for p in files:
            match = SPLIT_PATTERN.search(p.relative_to(folder).as_posix())
            if p.relative_to(folder).parent == configs[0] and match:
                name = {"valid": "validation", "dev": "validation"}.get(match.group(1), match.group(1))
                splits.setdefault(name, []).append(p)
        if "train" in splits:
            return splits
    raise MinibertError(f"dataset {repo_id!r} has no parquet files with a train split; pass --train-file instead.")


def read_hub_split(files: list[Path], columns: Columns | None, text: str | None, pair: str | None,
                   label: str | None) -> tuple[Examples, Columns]:
    tables = [read_table(p) for p in files]
    columns = columns or choose_columns(tables[0], text, pair, label)
    parts = [examples_from(t, columns) for t in tables]
    merged = Examples([], [] if columns.pair else None, [] if columns.label else None, [])
    for part in parts:
        merged.texts += part.texts
        merged.sources += part.sources
        if merged.pairs is not None:
            merged.pairs += part.pairs
        if merged.labels is not None:
            merged.labels += part.labels
    return merged, columns


def split_off(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Hold out a random `fraction` of the examples for validation (the same ones for the same seed)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = max(1, round(len(order) * fraction))
    if n >= len(order):
        raise MinibertError(f"--validation-split {fraction} leaves no training data out of {len(order)} rows; "
                            "use a smaller fraction or pass --validation-file.")
    return examples.select(sorted(order[n:])), examples.select(sorted(order[:n]))
