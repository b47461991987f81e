"""Property tests of the data readers: random CSV/TSV/JSONL content (quotes, separators, newlines inside fields,
empty cells) either reads back exactly the rows that were written, or ends in one MinibertError that names a line.
Example counts come from the Hypothesis profile chosen in conftest.py (more with --runslow)."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from minibert.data import read_examples
from minibert.errors import MinibertError

# texts with what breaks naive readers: quotes, both separators, line breaks, spaces, non-ASCII, empty strings
TEXT = st.text(alphabet=st.sampled_from(list('ab "\',\t\n\r;xyé漢\u2028')), max_size=12)
LABEL = st.sampled_from(["pos", "neg", "0", "1", "", " ", "nan", '"q"'])
ROWS = st.lists(st.tuples(TEXT, LABEL), min_size=1, max_size=6)


def read_back(name: str, data: bytes) -> tuple[list[str], list[str]] | MinibertError:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            examples, _ = read_examples(path, "text", None, "label")
        except MinibertError as e:
            return e
    return examples.texts, [str(y) for y in examples.labels]


def missing(label: str) -> bool:
    return label.strip().lower() in ("", "nan")


def check(result, rows: list[tuple[str, str]], exact: bool) -> None:
    if isinstance(result, MinibertError):
        message = str(result)
        assert "line " in message or " has a header " in message or " is empty" in message, message
        assert "\n" not in message.strip() or "line " in message
        return
    texts, labels = result
    kept = [(t, y) for t, y in rows if not (t == "" and y == "")]  # a row of empty cells is a blank line
    if exact:
        assert (texts, labels) == ([t for t, _ in kept], [y for _, y in kept])
    assert not any(missing(y) for y in labels)  # a missing label is never read as a class


@given(ROWS)
def test_csv_written_by_the_csv_module_reads_back_or_names_a_line(rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    result = read_back("d.csv", buffer.getvalue().encode("utf-8"))
    if not isinstance(result, MinibertError):
        check(result, rows, exact=True)
    else:  # only a missing label (or a row of empty cells everywhere) may stop a well-formed file
        assert any(missing(y) for _, y in rows) or all(t == "" and y == "" for t, y in rows), result


@given(ROWS)
def test_raw_tsv_reads_back_or_names_a_line(rows) -> None:
    """TSV is read without quote processing: a tab or line break inside a field is the writer's mistake, named."""
    data = "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows)
    result = read_back("d.tsv", data.encode("utf-8"))
    clean = all(not any(c in t + y for c in "\t\n\r") for t, y in rows)
    check(result, rows, exact=clean and not isinstance(result, MinibertError))


@given(ROWS)
def test_jsonl_reads_back_or_names_a_line(rows) -> None:
    data = "".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in rows)
    result = read_back("d.jsonl", data.encode("utf-8"))
    if isinstance(result, MinibertError):
        assert any(missing(y) for _, y in rows), result
    else:
        assert result == ([t for t, _ in rows], [y for _, y in rows])
