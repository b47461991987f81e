"""Prompts and truncate_dim of embedding models (minibert.prompts, minibert.pooling, embed) against
sentence-transformers' encode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from minibert import SentenceEncoder
from minibert.embed import main as embed_main
from minibert.errors import MinibertError
from minibert.inference import InferenceModel
from minibert.prompts import Prompts
from tests.test_pooling import write_st_layout, write_tiny_encoder
from tests.tiny import write_csv

st = pytest.importorskip("sentence_transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ATOL = 1e-5
PROMPTS = {"query": "query: ", "passage": "passage: ", "blank": None}
TEXTS = ["the movie was good", "a dull and boring plot", "fun", "the actor was not very good " * 40]


def with_prompts(folder: Path, include_prompt: bool = True, default: str | None = "query") -> Path:
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": PROMPTS, "default_prompt_name": default, "similarity_fn_name": "cosine"}))
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({**json.loads(pooling.read_text()), "include_prompt": include_prompt}))
    return folder


@pytest.fixture(scope="module", params=["tiny", pytest.param("minilm", marks=pytest.mark.slow)])
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "tiny":
        return write_tiny_encoder(tmp_path_factory.mktemp("tiny") / "model")
    return request.getfixturevalue("minilm_dir")


def close(ours: torch.Tensor, theirs: object) -> bool:
    theirs = torch.as_tensor(theirs)
    return ours.shape == theirs.shape and (ours - theirs).abs().max().item() < ATOL


@pytest.mark.parametrize("mode", ["mean", "cls"])
@pytest.mark.parametrize("include_prompt", [True, False])
def test_prompts_equal_sentence_transformers(tmp_path: Path, source: Path, mode: str, include_prompt: bool) -> None:
    folder = with_prompts(write_st_layout(tmp_path / "st", source, mode=mode, max_seq_length=64), include_prompt)
    theirs = st.SentenceTransformer(str(folder), device="cpu")
    ours = SentenceEncoder.from_pretrained(folder)
    assert ours.prompts == Prompts({"query": "query: ", "passage": "passage: ", "blank": ""}, "query")
    assert ours.pooling.include_prompt is include_prompt
    for kwargs in ({}, {"prompt_name": "passage"}, {"prompt": "Represent this sentence: "}, {"prompt_name": "blank"}):
        assert close(ours.encode(TEXTS, **kwargs), theirs.encode(TEXTS, **kwargs)), kwargs
    plain = ours.encode(TEXTS, prompt="")  # no prompt at all differs from the default "query: "
    assert not close(plain, theirs.encode(TEXTS))
    model = InferenceModel.load(str(folder), task="embed", precision="fp32", device="cpu")
    prepared = model.prepare("embed", TEXTS, prompt_name="passage")
    assert close(torch.stack(model.forward("embed", prepared.rows)), theirs.encode(TEXTS, prompt_name="passage"))
    with pytest.raises(MinibertError, match="prompt name 'doc' is not one of this model's prompts"):
        ours.encode(TEXTS, prompt_name="doc")


def test_truncate_dim_equals_sentence_transformers(tmp_path: Path, source: Path) -> None:
    """sentence-transformers cuts the model's (normalised) vectors and normalises again only when asked;
    `InferenceModel.truncate` (OpenAI's `dimensions`) normalises again when the model normalises."""
    folder = write_st_layout(tmp_path / "st", source, max_seq_length=64)
    theirs = st.SentenceTransformer(str(folder), device="cpu")
    ours = SentenceEncoder.from_pretrained(folder)
    dim = ours.model.config.hidden_size // 4
    cut = ours.encode(TEXTS, truncate_dim=dim)
    assert close(cut, theirs.encode(TEXTS, truncate_dim=dim))
    assert cut.norm(dim=1).max().item() < 0.99  # not unit length: the cut alone
    again = ours.encode(TEXTS, truncate_dim=dim, normalize_embeddings=True)
    assert close(again, theirs.encode(TEXTS, truncate_dim=dim, normalize_embeddings=True))
    model = InferenceModel.load(str(folder), task="embed", precision="fp32", device="cpu")
    vectors = torch.stack(model.forward("embed", model.prepare("embed", TEXTS).rows))
    assert close(model.truncate(vectors, dim), theirs.encode(TEXTS, truncate_dim=dim, normalize_embeddings=True))
    unnormalised = write_st_layout(tmp_path / "raw", source, normalize=False, max_seq_length=64)
    raw = InferenceModel.load(str(unnormalised), task="embed", precision="fp32", device="cpu")
    vectors = torch.stack(raw.forward("embed", raw.prepare("embed", TEXTS).rows))
    assert close(raw.truncate(vectors, dim),
                 st.SentenceTransformer(str(unnormalised), device="cpu").encode(TEXTS, truncate_dim=dim))
    for bad in (0, ours.model.config.hidden_size + 1):
        with pytest.raises(MinibertError, match="cannot keep"):
            ours.encode(TEXTS, truncate_dim=bad)


def test_folder_saved_by_sentence_transformers_6(tmp_path: Path) -> None:
    """sentence-transformers 6 writes `pooling_mode` as one name and the prompts it was built with."""
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    tiny = write_tiny_encoder(tmp_path / "tiny")
    transformer = Transformer(str(tiny), max_seq_length=32)
    pooling = Pooling(transformer.get_embedding_dimension(), "cls", include_prompt=False)
    model = st.SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu",
                                   prompts={"query": "find: "}, default_prompt_name="query")
    model.save(str(tmp_path / "saved"))
    assert not (tmp_path / "saved" / "vocab.txt").exists()  # the vocabulary is tokenizer.json's
    assert json.loads((tmp_path / "saved" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "cls"
    ours = SentenceEncoder.from_pretrained(tmp_path / "saved")
    assert (ours.pooling.mode, ours.pooling.include_prompt, ours.max_length) == ("cls", False, 32)
    theirs = st.SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert close(ours.encode(TEXTS), theirs.encode(TEXTS))


def test_embed_cli_prompt_and_truncate_dim(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = with_prompts(write_st_layout(tmp_path / "st", write_tiny_encoder(tmp_path / "tiny"), max_seq_length=64))
    theirs = st.SentenceTransformer(str(folder), device="cpu")
    source = write_csv(tmp_path / "texts.csv", [(text,) for text in TEXTS], ("text",))
    output = tmp_path / "out.jsonl"
    assert embed_main(["--model", str(folder), "--input", str(source), "--output", str(output), "--prompt-name",
                       "passage", "--truncate-dim", "8", "--no-progress"]) == 0
    vectors = torch.tensor([json.loads(line)["embedding"] for line in output.read_text().splitlines()])
    assert close(vectors, theirs.encode(TEXTS, prompt_name="passage", truncate_dim=8, normalize_embeddings=True))
    capsys.readouterr()
    assert embed_main(["--model", str(folder), "--input", str(source), "--prompt-name", "doc"]) == 1
    assert "prompt name 'doc' is not one of this model's prompts (query, passage, blank)" in capsys.readouterr().err
    assert embed_main(["--model", str(folder), "--input", str(source), "--truncate-dim", "33"]) == 1
    assert "cannot keep 33 dimensions of vectors of 32" in capsys.readouterr().err


def test_server_prompts_and_dimensions_equal_sentence_transformers(tmp_path: Path) -> None:
    """/embed takes text-embeddings-inference's `prompt_name` and `dimensions`; /info lists the prompts."""
    pytest.importorskip("fastapi")
    from tests.test_serve import client_for

    folder = with_prompts(write_st_layout(tmp_path / "st", write_tiny_encoder(tmp_path / "tiny"), max_seq_length=64))
    theirs = st.SentenceTransformer(str(folder), device="cpu")
    with client_for(folder) as c:
        info = c.get("/info").json()
        default = c.post("/embed", json={"inputs": TEXTS}).json()["embeddings"]
        passage = c.post("/embed", json={"inputs": TEXTS, "prompt_name": "passage", "dimensions": 8}).json()
        unknown = c.post("/embed", json={"inputs": TEXTS, "prompt_name": "doc"})
        too_many = c.post("/embed", json={"inputs": TEXTS, "dimensions": 33})
    assert info["prompts"] == {"query": "query: ", "passage": "passage: ", "blank": ""}
    assert info["default_prompt_name"] == "query"
    assert close(torch.tensor(default), theirs.encode(TEXTS))  # the default prompt, "query: "
    expected = theirs.encode(TEXTS, prompt_name="passage", truncate_dim=8, normalize_embeddings=True)
    assert close(torch.tensor(passage["embeddings"]), expected)
    assert unknown.status_code == 422
    assert "prompt name 'doc' is not one of this model's prompts (query, passage, blank)" in unknown.json()["error"]
    assert too_many.status_code == 422 and "from 1 to the model's 32" in too_many.json()["error"]
