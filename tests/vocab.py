"""A small real WordPiece vocabulary (a few hundred entries) and sentences over it, so that the tokenizer tests run
without ../shared: `write_small_vocab(folder)` writes a `vocab.txt` that both minibert's and transformers'
BertTokenizer load.

It has BERT's special tokens, every printable ASCII character and its "##" continuation (so every ASCII word can be
spelled, as in BERT's vocabularies), whole words and suffixes that make words split into several pieces
("play ##ing", "un ##believ ##able"), and accented, Greek, Cyrillic, CJK and punctuation entries for the Unicode
paths (accents kept, Chinese characters split).
"""

from __future__ import annotations

import csv
import json
import random
import string
from pathlib import Path

import pytest

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """the a an is it this that was were be been are of to in on at for with as by from and or but not no
movie film story plot actor actors acting scene scenes time good bad great best worst well very really just so too
love hate like funny boring fun one two three first last end there here what who how why when i you he she we they
me my his her our their them all some any more most much many little big small new old hello world text another
word words sentence pair long short line quick brown fox jumps over lazy dog play un over under re pre dis day night
make made see seen watch watched think thought character characters music director work life man woman people year
years way even never ever only also still back after before then than because if would could should can will do
does did done have has had get got go going went""".split()
SUFFIXES = ["##ing", "##ed", "##s", "##es", "##er", "##ers", "##ly", "##est", "##ness", "##ful", "##able", "##ible",
            "##believ", "##aff", "##ion", "##tion", "##ment", "##y", "##ie", "##n't", "##re", "##ve", "##ll"]
UNICODE = ["é", "##é", "è", "ê", "ü", "##ü", "ñ", "ç", "ß", "ø", "å", "café", "crème", "naïve", "über", "señor",
           "σ", "ς", "ο", "φ", "##ο", "##ς", "σοφος", "п", "р", "и", "в", "е", "т", "##р", "##и", "##в", "##е", "##т",
           "привет", "北", "京", "中", "文", "日", "本", "。", "！", "，", "、", "“", "”", "‘", "’", "«", "»", "—", "–",
           "…", "¿", "¡", "€", "£", "°", "한", "##국", "ひ", "ら", "が", "な", "ا", "ل", "##ل"]


def small_vocab() -> list[str]:
    ascii_chars = [c for c in string.printable if not c.isspace()]
    continuations = ["##" + c for c in string.ascii_lowercase + string.digits]
    tokens = SPECIALS + ascii_chars + continuations + WORDS + SUFFIXES + UNICODE
    seen: set[str] = set()
    return [t for t in tokens if not (t in seen or seen.add(t))]


def write_small_vocab(folder: Path) -> Path:
    """Write the small vocabulary as `folder/vocab.txt`, with a `tokenizer_config.json` like BERT's (lower case,
    512 tokens at most); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(token + "\n" for token in small_vocab()), encoding="utf-8")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(config) + "\n", encoding="utf-8")
    return folder


OOV = ["unbelievable", "playing", "movies", "Xylophone", "naïve", "Crème", "café", "don't", "it's", "we're",
       "12,000", "3.5", "e-mail", "U.S.", "北京", "ΣΟΦΟΣ", "Привет", "a" * 101, "hello!!!", "(really)", "[MASK]",
       "self-aware", "<br />", "…", "“quoted”", "überwatched"]


def sample_sentences(n: int = 900, seed: int = 0) -> list[str]:
    """`n` deterministic sentences of 1 to 40 words: vocabulary words (some capitalised), words that split into
    pieces or are unknown, punctuation and a few non-ASCII words, so truncation and offsets have work to do."""
    rng = random.Random(seed)
    pool = WORDS + OOV + [w.capitalize() for w in WORDS[:40]] + [",", ".", "!", "?", ";", "'s"]
    sentences = []
    for _ in range(n):
        words = [rng.choice(pool) for _ in range(rng.randint(1, 40))]
        sentences.append(" ".join(words).replace(" ,", ",").replace(" .", ".") + rng.choice(["", ".", "!", " ?"]))
    return sentences


@pytest.fixture(scope="module", params=["small_vocab", "minilm_vocab"])
def vocab_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer folder: the small vocabulary (always), then MiniLM's real one (skipped without ../shared)."""
    if request.param == "small_vocab":
        return write_small_vocab(tmp_path_factory.mktemp("small_vocab"))
    return request.getfixturevalue("minilm_dir")


@pytest.fixture(scope="module")
def sentences(vocab_dir: Path, request: pytest.FixtureRequest) -> list[str]:
    """Sentences to encode: SST-2 dev (872) with the real vocabulary, `sample_sentences()` with the small one."""
    if vocab_dir.name.startswith("small_vocab"):
        return sample_sentences()
    shared = request.getfixturevalue("shared_dir")
    with open(shared / "data" / "sst2" / "dev.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))  # lone '"' are text, not quotes
    return [row[0] for row in rows[1:]]
