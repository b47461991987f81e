"""A tokenizer folder as transformers 5 saves it (tokenizer.json, no vocab.txt) reads as transformers reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from minibert import BertTokenizer
from minibert.errors import MinibertError
from tests.tiny import write_tiny_model

TEXTS = ["The MOVIE was good", "Héllo, wörld! naïve café", "数据 and 漢字 mixed", "unknownword xyzzy", ""]
PAIRS = ["a plot", "Bad ACTOR", "是", "the end", "x"]


@pytest.mark.parametrize("lowercase", [True, False])
def test_tokenizer_json_only_equals_transformers(tmp_path: Path, lowercase: bool) -> None:
    source = write_tiny_model(tmp_path / "tiny")
    reference = transformers.BertTokenizer(str(source / "vocab.txt"), do_lower_case=lowercase, model_max_length=64)
    reference.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "vocab.txt").exists() and (tmp_path / "saved" / "tokenizer.json").is_file()
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    ours = BertTokenizer.from_pretrained(tmp_path / "saved")
    assert (ours.do_lower_case, ours.model_max_length, len(ours)) == (lowercase, 64, len(reference))
    expected = reference(TEXTS, PAIRS, truncation=True, max_length=12)
    got = ours(TEXTS, PAIRS, truncation=True, max_length=12)
    assert got["input_ids"] == expected["input_ids"] and got["token_type_ids"] == expected["token_type_ids"]


def test_minilm_tokenizer_json(tmp_path: Path, minilm_dir: Path) -> None:
    transformers.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "vocab.txt").exists()
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    ours = BertTokenizer.from_pretrained(tmp_path / "saved")
    assert ours(TEXTS, PAIRS)["input_ids"] == reference(TEXTS, PAIRS)["input_ids"]


def test_tokenizer_json_that_is_not_wordpiece(tmp_path: Path) -> None:
    folder = tmp_path / "bpe"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    with pytest.raises(MinibertError, match="is not a BERT WordPiece tokenizer"):
        BertTokenizer.from_pretrained(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(MinibertError, match="has no vocab.txt"):
        BertTokenizer.from_pretrained(folder)
