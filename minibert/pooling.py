"""Sentence embeddings: an encoder's token vectors pooled into one vector per text, as sentence-transformers does.

A sentence-transformers folder says how to pool in `modules.json` (Transformer -> Pooling -> Normalize) and
`1_Pooling/config.json` (CLS, mean, max or mean/sqrt(len) over the real tokens); `sentence_bert_config.json` gives
the token limit. A folder without those files (a plain BERT, a fine-tuned classifier) gets the common default:
mean pooling over the real tokens, then L2 normalisation, and `Pooling.source` says so.

    encoder = SentenceEncoder.from_pretrained("../shared/models/all-MiniLM-L6-v2")
    vectors = encoder.encode(["a text", "another"])        # (2, hidden) float32, unit length
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from minibert.batching import Row, collate_rows, run_offline
from minibert.errors import MinibertError
from minibert.hub import hub_file, local_folder_or_repo_id
from minibert.models import BertModel
from minibert.tokenizer import BertTokenizer

MODES = {  # sentence-transformers' Pooling config keys -> our names
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
RUNNABLE_MODULES = ("Transformer", "Pooling", "Normalize")
DEFAULT_BATCH_TOKENS = 8192


@dataclass
class Pooling:
    """How token vectors become one sentence vector; `source` names where that was read from."""

    mode: str = "mean"
    normalize: bool = True
    max_length: int | None = None
    source: str = "default (no sentence-transformers files): mean pooling over real tokens, L2-normalised"

    @property
    def from_files(self) -> bool:
        return not self.source.startswith("default")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """hidden (b, t, h), attention_mask (b, t) 1 = token -> (b, h), as sentence-transformers computes it."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling.mode == "cls":
        out = hidden[:, 0]
    elif pooling.mode == "max":
        out = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    else:
        count = mask.sum(dim=1).clamp(min=1e-9)
        out = (hidden * mask).sum(dim=1) / (count if pooling.mode == "mean" else count.sqrt())
    return F.normalize(out, p=2, dim=1) if pooling.normalize else out


def _read_json(path: Path | None, what: str) -> dict | list | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MinibertError(f"{path} is not readable JSON ({e}); it should be the {what} that "
                            "sentence-transformers wrote.") from None


def read_pooling(name_or_path: str | Path, revision: str | None = None) -> Pooling:
    """The pooling a sentence-transformers folder (or Hub repo) declares, or the default when it declares none."""
    where = local_folder_or_repo_id(name_or_path, "the model")

    def find(name: str) -> Path | None:
        if isinstance(where, Path):
            return where / name
        return hub_file(where, name, revision, None, required=False)

    modules = _read_json(find("modules.json"), "modules.json")
    st_config = _read_json(find("sentence_bert_config.json"), "sentence_bert_config.json") or {}
    max_length = st_config.get("max_seq_length") if isinstance(st_config, dict) else None
    if modules is None:
        return Pooling(max_length=max_length)
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds == ["Transformer"]:  # a CrossEncoder's folder: a classifier, which declares no pooling of its own
        return Pooling(max_length=max_length, source="default (a cross-encoder: modules.json has no Pooling): mean "
                                                     "pooling over real tokens, L2-normalised")
    unknown = [k for k in kinds if k not in RUNNABLE_MODULES]
    if unknown or "Pooling" not in kinds:
        raise MinibertError(f"{name_or_path}/modules.json lists {', '.join(unknown) or 'no Pooling module'}; "
                            f"minibert runs only {', '.join(RUNNABLE_MODULES)} (Transformer, then Pooling).")
    pooling_dir = modules[kinds.index("Pooling")].get("path", "1_Pooling")
    config = _read_json(find(f"{pooling_dir}/config.json"), "pooling config") or {}
    chosen = [MODES[k] for k, v in config.items() if v is True and k in MODES]
    others = [k for k, v in config.items() if v is True and k.startswith("pooling_mode") and k not in MODES]
    if len(chosen) != 1 or others:
        raise MinibertError(f"{name_or_path}/{pooling_dir}/config.json asks for {', '.join(chosen + others) or 'no'} "
                            f"pooling; minibert supports exactly one of {', '.join(MODES.values())}.")
    return Pooling(chosen[0], "Normalize" in kinds, max_length,
                   f"{name_or_path}: modules.json, {pooling_dir}/config.json")


class SentenceEncoder:
    """A BERT encoder and its pooling: texts in, one vector per text out."""

    def __init__(self, model: BertModel, tokenizer: BertTokenizer, pooling: Pooling) -> None:
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        limits = [model.config.max_position_embeddings, pooling.max_length or model.config.max_position_embeddings]
        self.max_length = min(limits)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None,
                        attn_impl: str = "auto") -> SentenceEncoder:
        pooling = read_pooling(name_or_path, revision)
        model = BertModel.from_pretrained(name_or_path, revision=revision, attn_impl=attn_impl,
                                          add_pooling_layer=False)
        return cls(model, BertTokenizer.from_pretrained(name_or_path, revision=revision), pooling)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[Row]:
        enc = self.tokenizer.encode_batch(list(texts), max_length=max_length or self.max_length, truncation=True)
        return [Row(ids, types) for ids, types in zip(enc["input_ids"], enc["token_type_ids"])]

    def embed_rows(self, rows: Sequence[Row]) -> torch.Tensor:
        """One forward over already tokenized rows -> (len(rows), hidden) float32, on the model's device."""
        batch = collate_rows(rows, self.tokenizer.pad_token_id, next(self.model.parameters()).device)
        hidden = self.model(**batch).last_hidden_state
        return pool(hidden.float(), batch["attention_mask"], self.pooling)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
               autocast: torch.dtype | None = None) -> torch.Tensor:
        """(len(texts), hidden) float32 on CPU, in input order; batches of at most `max_batch_tokens` real tokens."""
        if isinstance(texts, str):
            raise MinibertError("encode takes a list of texts; wrap a single text in a list.")
        device = next(self.model.parameters()).device
        rows = self.tokenize(texts)

        def forward(batch: list[Row]) -> list[torch.Tensor]:
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                return list(self.embed_rows(batch).cpu())

        vectors = run_offline(rows, forward, max_batch_tokens)
        return torch.stack(vectors) if vectors else torch.empty(0, self.model.config.hidden_size)


def embed(texts: Sequence[str], model: str | Path, **kwargs: object) -> torch.Tensor:
    """`SentenceEncoder.from_pretrained(model).encode(texts, **kwargs)`, for one-off use."""
    return SentenceEncoder.from_pretrained(model).encode(texts, **kwargs)  # type: ignore[arg-type]
