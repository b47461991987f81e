"""Shared fixtures: where ../shared lives, the real MiniLM in float32 and int8, and the --runslow switch."""

import copy
import os
from pathlib import Path

import pytest
from hypothesis import settings

import minibert

# Property-based tests: a few dozen examples by default (CI), thousands with --runslow; no example database on disk.
settings.register_profile("ci", max_examples=30, deadline=None, database=None)
settings.register_profile("thorough", max_examples=2000, deadline=None, database=None)

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("thorough" if config.getoption("--runslow") else "ci")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: one torch thread per worker, not N x cores
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (data and the MiniLM checkpoint); tests skip when it is absent."""
    path = Path(os.environ.get("MINIBERT_SHARED", REPO.parent / "shared"))
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set MINIBERT_SHARED to its folder)")
    return path


@pytest.fixture(scope="session")
def minilm_dir(shared_dir: Path) -> Path:
    path = shared_dir / "models" / "all-MiniLM-L6-v2"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"MiniLM checkpoint not found in {path}")
    return path


@pytest.fixture(scope="module")
def minilm_encoders(minilm_dir: Path) -> tuple[minibert.SentenceEncoder, minibert.SentenceEncoder]:
    """MiniLM as sentence-transformers pools it: (float32, int8 as `quantize("int8")` makes it)."""
    float_encoder = minibert.SentenceEncoder.from_pretrained(minilm_dir)
    int8_encoder = copy.copy(float_encoder)
    int8_encoder.model = copy.deepcopy(float_encoder.model).quantize("int8")
    return float_encoder, int8_encoder
