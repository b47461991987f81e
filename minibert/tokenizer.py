"""`BertTokenizer`: text to model inputs and back, identical to `transformers.BertTokenizer` (its Rust backend).

    tok = BertTokenizer.from_pretrained("bert-base-uncased")           # Hub id or local folder
    enc = tok(["a text", "another"], padding=True, truncation=True, max_length=128, return_tensors="pt")
    model(**enc)                                                       # input_ids, token_type_ids, attention_mask
    tok.decode(enc.input_ids[0], skip_special_tokens=True)

Around the WordPiece pipeline of `minibert/wordpiece.py` this file adds what makes model inputs: special tokens
found whole in the text, [CLS] a [SEP] (b [SEP]) with segment ids, truncation, padding, tensors, decoding, and the
files (`vocab.txt`, `tokenizer_config.json`, `special_tokens_map.json`).

For a data pipeline, `encode_batch` tokenises many texts at once, in parallel processes when that pays, and returns
unpadded ids: padding belongs to collation, per batch.

Long inputs and spans (`return_overflowing_tokens`, `stride`, `return_offsets_mapping`, `word_ids()` ...) take a
second, slower path that keeps each token's origin (`WordPiece.encode_spans`); a plain call does not pay for it, and
computes the spans only if asked for them afterwards (`enc.word_ids()`).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import warnings
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minibert.encoding import BatchEncoding, SpanRow, keep_lengths, pad_row, pair_windows, span_row, windows
from minibert.errors import MinibertError
from minibert.files import atomic_write_text
from minibert.tokenizer_files import (
    CONFIG_FILE,
    SPECIAL_TOKENS_FILE,
    TOKENIZER_JSON,
    VOCAB_FILE,
    read_settings,
    read_tokenizer_json,
    read_vocab,
    resolve_tokenizer_files,
)
from minibert.wordpiece import CONTINUATION, WordPiece

logger = logging.getLogger("minibert")

SPECIAL_TOKEN_NAMES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REQUIRED_SPECIAL_TOKENS = ("unk_token", "cls_token", "sep_token", "pad_token")
NO_LIMIT = int(1e30)  # transformers' model_max_length when a config sets none
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
PADDING_STRATEGIES = ("longest", "max_length")
# Below this many texts per worker, starting the processes (each with a cold word cache) costs more than it saves.
MIN_TEXTS_PER_WORKER = 5000
# The clean-up of transformers' WordPiece decoder, applied to each token with its leading space.
DECODE_CLEANUP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                  (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]
# transformers' optional clean-up of the whole decoded text (`clean_up_tokenization_spaces`): the same, but " do not".
TEXT_CLEANUP = [pair for pair in DECODE_CLEANUP if pair[0] != " do not"]

TextInput = str | Sequence[str]


class BertTokenizer:
    """BERT's WordPiece tokenizer; a drop-in for `transformers.BertTokenizer` (same ids, same calls)."""

    def __init__(
        self,
        vocab: str | os.PathLike | dict[str, int],
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        never_split: list[str] | None = None,
        model_max_length: int = NO_LIMIT,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        vocab_path = None if isinstance(vocab, dict) else Path(vocab)
        self.vocab: dict[str, int] = read_vocab(vocab_path) if vocab_path is not None else dict(vocab)
        where = str(vocab_path) if vocab_path is not None else "the vocabulary"
        if sorted(self.vocab.values()) != list(range(len(self.vocab))):
            raise MinibertError(f"the ids of {where} must be 0 to {len(self.vocab) - 1}, each used once.")
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        # Kept for the config file only: like transformers' default (Rust) tokenizer, splitting ignores it.
        self.never_split = never_split
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.special_tokens = {"unk_token": unk_token, "sep_token": sep_token, "pad_token": pad_token,
                               "cls_token": cls_token, "mask_token": mask_token}
        for name in REQUIRED_SPECIAL_TOKENS:
            if self.special_tokens[name] not in self.vocab:
                raise MinibertError(f"{where} has no {name} {self.special_tokens[name]!r}; BERT needs it in the "
                                    "vocabulary (check the file or the special tokens in tokenizer_config.json).")
        self.ids_to_tokens = sorted(self.vocab, key=self.vocab.__getitem__)
        self.all_special_ids = {self.vocab[t] for t in self.special_tokens.values() if t in self.vocab}
        # Special tokens are found in the raw text before any normalisation, longest first, and kept whole.
        specials = sorted((t for t in self.special_tokens.values() if t in self.vocab), key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        self.wordpiece = WordPiece(self.vocab, self.vocab[unk_token], lowercase=do_lower_case,
                                   strip_accents=strip_accents, split_cjk=tokenize_chinese_chars)
        self._warned_too_long = False

    # --- files ---------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, **overrides: Any) -> BertTokenizer:
        """Load from a folder with `vocab.txt` (and optionally `tokenizer_config.json`, `special_tokens_map.json`),
        or from a Hub repo id; keyword arguments override the config (e.g. `model_max_length=128`)."""
        folder = resolve_tokenizer_files(name_or_path, revision, cache_dir)
        settings = read_settings(folder)
        kwargs = {key: settings[key] for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars",
                                                 "never_split", "model_max_length", "clean_up_tokenization_spaces")
                  if settings.get(key) is not None}
        for name in SPECIAL_TOKEN_NAMES:
            token = settings.get(name)
            if token is not None:  # special_tokens_map.json may hold {"content": "[UNK]", ...} instead of a string
                kwargs[name] = token["content"] if isinstance(token, dict) else token
        vocab: Path | dict[str, int] = folder / VOCAB_FILE
        if not vocab.is_file():  # a folder transformers 5 saved: the vocabulary (and normalizer) of tokenizer.json
            vocab, normalizer = read_tokenizer_json(folder / TOKENIZER_JSON)
            kwargs.update(normalizer)
        return cls(vocab, **{**kwargs, **overrides})

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[Path]:
        """Write `vocab.txt`, `tokenizer_config.json` and `special_tokens_map.json`; transformers loads them as is."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                  "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.tokenize_chinese_chars,
                  "never_split": self.never_split, "model_max_length": self.model_max_length,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces, **self.special_tokens}
        files = {VOCAB_FILE: "".join(token + "\n" for token in self.ids_to_tokens),
                 CONFIG_FILE: json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                 SPECIAL_TOKENS_FILE: json.dumps(self.special_tokens, indent=2, ensure_ascii=False) + "\n"}
        for name, text in files.items():
            atomic_write_text(folder / name, text)
        return [folder / name for name in files]

    # --- vocabulary ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def __getattr__(self, name: str) -> Any:
        """`tok.unk_token` ... `tok.mask_token` and their ids `tok.unk_token_id` ..., as in transformers."""
        special_tokens = self.__dict__.get("special_tokens", {})
        if name in special_tokens:
            return special_tokens[name]
        if name.endswith("_id") and name[:-3] in special_tokens:
            return self.vocab.get(special_tokens[name[:-3]])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Vocabulary ids; a token not in the vocabulary gives the unknown token's id."""
        unk = self.vocab[self.special_tokens["unk_token"]]
        if isinstance(tokens, str):
            return self.vocab.get(tokens, unk)
        return [self.vocab.get(token, unk) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False
                              ) -> str | None | list[str | None]:
        """Tokens for ids (None for an id outside the vocabulary, as transformers does)."""
        if isinstance(ids, int):
            return self._token(ids)
        return [self._token(i) for i in _as_list(ids) if not (skip_special_tokens and i in self.all_special_ids)]

    def _token(self, token_id: int) -> str | None:
        return self.ids_to_tokens[token_id] if 0 <= token_id < len(self.ids_to_tokens) else None

    # --- encoding ------------------------------------------------------------------------------------------

    def _encode_text(self, text: str) -> list[int]:
        """The ids of one text, no [CLS]/[SEP] added: special tokens in it kept whole, the rest WordPiece'd."""
        if not isinstance(text, str):
            raise MinibertError(f"the tokenizer takes a str or a list of str, not {type(text).__name__}.")
        ids: list[int] = []
        # re.split puts the special tokens at the odd positions
        for i, part in enumerate(self._special_split.split(text)):
            ids += [self.vocab[part]] if i % 2 else self.wordpiece.encode(part)
        return ids

    def _encode_text_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]], list[int]]:
        """`_encode_text` with each token's (start, end) in `text` and its word index (a special token found in the
        text is a word of its own)."""
        if not isinstance(text, str):
            raise MinibertError(f"the tokenizer takes a str or a list of str, not {type(text).__name__}.")
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        words: list[int] = []
        at = word_count = 0
        for i, part in enumerate(self._special_split.split(text)):
            if i % 2:
                ids.append(self.vocab[part])
                offsets.append((at, at + len(part)))
                words.append(word_count)
                word_count += 1
            elif part:
                part_ids, part_offsets, part_words = self.wordpiece.encode_spans(part)
                ids += part_ids
                offsets += [(at + start, at + end) for start, end in part_offsets] if at else part_offsets
                words += [word_count + word for word in part_words] if word_count else part_words
                word_count += part_words[-1] + 1 if part_words else 0
            at += len(part)
        return ids, offsets, words

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        ids, _ = self._build(self._encode_text(text), None if pair is None else self._encode_text(pair),
                             add_special_tokens)
        return [self.ids_to_tokens[i] for i in ids]

    def __call__(
        self,
        text: TextInput,
        text_pair: TextInput | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Encode a text, a pair, or a list of either, into `input_ids`, `token_type_ids` and `attention_mask`:
        lists (lists of lists for a list input) or, with `return_tensors="pt"`, (batch, seq) `torch.long` tensors.

        `return_overflowing_tokens=True` keeps what truncation cuts, as more rows of `max_length` tokens that
        overlap by `stride` tokens, with `overflow_to_sample_mapping` (each row's input index); the output is then
        batched even for a single text. `return_offsets_mapping` gives each token's (start, end) characters in its
        original text ((0, 0) for [CLS], [SEP] and padding)."""
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        if text_pair is None or (text_pair == "" and not batched):  # transformers drops one text's empty pair
            pairs: list[str | None] = [None] * len(texts)
        else:
            pairs = list(text_pair) if batched else [text_pair]
            if isinstance(text_pair, str) == batched or len(pairs) != len(texts):
                raise MinibertError(f"text_pair must match text: {len(texts)} text(s) but {len(pairs)} pair(s), "
                                    "or a str where the other is a list.")
        padding, truncation, max_length = self._strategies(padding, truncation, max_length, pad_to_multiple_of,
                                                           verbose)
        if not isinstance(stride, int) or stride < 0:
            raise MinibertError(f"stride={stride!r} must be a whole number of tokens, 0 or more.")
        options = (add_special_tokens, truncation, max_length, stride, padding, pad_to_multiple_of)
        if not (stride or return_overflowing_tokens or return_special_tokens_mask or return_offsets_mapping
                or return_length):
            rows = [self._build(self._encode_text(a), None if b is None else self._encode_text(b), add_special_tokens,
                                truncation, max_length) for a, b in zip(texts, pairs)]
            if verbose and max_length is None:
                self._warn_if_too_long([ids for ids, _ in rows])
            enc = self._pad(rows, padding, max_length, pad_to_multiple_of)
            enc._rows = lambda: self._span_rows(texts, pairs, *options)[0]  # computed if asked for, not before
        else:
            span_rows, sample = self._span_rows(texts, pairs, *options)
            if verbose and max_length is None:
                self._warn_if_too_long([row.ids for row in span_rows])
            enc = BatchEncoding(input_ids=[row.ids for row in span_rows],
                                token_type_ids=[row.type_ids for row in span_rows],
                                attention_mask=[row.attention_mask for row in span_rows], rows=span_rows)
            if return_special_tokens_mask:
                enc["special_tokens_mask"] = [row.special for row in span_rows]
            if return_offsets_mapping:
                enc["offset_mapping"] = [row.offsets for row in span_rows]
            if return_length:
                enc["length"] = [len(row.ids) for row in span_rows]
            if return_overflowing_tokens:
                enc["overflow_to_sample_mapping"] = sample
        if return_token_type_ids is False:
            del enc["token_type_ids"]
        if return_attention_mask is False:
            del enc["attention_mask"]
        if return_tensors is not None:
            return _to_tensors(enc, return_tensors)
        if batched or return_overflowing_tokens:
            return enc
        # one text: its row alone, except what is not a list per row (transformers keeps `length` as [n])
        return BatchEncoding({key: value[0] if value and isinstance(value[0], list) else value
                              for key, value in enc.items()}, rows=enc._rows)

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
               return_tensors: str | None = None) -> list[int] | Any:
        """The `input_ids` of one text or pair."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                    max_length=max_length, return_tensors=return_tensors)["input_ids"]

    def encode_batch(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                     max_length: int | None = None, truncation: bool | str = True, add_special_tokens: bool = True,
                     num_workers: int = 1, stride: int = 0, return_overflowing_tokens: bool = False) -> BatchEncoding:
        """Tokenise a whole data set for the data pipeline: `input_ids` and `token_type_ids` as lists of lists, not
        padded (collation pads per batch), the same ids as `__call__` with the same arguments.

        `num_workers > 1` splits the work over that many processes once there are enough texts for it to pay
        (MIN_TEXTS_PER_WORKER each); `max_length=None` truncates to `model_max_length`. With
        `return_overflowing_tokens=True` a long input gives several windows overlapping by `stride` tokens, and
        `overflow_to_sample_mapping` says which input each row comes from."""
        pairs = [None] * len(texts) if text_pairs is None else list(text_pairs)
        if len(pairs) != len(texts):
            raise MinibertError(f"encode_batch got {len(texts)} texts but {len(pairs)} text pairs.")
        if not isinstance(stride, int) or stride < 0:
            raise MinibertError(f"stride={stride!r} must be a whole number of tokens, 0 or more.")
        _, truncation, max_length = self._strategies(False, truncation, max_length, None, verbose=False)
        jobs = min(num_workers, len(texts) // MIN_TEXTS_PER_WORKER)
        work = list(zip(texts, pairs))
        options = (add_special_tokens, truncation, max_length, stride, return_overflowing_tokens)
        if jobs <= 1:
            rows, sample = self._encode_rows(work, *options)
        else:
            chunk = -(-len(work) // (jobs * 4))  # a few chunks per worker evens out slow and fast ones
            bounds = [(start, start + chunk) for start in range(0, len(work), chunk)]
            # fork hands the tokenizer and the texts to the workers without copying; elsewhere they are pickled
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(jobs, _start_worker, (self, work, *options)) as pool:
                rows, sample = [], []
                for packed, part_sample in pool.map(_encode_in_worker, bounds):
                    rows += _unpack(packed)
                    sample += part_sample
        enc = BatchEncoding(input_ids=[ids for ids, _ in rows], token_type_ids=[types for _, types in rows])
        if return_overflowing_tokens:
            enc["overflow_to_sample_mapping"] = sample
        return enc

    def _encode_rows(self, work: list[tuple[str, str | None]], add_special_tokens: bool, truncation: str | None,
                     max_length: int | None, stride: int = 0, overflow: bool = False
                     ) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
        """(input_ids, token_type_ids) rows of `work` and the index in `work` of each row's input."""
        if not (stride or overflow):
            return [self._build(self._encode_text(a), None if b is None else self._encode_text(b), add_special_tokens,
                                truncation, max_length) for a, b in work], list(range(len(work)))
        span_rows, sample = self._span_rows([a for a, _ in work], [b for _, b in work], add_special_tokens,
                                            truncation, max_length, stride, None, None)
        if not overflow:  # stride alone: only the first window of each input, as `__call__` returns it
            firsts = [i for i, index in enumerate(sample) if i == 0 or index != sample[i - 1]]
            span_rows, sample = [span_rows[i] for i in firsts], [sample[i] for i in firsts]
        return [(row.ids, row.type_ids) for row in span_rows], sample

    def _strategies(self, padding: bool | str, truncation: bool | str | None, max_length: int | None,
                    pad_to_multiple_of: int | None, verbose: bool) -> tuple[str | None, str | None, int | None]:
        """transformers' rules for what `padding`, `truncation` and `max_length` mean together."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # a max_length alone truncates, as it always has in transformers
        if padding is True and verbose and max_length is not None and truncation in (None, False, "do_not_truncate"):
            warnings.warn("`max_length` is ignored when `padding`=`True` and there is no truncation strategy. "
                          "To pad to max length, use `padding='max_length'`.", stacklevel=3)
        padding = {True: "longest", False: None, "do_not_pad": None}.get(padding, padding)
        truncation = {True: "longest_first", False: None, "do_not_truncate": None}.get(truncation, truncation)
        if padding not in (None, *PADDING_STRATEGIES):
            raise MinibertError(f"padding={padding!r} is not one of True, False, {', '.join(PADDING_STRATEGIES)}.")
        if truncation not in (None, *TRUNCATION_STRATEGIES):
            raise MinibertError(f"truncation={truncation!r} is not one of True, False, "
                                f"{', '.join(TRUNCATION_STRATEGIES)}.")
        no_limit = self.model_max_length >= NO_LIMIT
        if max_length is None and padding == "max_length":
            padding, max_length = (None, None) if no_limit else (padding, self.model_max_length)
        if max_length is None and truncation is not None:
            truncation, max_length = (None, None) if no_limit else (truncation, self.model_max_length)
        if (truncation and padding and pad_to_multiple_of and max_length is not None
                and max_length % pad_to_multiple_of):
            raise MinibertError(f"max_length ({max_length}) must be a multiple of pad_to_multiple_of "
                                f"({pad_to_multiple_of}) when truncating and padding together.")
        return padding, truncation, max_length

    def _build(self, a: list[int], b: list[int] | None, add_special_tokens: bool, truncation: str | None = None,
               max_length: int | None = None) -> tuple[list[int], list[int]]:
        """Truncate, then add [CLS]/[SEP]: (input_ids, token_type_ids) of one example."""
        if truncation is not None and max_length is not None:
            specials = (3 if b is not None else 2) if add_special_tokens else 0
            a, b = truncate(a, b, max_length - specials, truncation)
        if not add_special_tokens:
            return a + (b or []), [0] * len(a) + [1] * len(b or [])
        cls, sep = self.vocab[self.special_tokens["cls_token"]], self.vocab[self.special_tokens["sep_token"]]
        ids = [cls, *a, sep]
        if b is None:
            return ids, [0] * len(ids)
        return ids + b + [sep], [0] * len(ids) + [1] * (len(b) + 1)

    def _span_rows(self, texts: list[str], pairs: list[str | None], add_special_tokens: bool, truncation: str | None,
                   max_length: int | None, stride: int, padding: str | None, pad_to_multiple_of: int | None
                   ) -> tuple[list[SpanRow], list[int]]:
        """The slow path: each input's rows (one, or its windows) with where each token came from, padded, and the
        input index of each row."""
        if truncation is not None and max_length is not None and max_length - 2 >= 0 and max_length - 2 < stride:
            raise MinibertError(f"stride={stride} must be at most max_length ({max_length}) minus the 2 special "
                                "tokens; lower stride or raise max_length.")
        rows: list[SpanRow] = []
        sample: list[int] = []
        cls, sep = self.vocab[self.special_tokens["cls_token"]], self.vocab[self.special_tokens["sep_token"]]
        specials = (cls, sep) if add_special_tokens else None
        for index, (a, b) in enumerate(zip(texts, pairs)):
            seq_a = self._encode_text_spans(a)
            seq_b = None if b is None else self._encode_text_spans(b)
            keep_a, keep_b = len(seq_a[0]), None if seq_b is None else len(seq_b[0])
            if truncation is not None and max_length is not None:
                room = max_length - ((2 if seq_b is None else 3) if add_special_tokens else 0)
                keep_a, keep_b = keep_lengths(keep_a, keep_b, room, truncation)
            windows_b = None if seq_b is None else windows(len(seq_b[0]), keep_b, stride)
            for window_a, window_b in pair_windows(windows(len(seq_a[0]), keep_a, stride), windows_b):
                rows.append(span_row(seq_a, window_a, seq_b, window_b, specials))
                sample.append(index)
        # as in tokenizers, padding to the longest looks at each input's first row only (overflow rows may be longer)
        firsts = [len(row.ids) for i, row in enumerate(rows) if i == 0 or sample[i] != sample[i - 1]]
        target = self._pad_target(firsts, padding, max_length, pad_to_multiple_of)
        pad = self.vocab[self.special_tokens["pad_token"]]
        return [pad_row(row, target, pad) for row in rows], sample

    @staticmethod
    def _pad_target(lengths: list[int], padding: str | None, max_length: int | None, pad_to_multiple_of: int | None
                    ) -> int:
        """The length to pad every row to (0: no padding)."""
        target = max(lengths) if padding == "longest" and lengths else max_length
        if padding is None or target is None:
            return 0
        if pad_to_multiple_of:
            return -(-target // pad_to_multiple_of) * pad_to_multiple_of
        return target

    def _pad(self, rows: list[tuple[list[int], list[int]]], padding: str | None, max_length: int | None,
             pad_to_multiple_of: int | None) -> BatchEncoding:
        """Right padding with [PAD], type 0 and mask 0, to the longest row or to max_length."""
        target = self._pad_target([len(ids) for ids, _ in rows], padding, max_length, pad_to_multiple_of)
        pad = self.vocab[self.special_tokens["pad_token"]]
        enc = BatchEncoding(input_ids=[], token_type_ids=[], attention_mask=[])
        for ids, types in rows:
            missing = max(target - len(ids), 0)
            enc["input_ids"].append(ids + [pad] * missing)
            enc["token_type_ids"].append(types + [0] * missing)
            enc["attention_mask"].append([1] * len(ids) + [0] * missing)
        return enc

    def _warn_if_too_long(self, rows: list[list[int]]) -> None:
        """transformers' warning, once per tokenizer, for an input the model cannot take whole."""
        too_long = next((len(ids) for ids in rows if len(ids) > self.model_max_length), None)
        if too_long is not None and not self._warned_too_long:
            logger.warning("Token indices sequence length is longer than the specified maximum sequence length for "
                           f"this model ({too_long} > {self.model_max_length}). Running this sequence through the "
                           "model will result in indexing errors")
            self._warned_too_long = True

    # --- decoding ------------------------------------------------------------------------------------------

    def decode(self, token_ids: int | Sequence[int] | Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text from ids: "##" pieces glued to the previous token, the rest joined by spaces, as transformers does
        (ids outside the vocabulary are dropped)."""
        ids = _as_list(token_ids)
        tokens = [token for token in (self._token(i) for i in ids if not (skip_special_tokens and
                                                                           i in self.all_special_ids))
                  if token is not None]
        text = tokens_to_string(tokens)
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            for old, new in TEXT_CLEANUP:
                text = text.replace(old, new)
        return text

    def batch_decode(self, sequences: Sequence[Sequence[int]] | Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        return [self.decode(ids, skip_special_tokens, clean_up_tokenization_spaces) for ids in _as_list(sequences)]


def tokens_to_string(tokens: Sequence[str]) -> str:
    """WordPiece's decoder (transformers' `convert_tokens_to_string`): "##" pieces glued on, the rest joined by
    spaces, each token cleaned up as transformers does."""
    pieces = []
    for i, token in enumerate(tokens):
        if i > 0:
            token = token[len(CONTINUATION):] if token.startswith(CONTINUATION) else " " + token
        for old, new in DECODE_CLEANUP:
            token = token.replace(old, new)
        pieces.append(token)
    return "".join(pieces)


def truncate(a: list[int], b: list[int] | None, room: int, strategy: str) -> tuple[list[int], list[int] | None]:
    """Cut a text (or a pair) to `room` tokens, exactly as `tokenizers` does (see `keep_lengths`)."""
    keep_a, keep_b = keep_lengths(len(a), None if b is None else len(b), room, strategy)
    return a[:keep_a], None if b is None else b[:keep_b]


def _as_list(ids: Any) -> list:
    """Lists, tuples, and tensors or arrays (through their `tolist`) alike; a single id becomes a list of one."""
    ids = ids.tolist() if hasattr(ids, "tolist") else ids
    return [ids] if isinstance(ids, int) else list(ids)


def _to_tensors(enc: BatchEncoding, return_tensors: str) -> BatchEncoding:
    if return_tensors != "pt":
        raise MinibertError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or None.")
    import torch  # only here: tokenising needs no torch, and worker processes start faster without it

    lengths = {len(ids) for ids in enc["input_ids"]}
    if len(lengths) > 1:
        raise MinibertError("the texts have different lengths and cannot be stacked into a tensor; "
                            "pass padding=True (or padding='max_length').")
    return BatchEncoding({key: torch.tensor(value, dtype=torch.long) for key, value in enc.items()}, rows=enc._rows)


# --- encode_batch's worker processes ---------------------------------------------------------------------------

_worker_state: tuple = ()


def _start_worker(*state: Any) -> None:
    global _worker_state
    _worker_state = state


def _encode_in_worker(bounds: tuple[int, int]) -> tuple[tuple[array, array, array], list[int]]:
    tokenizer, work, *options = _worker_state
    rows, sample = tokenizer._encode_rows(work[bounds[0]:bounds[1]], *options)
    return _pack(rows), [bounds[0] + index for index in sample]


def _pack(rows: list[tuple[list[int], list[int]]]) -> tuple[array, array, array]:
    """Rows as three flat int arrays (all ids, each row's length, each row's first-segment length): arrays cross the
    process boundary as bytes, several times faster to unpickle than millions of ints in lists."""
    ids, lengths, firsts = array("i"), array("i"), array("i")
    for row_ids, types in rows:
        ids.extend(row_ids)
        lengths.append(len(row_ids))
        firsts.append(types.count(0))
    return ids, lengths, firsts


def _unpack(packed: tuple[array, array, array]) -> list[tuple[list[int], list[int]]]:
    ids, lengths, firsts = packed
    rows, start = [], 0
    for length, first in zip(lengths, firsts):
        rows.append((ids[start:start + length].tolist(), [0] * first + [1] * (length - first)))
        start += length
    return rows
