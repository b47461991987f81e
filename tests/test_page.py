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
from tests.test_serve_process import httpx, start
from tests.tiny import write_tiny_model

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


def serve(model: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[str]:
    proc, url = start(model, *flags, env=env)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def open_page(browser, url: str):  # noqa: ANN001, ANN201
    """A new page that records console errors and uncaught exceptions, and refuses every other origin (as offline)."""
    page = browser.new_page()
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
    page.goto(url + "/")
    return page


@pytest.fixture(scope="module")
def classifier_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    model = write_classifier(tmp_path_factory.mktemp("page") / "classifier")
    for url in serve(model):
        yield model, url


def test_classifier_page(browser, classifier_url: tuple[Path, str], tmp_path: Path) -> None:  # noqa: ANN001
    model, url = classifier_url
    text = "The plot was awful, but the actor was nice!"
    expected = offline_predict(model, [text], tmp_path)[0]
    page = open_page(browser, url)
    page.wait_for_selector("body[data-state=ready]", timeout=20_000)
    assert "classifier: single_label_classification (negative, neutral, positive)" in page.inner_text("#info")
    page.fill("#text", text)
    page.press("#text", "Control+Enter")
    page.wait_for_selector("body[data-state=done]", timeout=20_000)
    # the headline: the winning label by name, its probability beside it
    assert page.inner_text("#label") == expected["label"]
    assert page.inner_text("#probability") == f"{100 * expected['score']:.1f} %"
    rows = page.query_selector_all("#bars .row")
    shown = {row.get_attribute("data-label"): float(row.get_attribute("data-probability")) for row in rows}
    assert shown.keys() == expected["scores"].keys()
    assert max(abs(shown[k] - expected["scores"][k]) for k in shown) < 1e-5
    best = page.query_selector("#bars .row.best")
    assert best.get_attribute("data-label") == expected["label"]
    assert f"{100 * expected['score']:.1f} %" in best.inner_text()
    # each bar is its probability's share of a 0-100 % track
    for row in rows:
        track = row.query_selector(".track").bounding_box()["width"]
        bar = row.query_selector(".bar").bounding_box()["width"]
        assert abs(bar / track - float(row.get_attribute("data-probability"))) < 0.01
    assert page.inner_text("#reading") == ""  # read whole: nothing to say
    tokens = [t.inner_text() for t in page.query_selector_all("#tokens .tok")]
    assert tokens == ["[CLS]", *BertTokenizer.from_pretrained(model).tokenize(text), "[SEP]"]
    screenshot(page, tmp_path, "page-classifier.png")
    assert page.errors == []


def test_long_text_says_how_it_was_read(browser, classifier_url: tuple[Path, str]) -> None:  # noqa: ANN001
    page = open_page(browser, classifier_url[1])
    page.wait_for_selector("body[data-state=ready]", timeout=20_000)
    page.fill("#text", "the movie was good and " * 200)  # 1,000 tokens: windows of 512, as predict reads it
    page.click("#submit")
    page.wait_for_selector("body[data-state=done]", timeout=20_000)
    assert page.get_attribute("#reading", "data-windows") == "3"
    assert page.inner_text("#reading").startswith("a long text: read in 3 windows of up to 512 tokens")
    assert len(page.query_selector_all(".token-line")) == 3
    assert page.errors == []


def test_empty_input_is_refused_without_a_request(browser, classifier_url: tuple[Path, str]) -> None:  # noqa: ANN001
    page = open_page(browser, classifier_url[1])
    page.wait_for_selector("body[data-state=ready]", timeout=20_000)
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    for text in ("", "   \n  "):
        page.fill("#text", text)
        page.click("#submit")
        page.wait_for_selector("body[data-state=refused]", timeout=5_000)
        assert page.inner_text("#error") == "Type a text first."
    assert posts == [] and page.inner_text("#label") == ""
    assert page.errors == []


def test_docs_page_offline(browser, classifier_url: tuple[Path, str]) -> None:  # noqa: ANN001
    """Every request to another origin is refused: /docs still renders every route from /openapi.json."""
    url = classifier_url[1]
    page = open_page(browser, url)
    page.goto(url + "/docs")
    page.wait_for_selector("body[data-state=ready]", timeout=20_000)
    paths = {r.get_attribute("data-path") for r in page.query_selector_all("#routes .route")}
    assert paths >= {"/predict", "/embed", "/health", "/info", "/metrics"}
    assert "classifier" in page.inner_text("#description")
    assert page.errors == []


def test_page_asks_for_the_key(browser, tmp_path: Path) -> None:  # noqa: ANN001
    model = write_classifier(tmp_path / "classifier")
    for url in serve(model, env={"MINIBERT_API_KEY": "page-key"}):
        page = open_page(browser, url)
        page.wait_for_selector("body[data-state=key]", timeout=20_000)
        assert page.is_visible("#key") and not page.is_visible("#text")
        page.fill("#key", "page-key")
        page.press("#key", "Enter")
        page.wait_for_selector("body[data-state=ready]", timeout=20_000)
        page.fill("#text", "good movie")
        page.click("#submit")
        page.wait_for_selector("body[data-state=done]", timeout=20_000)
        assert page.inner_text("#label") in ("negative", "neutral", "positive")
        # the 401 of the first /info is the only error the console saw
        assert all("401" in e for e in page.errors), page.errors


def test_embedding_page(browser, tmp_path: Path) -> None:  # noqa: ANN001
    model = write_st_layout(tmp_path / "st", write_tiny_encoder(tmp_path / "base"))
    texts = ["a good movie", "the film was great fun"]
    a, b = SentenceEncoder.from_pretrained(model).encode(texts).tolist()
    cosine = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    for url in serve(model):
        page = open_page(browser, url)
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
        assert page.errors == []


def test_embedding_page_ranks_several_passages(browser, tmp_path: Path) -> None:  # noqa: ANN001
    model = write_st_layout(tmp_path / "st", write_tiny_encoder(tmp_path / "base"))
    query, passages = "a good movie", ["the film was great fun", "bad plot", "a good film", "boring"]
    vectors = SentenceEncoder.from_pretrained(model).encode([query, *passages])
    scores = (vectors[1:] @ vectors[0]).tolist()  # unit vectors: the dot product is the cosine
    expected = sorted(range(len(passages)), key=lambda i: -scores[i])
    for url in serve(model):
        page = open_page(browser, url)
        page.wait_for_selector("body[data-state=ready]", timeout=20_000)
        page.fill("#text", query)
        page.fill("#text2", "\n".join(passages))
        page.click("#submit")
        page.wait_for_selector("body[data-state=done]", timeout=20_000)
        assert [int(li.get_attribute("data-index")) for li in page.query_selector_all("#ranking li")] == expected
        screenshot(page, tmp_path, "page-ranking.png")
        assert page.errors == []


def test_token_classifier_page_marks_entities(browser, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.test_ner_entities import token_classifier

    model = token_classifier(write_tiny_model(tmp_path / "tiny"), tmp_path / "tagger", scale=30.0)
    text = "Peter Blackburn met José Müller in Zürich."
    for url in serve(model):
        expected = httpx.post(url + "/predict", json={"inputs": [text]}, timeout=30).json()["results"][0]["entities"]
        page = open_page(browser, url)
        page.wait_for_selector("body[data-state=ready]", timeout=20_000)
        page.fill("#text", text)
        page.click("#submit")
        page.wait_for_selector("body[data-state=done]", timeout=20_000)
        marks = page.query_selector_all("#marked mark")
        assert [m.get_attribute("data-entity") for m in marks] == [e["entity_group"] for e in expected]
        assert len(marks) > 2 and page.inner_text("#label").endswith("entities")
        assert page.inner_text("#marked").replace("\n", "").startswith(text[:expected[0]["start"]])
        screenshot(page, tmp_path, "page-entities.png")
        assert page.errors == []
