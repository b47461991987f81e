"""Untrusted model folders through the command lines, as a user meets them: a real `python -m` process, exit status
1, one sentence on stderr that names the file or tensor and what to do, no traceback, nothing in the folder changed.
(The loader's own behaviour on each fault is tested in test_weights.py and test_tokenizer.py.)"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tiny import write_tiny_model

REPO = Path(__file__).resolve().parent.parent


def truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])


def lfs_pointer(folder: Path) -> None:
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab12\nsize 9\n")


def html_page(folder: Path) -> None:
    (folder / "model.safetensors").write_text("<!DOCTYPE html>\n<html><title>Sign in</title></html>\n")


def lying_header(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[:8] = (len(data) * 4).to_bytes(8, "little")
    (folder / "model.safetensors").write_bytes(bytes(data))


class Marker:
    """Unpickling this would create the file `path`: the proof that a pickle ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def code_pickle(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": Marker(folder.parent / "PWNED")},
               folder / "pytorch_model.bin")


def nan_tensor(folder: Path) -> None:
    state = load_file(folder / "model.safetensors")
    state["bert.encoder.layer.1.attention.self.key.weight"][3, 3] = float("inf")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def vocab_mismatch(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] += 7
    (folder / "config.json").write_text(json.dumps(config))


def vocab_without_unk(folder: Path) -> None:
    lines = (folder / "vocab.txt").read_text().split("\n")
    (folder / "vocab.txt").write_text("\n".join(line for line in lines if line != "[UNK]"))


def no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (truncate, "model.safetensors is not a valid safetensors file"),
    "lfs-pointer": (lfs_pointer, "model.safetensors is a Git LFS pointer, not the weights: fetch the real file"),
    "html": (html_page, "model.safetensors is an HTML page"),
    "lying-header": (lying_header, "model.safetensors is not a valid safetensors file"),
    "code-pickle": (code_pickle, "pytorch_model.bin was refused"),
    "nan": (nan_tensor, "tensor 'bert.encoder.layer.1.attention.self.key.weight' in the checkpoint contains NaN"),
    "vocab-size": (vocab_mismatch, "'bert.embeddings.word_embeddings.weight' has shape"),
    "vocab-no-unk": (vocab_without_unk, "[UNK]"),
    "no-weights": (no_weights, "has no model.safetensors"),
}


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_predict_refuses_a_bad_model_folder_in_one_sentence(tmp_path, fault):
    folder = write_tiny_model(tmp_path / "model")
    damage, expected = FAULTS[fault]
    damage(folder)
    before = snapshot(folder)
    result = subprocess.run([sys.executable, "-m", "minibert.predict", "--model", str(folder), "--input", "-"],
                            input="a fine film\n", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert result.stdout == ""
    assert snapshot(folder) == before
    assert not (tmp_path / "PWNED").exists()
