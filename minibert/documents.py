"""Text files -> tokenised documents (cached) -> packed sequences of exactly `max_length` tokens for MLM training.

Documents: a .txt (or .txt.gz) file holds one document per line (blank lines skipped); a .jsonl or .parquet file one
per row, from its text column. Each is tokenised once, without truncation, and the result cached as a .npz in the
user's cache folder (`$MINIBERT_CACHE`, else `$XDG_CACHE_HOME/minibert`, else `~/.cache/minibert`), never beside the
data, which may be read-only. The cache key is a hash of the tokenizer (vocabulary and settings) and of the data file
(resolved path, size, modification time), so editing either re-tokenises.

Packing, as cramming (Geiping & Goldstein, 2022) and HF's run_mlm `group_texts` do it: the documents are laid end to
end with a [SEP] between two documents, and the stream is cut into sequences `[CLS] <max_length - 2 tokens> [SEP]`.
A long document continues over several sequences, short ones share a sequence, every sequence has exactly
`max_length` tokens (no batch carries padding) and no token is dropped but the last incomplete sequence. The cut falls
where the length is reached, so a sentence may continue in the next sequence: the price of zero padding (RoBERTa's
FULL-SENTENCES keeps sentences whole instead, so its sequences end short of the length and batches carry padding).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minibert.data import TEXT_NAMES, find_column, read_table
from minibert.errors import MinibertError
from minibert.files import atomic_write_bytes
from minibert.tokenizer import MIN_TEXTS_PER_WORKER
from minibert.training_data import PROGRESS_FROM

logger = logging.getLogger("minibert")

CACHE_VERSION = 1  # bump when the cached format or the tokenisation of documents changes


def cache_folder() -> Path:
    if os.environ.get("MINIBERT_CACHE"):
        return Path(os.environ["MINIBERT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minibert"


@dataclass
class Documents:
    """All documents' token ids end to end: document i is `tokens[offsets[i]:offsets[i + 1]]`."""

    tokens: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (n + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def select(self, indices: np.ndarray | list[int]) -> Documents:
        parts = [self[i] for i in indices]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        return Documents(tokens.astype(np.int32, copy=False), offsets)


def read_documents(path: str | Path, text_column: str | None = None) -> list[str]:
    """The documents of a file: lines of a .txt/.txt.gz, or the text column of a .jsonl/.parquet."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".txt", ".txt.gz")):
        try:
            data = path.read_bytes()
            text = (gzip.decompress(data) if name.endswith(".gz") else data).decode("utf-8")
        except FileNotFoundError:
            raise MinibertError(f"{path} does not exist; check the path.") from None
        except (gzip.BadGzipFile, EOFError) as e:
            raise MinibertError(f"{path} is not a valid gzip file ({e}); re-compress it or pass it "
                                "uncompressed.") from None
        except UnicodeDecodeError as e:
            raise MinibertError(f"{path} is not valid UTF-8 ({e.reason} at byte {e.start}); re-save it as "
                                "UTF-8.") from None
        docs = [line.strip() for line in text.splitlines()]
    elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".parquet")):
        table = read_table(path)
        column = text_column or find_column(table.columns, TEXT_NAMES)
        if column is None or column not in table.columns:
            raise MinibertError(f"{path} has no text column{f' {text_column!r}' if text_column else ''} (columns: "
                                f"{', '.join(table.columns)}); name it with --text-column.")
        docs = [str(r[column]).strip() if r.get(column) is not None else "" for r in table.records]
    else:
        raise MinibertError(f"cannot read documents from {path}: use a .txt (one document per line), .txt.gz, "
                            ".jsonl or .parquet file.")
    docs = [d for d in docs if d]
    if not docs:
        raise MinibertError(f"{path} holds no text; pre-training needs at least one non-empty document.")
    return docs


def fingerprint(tokenizer: object, path: str | Path, text_column: str | None) -> str:
    """Hash of what the cached tokens depend on: the tokenizer's vocabulary and settings, and the file's identity."""
    stat = Path(path).stat()
    settings = {"version": CACHE_VERSION, "lower": tokenizer.do_lower_case, "accents": tokenizer.strip_accents,
                "cjk": tokenizer.tokenize_chinese_chars, "specials": tokenizer.special_tokens,
                "file": str(Path(path).resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns,
                "column": text_column}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update("\n".join(tokenizer.ids_to_tokens).encode())
    return digest.hexdigest()[:24]


def tokenize_documents(texts: list[str], tokenizer: object, num_workers: int = 1, progress: bool = False
                       ) -> Documents:
    """Every document's token ids, without specials, a slice of `texts` at a time behind a progress bar."""
    step = max(PROGRESS_FROM, MIN_TEXTS_PER_WORKER * num_workers)
    ids: list[list[int]] = []
    with tqdm(total=len(texts), desc="tokenizing documents", unit=" texts", disable=not progress, delay=1,
              file=sys.stderr) as bar:
        for start in range(0, len(texts), step):
            part = texts[start:start + step]
            ids += tokenizer.encode_batch(part, add_special_tokens=False, truncation=False,
                                          num_workers=num_workers)["input_ids"]
            bar.update(len(part))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in ids])
    tokens = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    return Documents(tokens, offsets)


def load_documents(path: str | Path, tokenizer: object, text_column: str | None = None,
                   num_workers: int = 1, progress: bool = False) -> tuple[Documents, bool]:
    """The tokenised documents of a file, from the cache when it holds them -> (documents, read from the cache)."""
    if not Path(path).is_file():
        raise MinibertError(f"{path} does not exist or is not a file; check the path.")
    cached = cache_folder() / "documents" / f"{fingerprint(tokenizer, path, text_column)}.npz"
    if cached.is_file():
        try:
            with np.load(cached) as f:
                return Documents(f["tokens"], f["offsets"]), True
        except (OSError, ValueError, KeyError):  # a damaged cache file is rebuilt, never trusted
            pass
    docs = tokenize_documents(read_documents(path, text_column), tokenizer, num_workers, progress)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, tokens=docs.tokens, offsets=docs.offsets)
        atomic_write_bytes(cached, buffer.getvalue())
    except OSError as e:  # a read-only home is no reason to stop: the next run tokenises again
        logger.warning("could not cache the tokenised documents in %s (%s); set MINIBERT_CACHE to a writable folder "
                       "to skip tokenising next time.", cached.parent, e)
    return docs, False


def split_documents(docs: Documents, fraction: float, seed: int) -> tuple[Documents, Documents | None]:
    """Hold out `fraction` of the documents (at least one, when there are two or more) for validation."""
    if fraction <= 0 or len(docs) < 2:
        return docs, None
    if fraction >= 1:
        raise MinibertError(f"--validation-split must be below 1, not {fraction}.")
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = min(len(docs) - 1, max(1, round(fraction * len(docs))))
    return docs.select(np.sort(order[n_val:])), docs.select(np.sort(order[:n_val]))


def pack(docs: Documents, max_length: int, cls_id: int, sep_id: int) -> np.ndarray:
    """(n, max_length) int32 sequences `[CLS] ... [SEP]`, documents end to end with [SEP] between two of them."""
    if max_length < 3:
        raise MinibertError(f"--max-length must be at least 3 ([CLS], one token, [SEP]), not {max_length}.")
    room = max_length - 2
    sequences: list[np.ndarray] = []
    current: list[np.ndarray] = []
    used = 0
    for i in range(len(docs)):
        doc = docs[i]
        if len(doc) == 0:
            continue
        if used:  # a document that shares a sequence is separated from the one before
            current.append(np.array([sep_id], dtype=np.int32))
            used += 1
        start = 0
        while True:
            take = min(room - used, len(doc) - start)
            current.append(doc[start:start + take])
            used += take
            start += take
            if used < room:
                break
            sequences.append(np.concatenate([[cls_id], *current, [sep_id]]).astype(np.int32))
            current, used = [], 0
            if start == len(doc):
                break
    if not sequences:
        raise MinibertError(f"the text has only {len(docs.tokens)} tokens, not enough for one sequence of "
                            f"--max-length {max_length}; give more text or a smaller --max-length.")
    return np.stack(sequences)
