"""Reading data files, labels and batching: every bad input gives one sentence naming the file and the line."""

from __future__ import annotations

import gzip
import hashlib
import json
import statistics
from pathlib import Path

import pytest
import torch

from minibert.data import read_examples, read_table, split_off
from minibert.errors import MinibertError
from minibert.labels import Labels
from minibert.training_data import Encoded, collate, length_grouped_batches, sorted_batches


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# --- formats -------------------------------------------------------------------------------------------------


def test_formats_read_the_same_rows(tmp_path: Path) -> None:
    rows = [("a good film", "pos"), ('say "hi", then go', "neg")]
    write(tmp_path / "d.csv", 'text,label\na good film,pos\n"say ""hi"", then go",neg\n')
    write(tmp_path / "d.tsv", 'text\tlabel\na good film\tpos\nsay "hi", then go\tneg\n')
    write(tmp_path / "d.jsonl", "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress((tmp_path / "d.csv").read_bytes()))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}), tmp_path / "d.parquet")
    for name in ("d.csv", "d.tsv", "d.jsonl", "d.csv.gz", "d.parquet"):
        examples, columns = read_examples(tmp_path / name)
        assert (columns.text, columns.label) == ("text", "label")
        assert list(zip(examples.texts, examples.labels)) == rows, name


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(MinibertError, match=r"cannot tell the format of .*d\.txt.*\.csv, \.tsv, \.jsonl"):
        read_table(write(tmp_path / "d.txt", "x"))


# --- empty files, missing columns ---------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(MinibertError, match=r"d\.csv is empty"):
        read_table(write(tmp_path / "d.csv", content))


def test_header_only_file(tmp_path: Path) -> None:
    with pytest.raises(MinibertError, match=r"d\.csv has a header \(text, label\) but no data rows"):
        read_table(write(tmp_path / "d.csv", "text,label\n"))


def test_empty_jsonl_and_gzip(tmp_path: Path) -> None:
    with pytest.raises(MinibertError, match=r"d\.jsonl\.gz is empty"):
        read_table(write(tmp_path / "d.jsonl.gz", gzip.compress(b"")))


def test_missing_column_lists_the_existing_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "review_text,stars\nok,1\n")
    with pytest.raises(MinibertError, match=r"no column 'txt'; its columns are: review_text, stars \(check "
                                            r"--text-column\)"):
        read_examples(path, text="txt")
    with pytest.raises(MinibertError, match=r"no column with a usual text name; its columns are: review_text, "
                                            r"stars \(pass --text-column\)"):
        read_examples(path)


# --- ragged rows, quotes, encodings, line ends --------------------------------------------------


def test_ragged_csv_row_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\nfine,1\nnot, fine,0\n")
    with pytest.raises(MinibertError, match=r"line 3 of .*d\.csv has 3 fields but the header has 2"):
        read_table(path)


def test_tsv_unmatched_quote_is_read_as_text(tmp_path: Path) -> None:
    # SST-2 style: a bare quote must not swallow the following lines
    path = write(tmp_path / "d.tsv", 'sentence\tlabel\n" a quote that never ends\t1\nnext line\t0\nlast\t1\n')
    examples, _ = read_examples(path)
    assert examples.texts == ['" a quote that never ends', "next line", "last"]
    assert [line for _, line in examples.sources] == [2, 3, 4]


def test_csv_unmatched_quote_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\nok,1\n"never closed,0\nmore,1\n')
    with pytest.raises(MinibertError, match=r"line \d+ of .*d\.csv cannot be parsed"):
        read_table(path)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", b"text,label\nok,1\ncaf\xe9,0\n")
    with pytest.raises(MinibertError, match=r"line 3 of .*d\.csv is not valid UTF-8 \(byte 0xe9\); re-save"):
        read_table(path)


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "\ufefftext,label\r\na,1\r\n\"two\r\nlines\",0\r\n".encode())
    examples, columns = read_examples(path)
    assert columns.text == "text"  # not "\ufefftext"
    assert examples.texts == ["a", "two\r\nlines"]
    assert examples.labels == ["1", "0"]


def test_row_count_equals_data_lines_and_blank_lines_are_reported(tmp_path: Path, caplog) -> None:
    path = write(tmp_path / "d.tsv", "sentence\tlabel\n" + "".join(f"s {i}\t{i % 2}\n" for i in range(50))
                 + "\n" + "x\t1\n")
    examples, _ = read_examples(path)
    assert len(examples) == 51
    assert "skipped 1 blank line(s)" in caplog.text


def test_sst2_reads_every_line(shared_dir: Path) -> None:
    path = shared_dir / "data" / "sst2" / "dev.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    examples, _ = read_examples(path)
    assert len(examples) == len(lines) - 1


# --- texts that look like missing values -------------------------------------------------------


def test_na_like_texts_stay_text(tmp_path: Path, caplog) -> None:
    path = write(tmp_path / "d.csv", "text,label\nNA,1\nnull,0\nnan,1\n,0\n   ,1\nNone,0\n")
    examples, _ = read_examples(path)
    assert examples.texts == ["NA", "null", "nan", "", "   ", "None"]
    assert "2 row(s) of" in caplog.text and "first at line 5" in caplog.text


def test_null_text_in_jsonl_is_rejected_with_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": null, "label": 0}\n')
    with pytest.raises(MinibertError, match=r"line 2 of .*d\.jsonl has no text \(null\) in column 'text'"):
        read_examples(path)


def test_missing_label_is_rejected_with_line(tmp_path: Path) -> None:
    with pytest.raises(MinibertError, match=r"line 3 of .*d\.csv has no label \(empty, null or NaN\) in column"):
        read_examples(write(tmp_path / "d.csv", "text,label\na,1\nb,\n"))


# --- labels ------------------------------------------------------------------------------------


def examples_with(tmp_path: Path, labels: list, name: str = "t.jsonl"):
    path = write(tmp_path / name, "".join(json.dumps({"text": "x", "label": y}) + "\n" for y in labels))
    return read_examples(path)[0]


def test_numeric_labels_keep_numeric_order(tmp_path: Path) -> None:
    train = read_examples(write(tmp_path / "d.csv", "text,label\n" + "".join(f"x,{i}\n" for i in (10, 2, 0, 1))
                                + "".join(f"x,{i}\n" for i in range(3, 10))))[0]
    labels = Labels.from_training(train.labels)
    assert labels.problem_type == "single_label_classification"
    assert labels.names == [str(i) for i in range(11)]
    assert labels.encode(train, "training")[:4].tolist() == [10, 2, 0, 1]


def test_string_labels_and_unseen_validation_labels(tmp_path: Path) -> None:
    train = examples_with(tmp_path, ["pos", "neg", "pos"])
    labels = Labels.from_training(train.labels)
    assert labels.names == ["neg", "pos"] and labels.id2label == {0: "neg", 1: "pos"}
    val = examples_with(tmp_path, ["pos", "neutral", "meh"], "v.jsonl")
    with pytest.raises(MinibertError, match=r"validation data in .*v\.jsonl has labels never seen in training: "
                                            r"'neutral' \(line 2\), 'meh' \(line 3\); the model knows only neg, pos"):
        labels.encode(val, "validation")


def test_float_labels_are_regression_and_lists_multi_label(tmp_path: Path) -> None:
    reg = Labels.from_training(examples_with(tmp_path, [0.5, 1, 3.25]).labels)
    assert reg.problem_type == "regression" and reg.num_labels == 1
    multi_ex = examples_with(tmp_path, [["a", "b"], [], ["c"]])
    multi = Labels.from_training(multi_ex.labels)
    assert multi.problem_type == "multi_label_classification" and multi.names == ["a", "b", "c"]
    assert multi.encode(multi_ex, "training").tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_single_class_warns(tmp_path: Path, caplog) -> None:
    Labels.from_training(["pos", "pos"])
    assert "single class (pos)" in caplog.text


# --- batching ------------------------------------------------------------------------------------------------


def test_length_grouped_batches_cover_each_index_once_and_reshuffle() -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    epoch0 = length_grouped_batches(lengths, 16, seed=1, epoch=0)
    assert sorted(i for b in epoch0 for i in b) == list(range(1000))
    assert epoch0 == length_grouped_batches(lengths, 16, seed=1, epoch=0)
    assert epoch0 != length_grouped_batches(lengths, 16, seed=1, epoch=1)
    # grouping: batches pad far less than random batches would
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in epoch0)
    assert pad < 0.2 * sum(lengths)


def test_grouped_batches_are_unchanged_by_batch_order() -> None:
    """--batch-order grouped (the default) is the order from before the flag, bit for bit (hashes computed with the
    code before it)."""
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    for kwargs, digest in ((dict(seed=1, epoch=0), "3490fc2da7935872"), (dict(seed=1, epoch=1), "1f05311c8ffe9317"),
                           (dict(seed=3, epoch=2, rank=1, world_size=3), "8b68c0416c503b94")):
        batches = length_grouped_batches(lengths, 16, **kwargs)
        assert batches == length_grouped_batches(lengths, 16, **kwargs, order="grouped")
        assert hashlib.sha256(repr(batches).encode()).hexdigest()[:16] == digest


def spread(lengths: list[int], batches: list[list[int]]) -> float:
    """Mean over batches of (longest - shortest) length in the batch."""
    return statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)


def test_random_batches_are_a_permutation_of_mixed_lengths() -> None:
    """--batch-order random: every index once per epoch, the same for the same (seed, epoch), another order in
    another epoch, and batches that do not depend on the lengths (as a random sampler's), so they mix lengths."""
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    epoch0 = length_grouped_batches(lengths, 16, seed=1, epoch=0, order="random")
    assert sorted(i for b in epoch0 for i in b) == list(range(1000)) and len(epoch0) == 63
    assert epoch0 == length_grouped_batches(lengths, 16, seed=1, epoch=0, order="random")
    assert epoch0 != length_grouped_batches(lengths, 16, seed=1, epoch=1, order="random")
    assert epoch0 != length_grouped_batches(lengths, 16, seed=2, epoch=0, order="random")
    others = length_grouped_batches([1] * 1000, 16, seed=1, epoch=0, order="random")
    assert [sorted(b) for b in epoch0] == [sorted(b) for b in others]  # the same batches whatever the lengths
    grouped = length_grouped_batches(lengths, 16, seed=1, epoch=0)
    assert spread(lengths, epoch0) > 10 * spread(lengths, grouped)  # 89 tokens against 3
    r0 = length_grouped_batches(lengths[:103], 8, 0, 0, rank=0, world_size=2, order="random")
    r1 = length_grouped_batches(lengths[:103], 8, 0, 0, rank=1, world_size=2, order="random")
    assert len(r0) == len(r1) == 7 and set(i for b in r0 + r1 for i in b) == set(range(103))
    data = Encoded([[2] * n for n in lengths], [[0] * n for n in lengths], None, batch_order="random")
    assert data.epoch_batches(16, 1, 0, 0, 1) == epoch0  # what sequence classification trains on


def test_ranks_split_batches_evenly() -> None:
    lengths = list(range(1, 104))  # 103 examples -> 13 batches of 8: padded to 14 for two ranks
    r0 = length_grouped_batches(lengths, 8, 0, 0, rank=0, world_size=2)
    r1 = length_grouped_batches(lengths, 8, 0, 0, rank=1, world_size=2)
    assert len(r0) == len(r1) == 7
    assert set(i for b in r0 + r1 for i in b) == set(range(103))
    evals = sorted_batches(lengths, 8, 0, 2) + sorted_batches(lengths, 8, 1, 2)
    assert sorted(i for b in evals for i in b) == list(range(103))


def test_collate_pads_and_masks() -> None:
    data = Encoded([[2, 5, 3], [2, 3]], [[0, 0, 0], [0, 0]], torch.tensor([1, 0]))
    batch = collate(data, [1, 0])
    assert batch["input_ids"].tolist() == [[2, 3, 0], [2, 5, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["labels"].tolist() == [0, 1]


def test_split_off_is_seeded_and_disjoint(tmp_path: Path) -> None:
    examples = examples_with(tmp_path, list(range(20)))
    train, val = split_off(examples, 0.25, seed=3)
    assert len(train) == 15 and len(val) == 5
    assert {line for _, line in train.sources}.isdisjoint(line for _, line in val.sources)
    assert split_off(examples, 0.25, seed=3)[1].sources == val.sources


def test_split_seed_fixes_the_validation_rows_across_training_seeds(tmp_path: Path) -> None:
    """--split-seed: runs with different --seed hold out the same rows (by default the split follows --seed)."""
    from minibert.finetune import Options, load_splits

    path = write(tmp_path / "d.csv", "text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(40)))

    def held_out(**flags: int) -> list[str]:
        val = load_splits(Options(train_file=str(path), validation_split=0.25, **flags), main=False)[1]
        return val.texts

    assert held_out(seed=1, split_seed=7) == held_out(seed=2, split_seed=7) == held_out(seed=7)
    assert held_out(seed=1) != held_out(seed=2)
    assert len(held_out(seed=1, split_seed=7)) == 10


def test_hub_class_label_names_replace_ids(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {"text": {"dtype": "string", "_type": "Value"},
                "label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}
    table = pa.table({"text": ["bad", "good"], "label": [0, 1]})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    examples, _ = read_examples(tmp_path / "train-00000-of-00001.parquet")
    assert examples.labels == ["neg", "pos"]


def test_imdb_csv_with_quoted_newlines_reads_every_row(shared_dir: Path) -> None:
    examples, _ = read_examples(shared_dir / "data" / "imdb" / "train.csv")
    assert len(examples) == 25_000 and sorted(set(examples.labels)) == ["0", "1"]


def test_text_pairs_are_detected(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "sentence1\tsentence2\tlabel\nA man sleeps.\tA person rests.\tentailment\n")
    examples, columns = read_examples(path)
    assert (columns.text, columns.pair) == ("sentence1", "sentence2")
    assert examples.pairs == ["A person rests."]


def test_a_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MinibertError, match="the header of .*d.csv names column 'text' more than once"):
        read_table(write(tmp_path / "d.csv", "text,label,text\na,1,b\n"))


@pytest.mark.parametrize("label", ["NaN", "nan", float("nan"), None])
def test_nan_labels_are_missing_values_not_a_class(tmp_path: Path, label) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 1}) + "\n" + json.dumps({"text": "b", "label": label}) + "\n")
    with pytest.raises(MinibertError, match=r"line 2 of .* has no label \(empty, null or NaN\)"):
        read_examples(path)


def test_labels_are_compared_as_written(tmp_path: Path) -> None:
    examples, _ = read_examples(write(tmp_path / "d.csv", "text,label\na,007\nb,7\nc,7\n"))
    assert Labels.from_training(examples.labels).names == ["007", "7"]  # two classes (numeric order, then text)
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [("a", 1), ("b", 1.0), ("c", 2)]))
    examples, _ = read_examples(path)
    assert Labels.from_training(examples.labels).names == ["1", "2"]  # JSON numbers 1 and 1.0 are one class


def test_jsonl_strings_may_hold_raw_line_separators(tmp_path: Path) -> None:
    rows = [{"text": "one\u2028two\u2029three\x85four", "label": "a"}, {"text": "plain", "label": "b"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    examples, _ = read_examples(path)
    assert examples.texts == [r["text"] for r in rows] and examples.sources[1][1] == 2
