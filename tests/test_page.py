"""The page at / in a real headless Chromium (Debian's package, driven by Playwright): type, submit, read the answer
off the page and check it against offline predict / the embeddings; a screenshot of each is saved.

Without a browser the tests skip, unless CI=true, where a missing browser is a failure.
Set MINIBERT_SCREENSHOTS=folder to keep the screenshots.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from minibert.pooling import SentenceEncoder
from minibert.tokenizer import BertTokenizer
from tests.test_pooling import write_st_layout, write_tiny_encoder
from tests.test_serve import offline_predict, write_classifier
from tests.test_serve_process import start

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser_path() -> str:
    found = os.environ.get("MINIBERT_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    problem = None
    if found is None:
        problem = "no Chromium found (apt-get install chromium, or set MINIBERT_CHROMIUM)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install playwright)"
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"the page test must run in CI: {problem}")
    if problem:
        pytest.skip(problem)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator:
    path = browser_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def screenshot(page, tmp_path: Path, name: str) -> None:  # noqa: ANN001
    target = tmp_path / name
    page.screenshot(path=str(target), full_page=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("MINIBERT_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(keep) / name)


def serve(model: Path) -> Iterator[str]:
    proc, url = start(model)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_classifier_page(browser, tmp_path: Path) -> None:  # noqa: ANN001
    model = write_classifier(tmp_path / "classifier")
    text = "The plot was awful, but the actor was nice!"
    expected = offline_predict(model, [text], tmp_path)[0]
    for url in serve(model):
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("body[data-state=ready]", timeout=20_000)
        assert "single_label_classification (negative, neutral, positive)" in page.inner_text("#info")
        page.fill("#text", text)
        page.click("#submit")
        page.wait_for_selector("body[data-state=done]", timeout=20_000)
        assert page.inner_text("#label") == expected["label"]
        rows = page.query_selector_all("#bars .row")
        shown = {row.get_attribute("data-label"): float(row.get_attribute("data-probability")) for row in rows}
        assert shown.keys() == expected["scores"].keys()
        assert max(abs(shown[k] - expected["scores"][k]) for k in shown) < 1e-5
        best = page.query_selector("#bars .row.best")
        assert best.get_attribute("data-label") == expected["label"]
        assert f"{100 * expected['score']:.1f} %" in best.inner_text()
        tokens = [t.inner_text() for t in page.query_selector_all("#tokens .tok")]
        assert tokens == ["[CLS]", *BertTokenizer.from_pretrained(model).tokenize(text), "[SEP]"]
        screenshot(page, tmp_path, "page-classifier.png")


def test_embedding_page(browser, tmp_path: Path) -> None:  # noqa: ANN001
    model = write_st_layout(tmp_path / "st", write_tiny_encoder(tmp_path / "base"))
    texts = ["a good movie", "the film was great fun"]
    a, b = SentenceEncoder.from_pretrained(model).encode(texts).tolist()
    cosine = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    for url in serve(model):
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("body[data-state=ready]", timeout=20_000)
        assert page.is_visible("#text2")
        page.fill("#text", texts[0])
        page.fill("#text2", texts[1])
        page.click("#submit")
        page.wait_for_selector("body[data-state=done]", timeout=20_000)
        assert abs(float(page.get_attribute("#similarity", "data-value")) - cosine) < 1e-5
        assert page.inner_text("#similarity") == f"cosine similarity {cosine:.4f}"
        assert len(page.query_selector_all(".token-line")) == 2
        screenshot(page, tmp_path, "page-embedding.png")
