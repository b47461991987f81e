"""Property-based: random truncations and byte flips of a real model folder's files (model.safetensors,
config.json, vocab.txt) end in a MinibertError with one sentence, or load; never another exception or a hang.

The default run mutates a tiny random model written to a temporary folder; the MiniLM checkpoint under ../shared
is mutated only with --runslow. Example counts come from the Hypothesis profile chosen in conftest.py."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minibert
from minibert import MinibertError
from minibert.long_text_options import RECORD_FILE, LongText, read_record, write_record
from tests.tiny import write_tiny_model

SECONDS_PER_LOAD = 20  # far above a normal load; a loader stuck in a loop fails the test instead of hanging it


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum, frame):
        raise TimeoutError(f"loading did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def corruption(draw: st.DrawFn, size: int) -> Callable[[bytes], bytes]:
    """Either a truncation to a random length, or 1-8 random bytes xor-ed with random non-zero masks; biased
    towards the start of the file, where headers live."""
    if draw(st.booleans()):
        keep = draw(st.integers(0, size - 1) | st.integers(0, min(size - 1, 200)))
        return lambda data: data[:keep]
    positions = st.integers(0, size - 1) | st.integers(0, min(size - 1, 300))
    flips = draw(st.lists(st.tuples(positions, st.integers(1, 255)), min_size=1, max_size=8))

    def flip(data: bytes) -> bytes:
        out = bytearray(data)
        for position, mask in flips:
            out[position] ^= mask
        return bytes(out)

    return flip


def load_model_and_tokenizer(folder: Path) -> None:
    minibert.BertModel.from_pretrained(folder)
    minibert.BertTokenizer.from_pretrained(folder)("a good movie", "the plot")


def assert_loads_or_refuses_in_one_sentence(folder: Path, load: Callable[[Path], None] = load_model_and_tokenizer):
    try:
        with time_limit(SECONDS_PER_LOAD):
            load(folder)
    except MinibertError as e:
        message = str(e)
        assert message and "\n" not in message and message.endswith((".", ")")), repr(message)
        assert "Traceback" not in message


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


def mutated_copy(source: Path, target: Path, name: str, mutate: Callable[[bytes], bytes]) -> Path:
    """`target` holds `name` mutated and links to the other files of `source` (read, never written)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for path in source.iterdir():
        if path.is_file() and path.name != name:
            (target / path.name).symlink_to(path.resolve())
    (target / name).write_bytes(mutate((source / name).read_bytes()))
    return target


FILES = ["model.safetensors", "config.json", "vocab.txt"]


@pytest.mark.parametrize("name", FILES)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_corrupt_file_is_refused_in_one_sentence(tiny_folder, tmp_path, name, data):
    size = (tiny_folder / name).stat().st_size
    mutate = data.draw(corruption(size))
    folder = mutated_copy(tiny_folder, tmp_path / "mutated", name, mutate)
    assert_loads_or_refuses_in_one_sentence(folder)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_every_truncation_of_the_header_is_refused(tiny_folder, tmp_path, fmt):
    """Exhaustive over the first bytes (where the header lives): each truncation is refused, none loads."""
    source = tiny_folder
    if fmt == "bin":
        import torch
        from safetensors.torch import load_file

        source = tmp_path / "bin"
        shutil.copytree(tiny_folder, source)
        torch.save(load_file(source / "model.safetensors"), source / "pytorch_model.bin")
        (source / "model.safetensors").unlink()
    name = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    for keep in range(0, 400, 7):
        folder = mutated_copy(source, tmp_path / "mutated", name, lambda data, keep=keep: data[:keep])
        with pytest.raises(MinibertError):
            minibert.BertModel.from_pretrained(folder)


@pytest.mark.slow
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_corrupt_minilm_checkpoint_is_refused_in_one_sentence(minilm_dir, tmp_path, data):
    name = data.draw(st.sampled_from(FILES))
    mutate = data.draw(corruption((minilm_dir / name).stat().st_size))
    folder = mutated_copy(minilm_dir, tmp_path / "mutated", name, mutate)
    assert_loads_or_refuses_in_one_sentence(folder)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_corrupt_long_text_record_is_refused_in_one_sentence(tmp_path, data):
    """long_text.json (how finetune trained on long texts, read by predict's --long-text auto): mutated, it reads
    as a valid record or is refused in one sentence."""
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    write_record(source, LongText("chunks", 128, 128, "one"), 512, "mean")
    mutate = data.draw(corruption((source / RECORD_FILE).stat().st_size))
    folder = mutated_copy(source, tmp_path / "mutated", RECORD_FILE, mutate)
    assert_loads_or_refuses_in_one_sentence(folder, read_record)
