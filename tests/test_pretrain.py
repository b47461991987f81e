"""Pre-training: the sparse MLM loss against transformers' full decoder, from-scratch init against transformers',
and the command line (presets, a tiny run whose loss falls, exact resume, the saved checkpoint)."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import minibert
from minibert import finetune, pretrain
from minibert import train as train_module
from minibert.masking import Masker, masking_generator
from minibert.weights import name_table
from tests.interrupts import interrupt_at_forward
from tests.reference import TINY, hf_model
from tests.tiny import WORDS, sentiment_rows, write_csv, write_tiny_model

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.mark.parametrize("attn_impl", ["sdpa", "unpadded"])
def test_sparse_mlm_loss_and_gradients_equal_transformers_full_decoder(tmp_path, attn_impl):
    ref = hf_model("BertForMaskedLM", **TINY, **NO_DROPOUT)
    ref.save_pretrained(tmp_path)
    ours = minibert.BertForMaskedLM.from_pretrained(tmp_path, attn_impl=attn_impl)
    ref.train()
    ours.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, TINY["vocab_size"], (4, 24), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0  # one padded row, for the unpadded path
    ids[1, 20:] = 0
    masked, labels = Masker(4, TINY["vocab_size"], (0, 1, 2, 3), 0.3).mask(ids, masking_generator(0, 0, 0))
    assert (labels != -100).sum() > 10

    ref_out = ref(input_ids=masked, attention_mask=mask, labels=labels)
    ref_out.loss.backward()
    out = ours(masked, mask, labels=labels, masked_only=True)
    out.loss.backward()
    assert out.logits.shape == (int((labels != -100).sum()), TINY["vocab_size"])
    assert torch.allclose(out.loss, ref_out.loss, atol=1e-6, rtol=1e-6)
    assert torch.allclose(out.logits, ref_out.logits[labels != -100], atol=1e-5)
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    ref_grads.setdefault("cls.predictions.bias", ref_grads.get("cls.predictions.decoder.bias"))
    params = dict(ours.named_parameters())
    for our_name, hf_names in name_table(ours):
        expected = torch.cat([ref_grads[n] for n in hf_names], dim=0)
        got = params[our_name].grad
        scale = expected.abs().max().clamp_min(1e-12)
        assert ((got - expected).abs().max() / scale).item() < 1e-4, our_name

    # the full path keeps transformers' shape and loss
    full = ours(masked, mask, labels=labels)
    assert full.logits.shape == (4, 24, TINY["vocab_size"])
    assert torch.allclose(full.loss, ref_out.loss, atol=1e-6, rtol=1e-6)


def test_masked_only_needs_labels():
    model = minibert.BertForMaskedLM(minibert.BertConfig(**TINY))
    with pytest.raises(minibert.MinibertError, match="needs labels"):
        model(torch.ones(1, 4, dtype=torch.long), masked_only=True)


def test_from_scratch_init_statistics_match_transformers():
    """Every tensor of a from-scratch model: the same mean, std and exact zeros/ones as transformers' _init_weights
    gives its namesake (N(0, 0.02) matrices and embeddings, zero biases and padding row, unit LayerNorm)."""
    config = dict(vocab_size=2000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=512, max_position_embeddings=512)
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(transformers.BertConfig(**config))
    ref_state = ref.state_dict()
    torch.manual_seed(1)
    ours = pretrain.build_model(pretrain.parse_args(["--config", "tiny", "--tokenizer", "x", "--train-file", "x"]),
                                FakeTokenizer(2000))
    assert (ours.config.hidden_size, ours.config.num_hidden_layers, ours.config.num_attention_heads,
            ours.config.intermediate_size) == (128, 2, 2, 512)
    params = dict(ours.named_parameters())
    checked = 0
    for our_name, hf_names in name_table(ours):
        for hf_name, got in zip(hf_names, params[our_name].detach().chunk(len(hf_names), dim=0)):
            expected = ref_state[hf_name]
            assert got.shape == expected.shape, hf_name
            if expected.std() == 0:  # constants: zero biases, unit LayerNorm weights
                assert torch.equal(got, expected), hf_name
            else:
                assert got.std().item() == pytest.approx(expected.std().item(), rel=0.1), hf_name
                assert abs(got.mean().item()) < 3 * expected.std().item() / got.numel() ** 0.5 + 1e-6, hf_name
            checked += 1
    tied = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")  # the same tensors as others
    assert checked == len([n for n in ref_state if "position_ids" not in n and n not in tied])
    assert ours.bert.embeddings.word.weight[0].abs().max() == 0  # the padding row, as transformers zeroes it


class FakeTokenizer:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("preset,shape", [("tiny", (2, 128, 2, 512)), ("mini", (4, 256, 4, 1024)),
                                          ("small", (4, 512, 8, 2048)), ("medium", (8, 512, 8, 2048)),
                                          ("base", (12, 768, 12, 3072))])
def test_presets_are_googles_small_berts(preset, shape):
    config = pretrain.config_for(preset, 30522, 128)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size) == shape
    assert config.vocab_size == 30522


def test_config_file_and_bad_config(tmp_path):
    path = tmp_path / "config.json"
    minibert.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=128).to_json(path)
    assert pretrain.config_for(str(path), 99, 128).hidden_size == 64
    with pytest.raises(minibert.MinibertError, match="vocab_size 100 but the tokenizer has 500"):
        pretrain.config_for(str(path), 500, 128)
    with pytest.raises(minibert.MinibertError, match="neither a preset"):
        pretrain.config_for("huge", 500, 128)


def test_option_parsing_requires_a_start(capsys):
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--train-file", "t.txt"])
    assert "pass --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--config", "mini", "--train-file", "t.txt"])
    assert "--config needs --tokenizer" in capsys.readouterr().err
    opts = pretrain.parse_args(["--model", "m", "--train-file", "t.txt", "--whole-word-masking", "--max-length", "64"])
    assert opts.whole_word_masking and opts.max_length == 64 and opts.mlm_probability == 0.15


def test_checkpoint_without_mlm_head_gets_one_like_transformers(minilm_dir, caplog):
    """all-MiniLM-L6-v2 has no MLM head: it is initialised as transformers does and decodes with the word embeddings."""
    caplog.set_level(logging.INFO, logger="minibert")
    ours = pretrain.build_model(pretrain.parse_args(["--model", str(minilm_dir), "--train-file", "x"]),
                                FakeTokenizer(30522))
    assert "newly initialised" in caplog.text and "cls.predictions" in caplog.text
    ref = transformers.BertForMaskedLM.from_pretrained(minilm_dir)
    assert ref.cls.predictions.decoder.weight is ref.bert.embeddings.word_embeddings.weight
    head = ours.mlm
    assert head.dense.weight.std().item() == pytest.approx(ref.cls.predictions.transform.dense.weight.std().item(),
                                                           rel=0.05)
    assert torch.equal(head.dense.bias, ref.cls.predictions.transform.dense.bias)
    assert torch.equal(head.norm.weight, ref.cls.predictions.transform.LayerNorm.weight)
    assert torch.equal(head.bias, ref.cls.predictions.bias)
    # the encoder is the checkpoint's, and the decoder is the (tied) word-embedding matrix
    assert torch.equal(ours.bert.embeddings.word.weight, ref.bert.embeddings.word_embeddings.weight)


# --- the command line, end to end on a tiny model ------------------------------------------------------------------


def write_texts(path: Path, n: int, seed: int = 0) -> Path:
    """n short reviews with a learnable structure (fixed frames, few words), one per line."""
    g = random.Random(seed)
    frames = ["the movie was {} and the plot was {}", "this film is {} . the actor was {}",
              "it was a {} movie , not a {} one", "very {} film , very {} plot"]
    lines = [g.choice(frames).format(g.choice(WORDS[:14]), g.choice(WORDS[:14])) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    model = write_tiny_model(root / "model")
    config = root / "config.json"
    minibert.BertConfig(vocab_size=len((model / "vocab.txt").read_text().split()), hidden_size=64,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=64).to_json(config)
    return {"model": model, "config": config, "train": write_texts(root / "train.txt", 400),
            "cache": root / "cache"}


def cli(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--config", str(setup["config"]), "--tokenizer", str(setup["model"]), "--train-file",
            str(setup["train"]), "--output-dir", str(out), "--max-length", "32", "--batch-size", "8", "--lr", "5e-3",
            "--log-every", "1", "--no-progress", "--validation-split", "0.1", *extra]


def logged(run: Path) -> tuple[dict[int, float], list[dict]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return ({r["step"]: r["loss"] for r in records if "loss" in r and "eval" not in r},
            [r["eval"] for r in records if "eval" in r])


def test_tiny_run_from_scratch_learns_and_saves_a_normal_checkpoint(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIBERT_CACHE", str(setup["cache"]))
    assert pretrain.main(cli(setup, tmp_path / "run", "--max-steps", "50", "--eval-every", "25")) == 0
    losses, evals = logged(tmp_path / "run")
    assert len(losses) == 50
    first, last = sum(losses[s] for s in range(1, 11)) / 10, sum(losses[s] for s in range(41, 51)) / 10
    assert last < first - 0.5, (first, last)  # measured: 3.84 -> 3.14
    assert len(evals) >= 2 and evals[-1]["loss"] < evals[0]["loss"] and 0 < evals[-1]["accuracy"] <= 1
    best = tmp_path / "run" / "best"
    assert json.loads((best / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    # transformers loads it as is, and computes the same logits
    ref = transformers.BertForMaskedLM.from_pretrained(best).eval()
    ours = minibert.BertForMaskedLM.from_pretrained(best)
    ids = torch.tensor([minibert.BertTokenizer.from_pretrained(best).encode("the movie was [MASK] fun")])
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, ref(input_ids=ids).logits, atol=1e-5)
    # and `minibert.finetune` starts from it (the MLM head is left out, a classifier is added)
    rows = write_csv(tmp_path / "sentiment.csv", sentiment_rows(40))
    assert finetune.main(["--model", str(best), "--train-file", str(rows), "--output-dir", str(tmp_path / "ft"),
                          "--max-steps", "2", "--batch-size", "8", "--no-progress"]) == 0
    assert "tokenised" in capsys.readouterr().err

    # a second run reads the tokens from the cache
    assert pretrain.main(cli(setup, tmp_path / "again", "--max-steps", "1")) == 0
    assert "from the cache" in capsys.readouterr().err


def test_continued_pretraining_from_a_checkpoint(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIBERT_CACHE", str(setup["cache"]))
    args = ["--model", str(setup["model"]), "--train-file", str(setup["train"]), "--output-dir", str(tmp_path / "r"),
            "--max-length", "32", "--batch-size", "8", "--max-steps", "3", "--no-progress", "--whole-word-masking"]
    assert pretrain.main(args) == 0
    start = load_file(setup["model"] / "model.safetensors")
    end = load_file(tmp_path / "r" / "best" / "model.safetensors")
    name = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(start[name], end[name])  # trained
    assert "cls.predictions.bias" in end  # with its new MLM head


def test_interrupt_then_resume_is_bit_exact(setup, tmp_path, monkeypatch, capsys):
    """Masks, batch order, dropout and optimizer continue exactly: the same weights as an uninterrupted run."""
    monkeypatch.setenv("MINIBERT_CACHE", str(setup["cache"]))
    extra = ("--max-steps", "10", "--grad-accum", "2", "--eval-every", "4")
    assert pretrain.main(cli(setup, tmp_path / "a", *extra)) == 0
    interrupt_at_forward(monkeypatch, pretrain, 11)  # step 6 of 10, first of its two micro-batches
    assert pretrain.main(cli(setup, tmp_path / "b", *extra)) == 143  # stopped by SIGTERM, checkpoint saved
    assert "interrupted by SIGTERM at step 6" in capsys.readouterr().err
    monkeypatch.setattr(pretrain, "train", train_module.train)
    assert pretrain.main(["--resume", str(tmp_path / "b"), "--no-progress"]) == 0  # the run's own flags
    a, b = load_file(tmp_path / "a" / "checkpoint-10" / "model.safetensors"), \
        load_file(tmp_path / "b" / "checkpoint-10" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert logged(tmp_path / "a")[0] == logged(tmp_path / "b")[0]


DDP_DRIVER = """
import os, sys, torch
from minibert import finetune, pretrain
real = pretrain.train
def wrapped(model, *a, **k):
    summary = real(model, *a, **k)
    torch.save(model.state_dict(), os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
    return summary
pretrain.train = wrapped
sys.exit(pretrain.main(sys.argv[2:]))
"""


def test_two_processes_under_torchrun(setup, tmp_path):
    """DDP (gloo): rank 0 tokenises into the cache and the other reads it; both end with the same weights, and the
    validation metrics are reduced over both ranks' shares."""
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    env = {**os.environ, "MINIBERT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(driver),
           str(tmp_path), *cli(setup, tmp_path / "run", "--max-steps", "6", "--eval-every", "3")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    _, evals = logged(tmp_path / "run")
    assert len(evals) >= 2 and all(0 <= e["accuracy"] <= 1 for e in evals)
    assert len(list((tmp_path / "cache" / "documents").glob("*.npz"))) == 1


def test_user_mistakes_exit_1_with_one_sentence(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path / "cache"))
    missing = cli(setup, tmp_path / "r1")
    missing[missing.index("--train-file") + 1] = str(tmp_path / "nope.txt")
    assert pretrain.main(missing) == 1
    assert "nope.txt does not exist" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("good movie\n")
    args = cli(setup, tmp_path / "r2", "--validation-split", "0")
    args[args.index("--train-file") + 1] = str(short)
    assert pretrain.main(args) == 1
    assert "not enough for one sequence" in capsys.readouterr().err
