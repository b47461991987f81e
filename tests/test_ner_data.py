"""Reading tagged sentences: CoNLL columns, JSONL and parquet rows; each bad file named by file and line."""

import json
import logging

import pytest

from minibert.conll import read_tagged
from minibert.errors import MinibertError

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_conll_columns(tmp_path):
    s = read_tagged(write(tmp_path / "a.conll", CONLL))
    assert s.words == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert s.tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert [line for _, line in s.sources] == [3, 7] and s.line_of(1, 1) == 8
    assert read_tagged(write(tmp_path / "a.iob", CONLL), tag_column=1).tags[0] == ["NNP", "VBZ", "JJ"]


def test_jsonl_rows_strings_and_ids(tmp_path):
    rows = [{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}, {"tokens": ["Peter"], "ner_tags": ["B-PER"]}]
    path = write(tmp_path / "a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert read_tagged(path).tags == [["B-ORG", "O"], ["B-PER"]]
    ids = [{"words": ["EU", "rejects"], "tags": [2, 0]}]
    path = write(tmp_path / "b.jsonl", json.dumps(ids[0]) + "\n")
    assert read_tagged(path, label_names=["O", "B-PER", "B-ORG"]).tags == [["B-ORG", "O"]]
    with pytest.raises(MinibertError, match=r"line 1 of .*b.jsonl has integer tags .* --label-names"):
        read_tagged(path)


def test_parquet_rows(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"tokens": [["EU", "rejects"]], "ner_tags": [["B-ORG", "O"]]}), path)
    assert read_tagged(path).words == [["EU", "rejects"]]
    # integer tags named by the `datasets` features stored in the file (a Sequence of ClassLabel, as on the Hub)
    features = {"tokens": {"_type": "Sequence", "feature": {"_type": "Value", "dtype": "string"}},
                "ner_tags": {"_type": "Sequence", "feature": {"_type": "ClassLabel", "names": ["O", "B-ORG"]}}}
    table = pa.table({"tokens": [["EU", "rejects"]], "ner_tags": [[1, 0]]})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path)
    assert read_tagged(path).tags == [["B-ORG", "O"]]


@pytest.mark.parametrize("name, text, message", [
    ("one.conll", "EU B-ORG\nrejects\n", r"line 2 of .*one.conll has 1 column\(s\), so no tag"),
    ("tab.conll", "EU\tNNP\tB-ORG\nrejects\tVBZ\t\n", r"line 2 of .*tab.conll has an empty tag for the word "
                                                       r"'rejects'"),
    ("empty.txt", "-DOCSTART- -X- O\n\n\n", r"empty.txt has no sentences"),
    ("count.jsonl", '{"tokens": ["a", "b"], "ner_tags": ["O"]}\n', r"line 1 of .*count.jsonl has 2 words but 1 tags"),
    ("null.jsonl", '{"tokens": ["a"], "ner_tags": [null]}\n', r"line 1 of .*null.jsonl has an empty or null tag"),
    ("cols.jsonl", '{"text": "a b", "label": 1}\n', r"cols.jsonl has no column of words"),
])
def test_bad_files_one_sentence(tmp_path, name, text, message):
    with pytest.raises(MinibertError, match=message):
        read_tagged(write(tmp_path / name, text))


def test_i_start_in_iob2_warns_with_line(tmp_path, caplog):
    text = "EU B-ORG\nrejects O\nGerman I-MISC\n"
    with caplog.at_level(logging.WARNING, logger="minibert"):
        read_tagged(write(tmp_path / "a.conll", text))
    assert "1 entity(ies) that start with I-" in caplog.text and "I-MISC at line 3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minibert"):
        read_tagged(write(tmp_path / "iob1.conll", "EU I-ORG\nrejects O\nGerman I-MISC\n"))  # IOB1: allowed
    assert caplog.text == ""
