"""A BERT tokenizer's files: `vocab.txt` (one token a line), `tokenizer_config.json` and `special_tokens_map.json`,
in a local folder or a Hub repo, read with one sentence for every way they can be wrong. A local folder without
vocab.txt may hold the vocabulary in `tokenizer.json` instead (what transformers 5 saves alone)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from minibert.errors import MinibertError
from minibert.hub import hub_errors, hub_file, local_folder_or_repo_id

VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
TOKENIZER_JSON = "tokenizer.json"


def read_vocab(path: Path) -> dict[str, int]:
    """vocab.txt: one token a line, its id the line number. Split on "\\n" only, since tokens may contain other
    line breaks (U+2028, U+0085, vertical tab); a Windows "\\r" before the "\\n" is not part of the token."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MinibertError(f"{path} does not exist; a BERT tokenizer needs its vocab.txt.") from None
    except IsADirectoryError:
        raise MinibertError(f"{path} is a folder; pass its vocab.txt, or use BertTokenizer.from_pretrained on "
                            "the folder.") from None
    except UnicodeDecodeError:
        raise MinibertError(f"{path} is not UTF-8 text; it is not a vocab.txt.") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise MinibertError(f"{path} is empty; it should list one token per line.")
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        token = line[:-1] if line.endswith("\r") else line
        if token in vocab:
            raise MinibertError(f"{path} lists the token {token!r} twice (lines {vocab[token] + 1} and {i + 1}); "
                                "each token must appear once.")
        vocab[token] = i
    return vocab


def resolve_tokenizer_files(name_or_path: str | os.PathLike, revision: str | None = None,
                            cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding vocab.txt (and the optional config files): a local folder, or else a Hub repo id whose
    files are fetched with huggingface_hub (honouring its cache, `revision` and `HF_HUB_OFFLINE`)."""
    where = local_folder_or_repo_id(name_or_path, VOCAB_FILE)
    if isinstance(where, Path):
        if not (where / VOCAB_FILE).is_file() and not (where / TOKENIZER_JSON).is_file():
            raise MinibertError(f"{where} has no {VOCAB_FILE} (nor a {TOKENIZER_JSON}); point to the folder of a BERT "
                                "tokenizer.")
        return where
    with hub_errors(where, revision):
        vocab = hub_file(where, VOCAB_FILE, revision, cache_dir, required=True)
        if vocab is None:
            raise MinibertError(f"Hub repo {where!r} has no {VOCAB_FILE}; it is not a BERT WordPiece tokenizer.")
        for optional in (CONFIG_FILE, SPECIAL_TOKENS_FILE):  # land in the same snapshot folder as vocab.txt
            hub_file(where, optional, revision, cache_dir, required=False)
    return vocab.parent


def read_tokenizer_json(path: Path) -> tuple[dict[str, int], dict[str, Any]]:
    """The vocabulary of a WordPiece `tokenizer.json`, and its BertNormalizer's settings under
    tokenizer_config.json's names (lowercasing, accents, CJK characters)."""
    data = _read_json(path)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    vocab = model.get("vocab")
    if (model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##"
            or not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values())):
        raise MinibertError(f"{path} is not a BERT WordPiece tokenizer (its model is {model.get('type')!r}); minibert "
                            "reads BERT's vocab.txt or a WordPiece tokenizer.json.")
    normalizer = data.get("normalizer") if isinstance(data.get("normalizer"), dict) else {}
    names = {"lowercase": "do_lower_case", "strip_accents": "strip_accents",
             "handle_chinese_chars": "tokenize_chinese_chars"}
    settings = ({names[k]: v for k, v in normalizer.items() if k in names and v is not None}
                if normalizer.get("type") == "BertNormalizer" else {})
    return vocab, settings


def read_settings(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json and special_tokens_map.json of a tokenizer folder, merged (both optional)."""
    settings: dict[str, Any] = {}
    for name in (CONFIG_FILE, SPECIAL_TOKENS_FILE):
        if (folder / name).is_file():
            settings.update(_read_json(folder / name))
    return settings


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinibertError(f"{path} is not valid JSON ({e}); fix or delete it.") from None
    if not isinstance(data, dict):
        raise MinibertError(f"{path} should hold a JSON object of settings.")
    return data
