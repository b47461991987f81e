"""BertTokenizer against transformers.BertTokenizer (its default, Rust-backed one) loaded from the same folder:
same input_ids, token_type_ids and attention_mask on real data, pairs, padding, a torture list and every Unicode
code point; same decoded text; and the files, the Hub and the errors a user can meet.

Most tests run twice: on the small vocabulary of tests/vocab.py with generated sentences (no ../shared needed) and
on MiniLM's real vocabulary with SST-2 (skipped without ../shared); the `real_*` fixtures are MiniLM's alone."""

import logging
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
import transformers

from minibert.errors import MinibertError
from minibert.tokenizer import BertTokenizer
from minibert.wordpiece import CATEGORY_IN_UNICODE_9, CJK_RANGES, NEWER_THAN_UNICODE_9, _expand
from tests.fake_hub import FakeHub
from tests.texts import TORTURE, read_imdb, read_sst2
from tests.vocab import sentences, vocab_dir, write_small_vocab  # noqa: F401 - fixtures

KEYS = ("input_ids", "token_type_ids", "attention_mask")



@pytest.fixture(scope="module")
def ours(vocab_dir):  # noqa: F811
    return BertTokenizer.from_pretrained(vocab_dir)


@pytest.fixture(scope="module")
def ref(vocab_dir):  # noqa: F811
    tok = transformers.BertTokenizer.from_pretrained(vocab_dir)
    assert type(tok).__module__.endswith("tokenization_bert"), "expected the default (Rust-backed) tokenizer"
    return tok


@pytest.fixture(scope="module")
def real_ours(minilm_dir):
    return BertTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def real_ref(minilm_dir):
    return transformers.BertTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def sst2_dev(shared_dir):
    return read_sst2(shared_dir / "data" / "sst2" / "dev.tsv")


def mismatches(ours, ref, texts, pairs=None, **kwargs) -> list[str]:
    """Compare whole batches key by key; return a readable line for each text whose encoding differs."""
    a, b = ours(texts, pairs, **kwargs), ref(texts, pairs, **kwargs)
    assert set(a) == set(b)
    bad = []
    for i, text in enumerate(texts):
        for key in b:
            if a[key][i] != b[key][i]:
                bad.append(f"{text!r}: {key} {a[key][i]} != {b[key][i]}")
                break
    return bad


def assert_same(ours, ref, texts, pairs=None, **kwargs) -> None:
    bad = mismatches(ours, ref, texts, pairs, **kwargs)
    assert not bad, f"{len(bad)} of {len(texts)} differ, first: {bad[0]}"


# --- parity on data ----------------------------------------------------------------------------------------------


def test_sst2_dev_and_imdb_slice(ours, ref, sst2_dev, shared_dir):
    imdb = read_imdb(shared_dir / "data" / "imdb" / "train.csv", limit=300)
    assert len(sst2_dev) == 872 and len(imdb) == 300
    assert_same(ours, ref, sst2_dev + imdb)


@pytest.mark.slow
def test_full_sst2_and_imdb(real_ours, real_ref, shared_dir):
    texts = read_sst2(shared_dir / "data" / "sst2" / "train.tsv") + read_sst2(shared_dir / "data" / "sst2" / "dev.tsv")
    texts += read_imdb(shared_dir / "data" / "imdb" / "train.csv")
    assert len(texts) == 67349 + 872 + 25000
    for start in range(0, len(texts), 5000):
        assert_same(real_ours, real_ref, texts[start:start + 5000])


def test_torture_list(ours, ref):
    assert_same(ours, ref, TORTURE)
    assert_same(ours, ref, TORTURE, add_special_tokens=False)
    for text in TORTURE:
        assert ours.tokenize(text) == ref.tokenize(text), text


def test_word_length_limit(ours):
    assert ours.tokenize("a" * 100) != ["[UNK]"]
    assert ours.tokenize("a" * 101) == ["[UNK]"]


def codepoint_texts(codepoints: list[int], templates: tuple[str, ...] = ("{c}", "a{c}b", "X{c}{c}É", "{c}.Z")
                    ) -> list[str]:
    """Each code point alone, inside a word, beside upper case and accents, and before punctuation."""
    return [template.format(c=chr(cp)) for cp in codepoints for template in templates]


def test_unicode_classes_where_python_and_tokenizers_disagree(ours, ref):
    """The code points whose class tokenizers' Unicode 9.0 tables see differently from Python's, the CJK block
    edges (tokenizers' Extension E starts at 0x2B920), and a spread of every other category."""
    edges = [cp + d for lo, hi in CJK_RANGES for cp in (lo, hi) for d in (-1, 0, 1)] + [0x2B820, 0x2B91F, 0x2B920]
    by_category: dict[str, list[int]] = {}
    for cp in range(0, sys.maxunicode + 1, 37):
        by_category.setdefault(unicodedata.category(chr(cp)), []).append(cp)
    spread = [cp for cps in by_category.values() for cp in cps[:40]]
    codepoints = sorted(_expand(NEWER_THAN_UNICODE_9) | set(CATEGORY_IN_UNICODE_9) | set(edges) | set(spread))
    codepoints = [cp for cp in codepoints if not 0xD800 <= cp <= 0xDFFF]
    assert_same(ours, ref, codepoint_texts(codepoints), add_special_tokens=False)


@pytest.mark.slow
def test_every_code_point(real_ours, real_ref):
    codepoints = [cp for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF]
    for start in range(0, len(codepoints), 50_000):
        texts = codepoint_texts(codepoints[start:start + 50_000], templates=("a{c}B {c}",))  # one text: ~1 min
        assert_same(real_ours, real_ref, texts, add_special_tokens=False)


# --- pairs, truncation, padding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("truncation", [True, "longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("max_length", [0, 2, 3, 4, 5, 8, 16, 33, 64])
def test_pairs_under_each_truncation(ours, ref, sentences, truncation, max_length):  # noqa: F811
    """Pairs of dev sentences (and a sentence with itself, for equal lengths); where transformers refuses
    (only_first/only_second with too little to cut), ours raises a MinibertError."""
    firsts, seconds = sentences[0:120:2] + sentences[:5], sentences[1:120:2] + sentences[:5]
    refused = 0
    for a, b in zip(firsts, seconds):
        try:
            expected = ref(a, b, truncation=truncation, max_length=max_length)
        except Exception as e:  # tokenizers raises a bare Exception: "Truncation error: ..."
            assert "Truncation error" in str(e)
            with pytest.raises(MinibertError, match="cannot fit the input into max_length"):
                ours(a, b, truncation=truncation, max_length=max_length)
            refused += 1
            continue
        got = ours(a, b, truncation=truncation, max_length=max_length)
        assert dict(got) == dict(expected), (a, b)
    assert refused == 0 or truncation in ("only_first", "only_second")


@pytest.mark.parametrize("max_length", [0, 1, 2, 3, 7, 20])
@pytest.mark.parametrize("truncation", [True, "only_first"])
def test_single_text_truncation(ours, ref, sentences, max_length, truncation):  # noqa: F811
    assert_same(ours, ref, sentences[:50], truncation=truncation, max_length=max_length)
    assert_same(ours, ref, sentences[:50], truncation=truncation, max_length=max_length, add_special_tokens=False)


def test_batched_pairs_and_no_specials(ours, ref, sentences):  # noqa: F811
    assert_same(ours, ref, sentences[:60], sentences[60:120])
    assert_same(ours, ref, sentences[:60], sentences[60:120], add_special_tokens=False, truncation=True, max_length=20)


@pytest.mark.parametrize("kwargs", [
    {"padding": True},
    {"padding": "longest", "truncation": True, "max_length": 16},
    {"padding": "max_length", "max_length": 40},
    {"padding": "max_length", "max_length": 24, "truncation": True},
    {"padding": "max_length"},  # to model_max_length
    {"padding": True, "pad_to_multiple_of": 8},
    {"padding": "max_length", "truncation": True, "max_length": 32, "pad_to_multiple_of": 16},
    {"padding": False, "max_length": 12},  # max_length alone truncates
    {"padding": "do_not_pad", "truncation": "do_not_truncate"},
])
def test_padding_modes(ours, ref, sentences, kwargs):  # noqa: F811
    texts = sentences[200:230]
    assert_same(ours, ref, texts, **kwargs)
    assert_same(ours, ref, texts, texts[::-1], **kwargs)
    assert dict(ours(texts[0], **kwargs)) == dict(ref(texts[0], **kwargs))


def test_tensors(ours, ref, sentences):  # noqa: F811
    texts = sentences[:7]
    for args, kwargs in [((texts,), {"padding": True}), ((texts[0],), {}), ((texts, texts), {"padding": True}),
                         ((texts,), {"padding": "max_length", "max_length": 64, "truncation": True})]:
        got, expected = ours(*args, return_tensors="pt", **kwargs), ref(*args, return_tensors="pt", **kwargs)
        assert list(got) == list(expected)
        for key in KEYS:
            assert got[key].dtype == torch.long and torch.equal(got[key], expected[key]), key
    with pytest.raises(MinibertError, match="pass padding=True"):
        ours(texts, return_tensors="pt")
    moved = ours(texts, padding=True, return_tensors="pt").to("cpu")
    assert isinstance(moved, dict) and moved.input_ids.device.type == "cpu"


def test_return_value_is_a_dict_with_attributes(ours):
    enc = ours(["a text", "another one"], text_pair=["x", "y"], padding=True)
    assert isinstance(enc, dict) and list(enc) == list(KEYS)
    assert enc.input_ids is enc["input_ids"] and enc.attention_mask == [[1] * 6, [1] * 6]

    def model(input_ids, token_type_ids, attention_mask):
        return len(input_ids)

    assert model(**enc) == 2
    assert "token_type_ids" not in ours("a", return_token_type_ids=False)
    assert "attention_mask" not in ours("a", return_attention_mask=False)
    with pytest.raises(AttributeError):
        _ = enc.labels


def test_encode_and_positional_pair(ours, ref):
    assert ours.encode("Hello there", "General Kenobi") == ref.encode("Hello there", "General Kenobi")
    assert ours("a b", "c")["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    # an empty pair: dropped for one text (transformers' `if text_pair`), kept in a batch
    assert dict(ours("a b", "")) == dict(ref("a b", "")) and dict(ours(["a b"], [""])) == dict(ref(["a b"], [""]))
    assert torch.equal(ours.encode("a b", return_tensors="pt"), ref.encode("a b", return_tensors="pt"))
    with pytest.raises(MinibertError, match="text_pair must match text"):
        ours(["a", "b"], ["c"])


# --- the warnings users know -------------------------------------------------------------------------------------


def test_too_long_warning_once(vocab_dir, caplog):  # noqa: F811
    tok = BertTokenizer.from_pretrained(vocab_dir)
    long_text = "word " * 600
    with caplog.at_level(logging.WARNING, logger="minibert"):
        assert len(tok(["short", long_text, long_text + "x"])["input_ids"][1]) == 602
        tok(long_text)
    messages = [r.getMessage() for r in caplog.records if "Token indices sequence length" in r.getMessage()]
    assert messages == ["Token indices sequence length is longer than the specified maximum sequence length for this "
                        "model (602 > 512). Running this sequence through the model will result in indexing errors"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minibert"):
        BertTokenizer.from_pretrained(vocab_dir)(long_text, truncation=True)
    assert not caplog.records  # truncating to model_max_length: nothing to warn about


def test_padding_true_with_max_length_warns(ours, ref):
    with pytest.warns(UserWarning, match="`max_length` is ignored when `padding`=`True`"):
        got = ours(["a b c d e", "f"], padding=True, max_length=3)
    with pytest.warns(UserWarning, match="`max_length` is ignored when `padding`=`True`"):
        assert dict(got) == dict(ref(["a b c d e", "f"], padding=True, max_length=3))


def test_bad_options(ours):
    with pytest.raises(MinibertError, match="padding='left'"):
        ours("a", padding="left")
    with pytest.raises(MinibertError, match="truncation='only_third'"):
        ours("a", truncation="only_third")
    with pytest.raises(MinibertError, match="needs a text pair"):
        ours("a b c d e f", truncation="only_second", max_length=4)
    with pytest.raises(MinibertError, match="return_tensors='np'"):
        ours("a", return_tensors="np")
    with pytest.raises(MinibertError, match="not int"):
        ours([1, 2])


# --- decoding and the vocabulary ---------------------------------------------------------------------------------


def test_decode_matches(ours, ref, sentences):  # noqa: F811
    texts = TORTURE + sentences[:100] + ["Hello , world ! It ' s don ' t do not . I ' m here , ok ?"]
    for text in texts:
        ids = ref(text)["input_ids"]
        assert ours(text)["input_ids"] == ids
        for skip in (False, True):
            for clean in (None, True):
                assert ours.decode(ids, skip, clean) == ref.decode(ids, skip_special_tokens=skip,
                                                                   clean_up_tokenization_spaces=clean), text
    pairs = ref(texts[:20], texts[20:40], padding=True)["input_ids"]
    assert ours.batch_decode(pairs) == ref.batch_decode(pairs)
    assert ours.batch_decode(pairs, skip_special_tokens=True) == ref.batch_decode(pairs, skip_special_tokens=True)
    tensor = ref(texts[:3], padding=True, return_tensors="pt")["input_ids"]
    assert ours.batch_decode(tensor) == ref.batch_decode(tensor) and ours.decode(tensor[0]) == ref.decode(tensor[0])
    cls = ours.cls_token_id
    assert ours.decode(cls) == ref.decode(cls) == ours.decode(torch.tensor(cls)) == "[CLS]"
    odd = [len(ours) - 1, 10000000, len(ours) // 2, -1]  # ids outside the vocabulary are dropped
    assert ours.decode([i for i in odd if i >= 0]) == ref.decode([i for i in odd if i >= 0])


def test_vocabulary_api(real_ours, real_ref):
    assert len(real_ours) == real_ours.vocab_size == len(real_ref) == 30522
    assert real_ours.vocab == real_ref.get_vocab() == real_ours.get_vocab()
    for name in ("pad", "unk", "cls", "sep", "mask"):
        assert getattr(real_ours, f"{name}_token_id") == getattr(real_ref, f"{name}_token_id")
        assert getattr(real_ours, f"{name}_token") == getattr(real_ref, f"{name}_token")
    assert real_ours.model_max_length == real_ref.model_max_length == 512
    tokens = ["hello", "##ing", "[MASK]", "notaword", ""]
    assert real_ours.convert_tokens_to_ids(tokens) == real_ref.convert_tokens_to_ids(tokens)
    assert real_ours.convert_tokens_to_ids("hello") == real_ref.convert_tokens_to_ids("hello") == 7592
    ids = [101, 7592, 2075, 103, 102]
    assert real_ours.convert_ids_to_tokens(ids) == real_ref.convert_ids_to_tokens(ids)
    assert real_ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == \
        real_ref.convert_ids_to_tokens(ids, skip_special_tokens=True)
    assert real_ours.convert_ids_to_tokens(7592) == "hello"
    assert real_ours.tokenize("Hello world", "pair", add_special_tokens=True) == \
        real_ref.tokenize("Hello world", "pair", add_special_tokens=True)


def test_encode_batch(ours, ref, sentences, monkeypatch):  # noqa: F811
    texts = sentences + sentences[:100]
    single = ours.encode_batch(texts, max_length=32)
    assert single["input_ids"] == ref(texts, truncation=True, max_length=32)["input_ids"]
    monkeypatch.setattr("minibert.tokenizer.MIN_TEXTS_PER_WORKER", 200)  # 972 texts: four chunks for two workers
    assert ours.encode_batch(texts, max_length=32, num_workers=2) == single
    pair_ids = ours.encode_batch(texts, texts[::-1], max_length=40, num_workers=2)
    assert pair_ids == ours.encode_batch(texts, texts[::-1], max_length=40)
    pairs = ours.encode_batch(texts[:50], texts[50:100], max_length=24)
    expected = ref(texts[:50], texts[50:100], max_length=24, truncation=True)
    assert pairs["input_ids"] == expected["input_ids"] and pairs["token_type_ids"] == expected["token_type_ids"]
    with pytest.raises(MinibertError, match="2 texts but 1 text pairs"):
        ours.encode_batch(["a", "b"], ["c"])


# --- files, and what goes wrong with them ------------------------------------------------------------------------


def write_vocab(folder: Path, tokens: list[str], newline: str = "\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_bytes("".join(t + newline for t in tokens).encode("utf-8"))
    return folder


SMALL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", ",", "line\u2028sep", "v\x0btab",
         "n\u0085el"]


def test_vocab_lines_split_on_newline_only(tmp_path):
    for newline in ("\n", "\r\n"):
        tok = BertTokenizer.from_pretrained(write_vocab(tmp_path / repr(newline), SMALL, newline))
        assert tok.vocab == {t: i for i, t in enumerate(SMALL)}
        assert tok("hello worlds, hello")["input_ids"] == [2, 5, 6, 7, 8, 5, 3]
    (tmp_path / "nofinal").mkdir()
    (tmp_path / "nofinal" / "vocab.txt").write_text("\n".join(SMALL), encoding="utf-8")
    assert len(BertTokenizer.from_pretrained(tmp_path / "nofinal")) == len(SMALL)


@pytest.mark.parametrize("tokens,message", [
    (None, "does not exist"),
    ([], "is empty"),
    (["[PAD]", "[CLS]", "[SEP]", "a"], r"has no unk_token '\[UNK\]'"),
    (["[UNK]", "[CLS]", "[SEP]", "a"], r"has no pad_token '\[PAD\]'"),
    (["[PAD]", "[UNK]", "[SEP]"], r"has no cls_token '\[CLS\]'"),
    (["[PAD]", "[UNK]", "[CLS]"], r"has no sep_token '\[SEP\]'"),
    (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "a"], r"lists the token 'a' twice \(lines 5 and 7\)"),
])
def test_bad_vocab(tmp_path, tokens, message):
    tmp_path.mkdir(exist_ok=True)
    if tokens is not None:
        write_vocab(tmp_path, tokens)
    with pytest.raises(MinibertError, match=message) as info:
        BertTokenizer(tmp_path / "vocab.txt")
    assert str(tmp_path / "vocab.txt") in str(info.value)


def test_local_folder_wins_over_hub_id(tmp_path, monkeypatch):
    write_vocab(tmp_path / "someone" / "tok", SMALL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert BertTokenizer.from_pretrained("someone/tok").vocab == {t: i for i, t in enumerate(SMALL)}


def test_folder_errors(tmp_path):
    with pytest.raises(MinibertError, match="is a folder; pass its vocab.txt"):
        BertTokenizer(tmp_path)
    with pytest.raises(MinibertError, match="has no vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)
    with pytest.raises(MinibertError, match="does not exist; check the path"):
        BertTokenizer.from_pretrained(tmp_path / "nope")
    write_vocab(tmp_path, SMALL)
    (tmp_path / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MinibertError, match="tokenizer_config.json is not valid JSON"):
        BertTokenizer.from_pretrained(tmp_path)


def test_config_options_match_transformers(tmp_path, vocab_dir, sentences):  # noqa: F811
    """Cased, accents kept, CJK not split, never_split (ignored by transformers' default tokenizer, so by ours):
    the same folder through both, offsets included."""
    vocab = (vocab_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    extra = ["Hello", "World", "Crème", "##è", "é", "北京", "NAÏVE"]
    write_vocab(tmp_path, vocab + [token for token in extra if token not in vocab])
    texts = TORTURE + sentences[:50] + ["Hello World crème Crème NAÏVE 北京 北"]
    for config in [{"do_lower_case": False}, {"do_lower_case": True, "strip_accents": False},
                   {"do_lower_case": False, "strip_accents": True}, {"tokenize_chinese_chars": False},
                   {"never_split": ["hello.", "[x]"]}]:
        (tmp_path / "tokenizer_config.json").write_text(str(config).replace("'", '"').replace("False", "false")
                                                        .replace("True", "true"), encoding="utf-8")
        ref = transformers.BertTokenizer.from_pretrained(tmp_path)
        assert_same(BertTokenizer.from_pretrained(tmp_path), ref, texts + ["hello. [x]"], return_offsets_mapping=True)


def test_save_pretrained_round_trip(ours, tmp_path, sentences):  # noqa: F811
    files = ours.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in files) == ["special_tokens_map.json", "tokenizer_config.json", "vocab.txt"]
    again = BertTokenizer.from_pretrained(tmp_path / "saved")
    assert again.vocab == ours.vocab and again.model_max_length == 512
    theirs = transformers.BertTokenizer.from_pretrained(tmp_path / "saved")
    assert_same(again, theirs, sentences[:100] + TORTURE)
    assert_same(ours, theirs, sentences[:100], truncation=True, padding=True)


def test_from_pretrained_overrides(vocab_dir):  # noqa: F811
    tok = BertTokenizer.from_pretrained(vocab_dir, model_max_length=16)
    assert len(tok("word " * 40, truncation=True)["input_ids"]) == 16


# --- the Hub: a fake cache read offline, and a local stand-in for the Hub's errors --------------------------------

LOAD = ("import sys; from minibert.tokenizer import BertTokenizer as T; t = T.from_pretrained(sys.argv[1], "
        "**dict(a.split('=') for a in sys.argv[2:])); print(t('Hello there!')['input_ids'], t.model_max_length)")


def load_in_subprocess(cache: Path, *args: str, hub_url: str = "http://127.0.0.1:9", offline: bool = True
                       ) -> subprocess.CompletedProcess:
    """huggingface_hub reads HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE when imported: a fresh process sees them."""
    env = {**os.environ, "HF_ENDPOINT": hub_url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_OFFLINE": "1" if offline else "0"}
    return subprocess.run([sys.executable, "-c", LOAD, *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)


def last_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


def fake_cache(cache: Path, repo_id: str, source: Path, commit: str, refs: dict[str, str]) -> None:
    """Lay out `source`'s tokenizer files the way huggingface_hub's cache does (blobs behind snapshots omitted:
    snapshot files may be plain files)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (snapshot / name).write_bytes((source / name).read_bytes())
    (repo / "refs").mkdir()
    for ref_name, target in refs.items():
        (repo / "refs" / ref_name).write_text(target)


def test_hub_offline_from_cache(tmp_path, minilm_dir):
    cache = tmp_path / "hub"
    fake_cache(cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_dir, "a" * 40, {"main": "a" * 40})
    ok = load_in_subprocess(cache, "sentence-transformers/all-MiniLM-L6-v2")
    assert ok.stdout.split("\n")[0] == "[101, 7592, 2045, 999, 102] 512", ok.stderr
    pinned = load_in_subprocess(cache, "sentence-transformers/all-MiniLM-L6-v2", "revision=" + "a" * 40)
    assert pinned.stdout.startswith("[101, 7592"), pinned.stderr
    not_cached = last_error_line(load_in_subprocess(cache, "someone/else"))
    assert "model 'someone/else' is not in the local Hugging Face cache and the Hub cannot be reached (offline)" \
        in not_cached


def test_hub_errors_are_three_sentences(tmp_path, minilm_dir):
    cache = tmp_path / "hub"
    with FakeHub() as hub:
        hub.add("someone/tok", minilm_dir)
        ok = load_in_subprocess(cache, "someone/tok", hub_url=hub.url, offline=False)
        assert ok.stdout.startswith("[101, 7592, 2045, 999, 102] 512"), ok.stderr
        fetched = {r.split("/resolve/")[1].split("?")[0] for r in hub.requests}
        assert fetched == {"main/vocab.txt", "main/tokenizer_config.json", "main/special_tokens_map.json"}
        repo = last_error_line(load_in_subprocess(cache, "someone/missing", hub_url=hub.url, offline=False))
        revision = last_error_line(load_in_subprocess(cache, "someone/tok", "revision=v9", hub_url=hub.url,
                                                      offline=False))
    offline = last_error_line(load_in_subprocess(cache, "someone/missing"))
    assert repo.endswith("model 'someone/missing' was not found on the Hub (or is private); check the id, or pass a "
                         "local folder.")
    assert "revision 'v9' of model 'someone/tok' does not exist on the Hub" in revision
    assert "is not in the local Hugging Face cache and the Hub cannot be reached (offline)" in offline
    assert len({repo, revision, offline}) == 3
