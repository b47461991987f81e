"""Sentence embeddings (minibert.pooling, minibert.embed) against sentence-transformers and hand computations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from minibert import SentenceEncoder
from minibert.data import read_table
from minibert.dynamic_batching import Row, plan_batches, run_offline
from minibert.embed import main as embed_main
from minibert.errors import MinibertError
from minibert.models import BertModel
from minibert.pooling import Pooling, read_pooling
from tests.tiny import write_tiny_model

MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
           {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]


def write_tiny_encoder(folder: Path) -> Path:
    """tiny.py's random BERT saved as a plain encoder (architectures BertModel), as embedding models are."""
    write_tiny_model(folder)
    BertModel.from_pretrained(folder, add_pooling_layer=False).save_pretrained(folder)
    return folder


def pooling_config(mode: str, dim: int) -> dict:
    keys = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
            "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
    return {"word_embedding_dimension": dim, **{key: name == mode for name, key in keys.items()}}


def write_st_layout(folder: Path, source: Path, mode: str = "mean", normalize: bool = True,
                    max_seq_length: int = 256) -> Path:
    """A sentence-transformers folder: the model files of `source` (linked), modules.json and the pooling config."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    modules = MODULES if normalize else MODULES[:2]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    dim = json.loads((source / "config.json").read_text())["hidden_size"]
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config(mode, dim)))
    if normalize:
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                  "do_lower_case": False}))
    return folder


def sst2_texts(shared_dir: Path, n: int) -> list[str]:
    table = read_table(shared_dir / "data" / "sst2" / "dev.tsv")
    return [str(record["sentence"]) for record in table.records[:n]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny") / "model")


def test_minilm_equals_sentence_transformers(tmp_path: Path, minilm_dir: Path, shared_dir: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = write_st_layout(tmp_path / "st", minilm_dir)
    long_text = " ".join(["an overlong review that keeps going"] * 80)  # > 256 tokens: both truncate at 256
    texts = sst2_texts(shared_dir, 40) + [long_text, "a", "Héllo, wörld!"]
    reference = st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True,
                                                                         batch_size=16)
    encoder = SentenceEncoder.from_pretrained(folder)
    assert encoder.pooling == Pooling("mean", True, 256, encoder.pooling.source) and encoder.pooling.from_files
    ours = encoder.encode(texts, max_batch_tokens=1024)
    assert ours.shape == reference.shape
    assert (ours - reference.cpu()).abs().max().item() < 1e-5
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(texts)), atol=1e-6)


@pytest.mark.parametrize("attn_impl", ["sdpa", "unpadded"])  # padding positions hold values, or zeros
@pytest.mark.parametrize("mode", ["cls", "mean", "max", "mean_sqrt_len"])
def test_pooling_modes_by_hand(tmp_path: Path, tiny: Path, mode: str, attn_impl: str) -> None:
    """Each mode on a padded or packed batch equals the same formula applied to each text run alone."""
    folder = write_st_layout(tmp_path / mode, tiny, mode=mode, normalize=False, max_seq_length=64)
    encoder = SentenceEncoder.from_pretrained(folder, attn_impl=attn_impl)
    assert (encoder.pooling.mode, encoder.pooling.normalize, encoder.max_length) == (mode, False, 64)
    texts = ["good", "the movie was very fun and the plot was great", "bad film", "not dull " * 50]
    ours = encoder.encode(texts)
    model = BertModel.from_pretrained(tiny, add_pooling_layer=False, attn_impl="math")
    for text, vector in zip(texts, ours):
        ids = encoder.tokenizer(text, truncation=True, max_length=64, return_tensors="pt")["input_ids"]
        hidden = model(input_ids=ids).last_hidden_state[0]  # (t, h), one text, no padding
        expected = {"cls": hidden[0], "mean": hidden.mean(0), "max": hidden.amax(0),
                    "mean_sqrt_len": hidden.sum(0) / len(hidden) ** 0.5}[mode]
        assert (vector - expected).abs().max().item() < 1e-5


def test_default_pooling_without_files(tiny: Path) -> None:
    pooling = read_pooling(tiny)
    assert (pooling.mode, pooling.normalize, pooling.from_files) == ("mean", True, False)
    assert "default" in pooling.source
    vectors = SentenceEncoder.from_pretrained(tiny).encode(["good movie", "awful plot"])
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-6)


def test_unsupported_sentence_transformers_folders(tmp_path: Path, tiny: Path) -> None:
    folder = write_st_layout(tmp_path / "dense", tiny)
    modules = [*MODULES, {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(MinibertError, match="lists Dense; minibert runs only"):
        read_pooling(folder)
    folder = write_st_layout(tmp_path / "two", tiny)
    config = {**pooling_config("mean", 32), "pooling_mode_cls_token": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(MinibertError, match="asks for cls, mean pooling"):
        read_pooling(folder)
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(MinibertError, match="not readable JSON"):
        read_pooling(folder)
    with pytest.raises(MinibertError, match="list of texts"):
        SentenceEncoder.from_pretrained(tiny).encode("one text")


def test_plan_batches_and_run_offline() -> None:
    lengths = [5, 30, 12, 7, 30, 3, 50]
    batches = plan_batches(lengths, 60)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 60 or len(b) == 1 for b in batches)
    assert batches == [[6], [1, 4], [2, 3, 0, 5]]  # longest first, cut where the next would overflow
    assert plan_batches(lengths, 60, max_batch_size=2) == [[6], [1, 4], [2, 3], [0, 5]]  # and at 2 texts
    rows = [Row(list(range(n)), [0] * n) for n in lengths]
    assert run_offline(rows, lambda batch: [len(r) for r in batch], 60) == lengths


def test_embed_cli_writes_what_encode_returns(tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture,
                                              caplog: pytest.LogCaptureFixture) -> None:
    texts = ["good movie", "the plot was awful", "fine"]
    (tmp_path / "in.csv").write_text("text\n" + "\n".join(texts) + "\n")
    out = tmp_path / "out.jsonl"
    assert embed_main(["--model", str(tiny), "--input", str(tmp_path / "in.csv"), "--output", str(out)]) == 0
    assert "no sentence-transformers pooling files" in caplog.text
    written = torch.tensor([json.loads(line)["embedding"] for line in out.read_text().splitlines()])
    expected = SentenceEncoder.from_pretrained(tiny).encode(texts)
    assert (written - expected).abs().max().item() < 1e-6
    assert capsys.readouterr().err.startswith(f"wrote 3 embeddings to {out} (")
    assert embed_main(["--model", str(tmp_path / "nowhere"), "--input", "-"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
