"""Sentence embeddings: an encoder's token vectors pooled into one vector per text, as sentence-transformers does.

A sentence-transformers folder says how to pool in `modules.json` (Transformer -> Pooling -> Normalize) and
`1_Pooling/config.json` (CLS, mean, max or mean/sqrt(len) over the real tokens, with or without a prompt's tokens);
`sentence_bert_config.json` gives the token limit, `config_sentence_transformers.json` the prompts
(`minibert.prompts`). `truncate_dim` keeps the first components of each vector, as sentence-transformers does.
A folder without those files (a plain BERT, a fine-tuned classifier) gets the common default: mean pooling over
the real tokens, then L2 normalisation, and `Pooling.source` says so.

    encoder = SentenceEncoder.from_pretrained("../shared/models/all-MiniLM-L6-v2")
    vectors = encoder.encode(["a text", "another"])        # (2, hidden) float32, unit length
    queries = encoder.encode(["a question"], prompt_name="query", truncate_dim=128, normalize_embeddings=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from minibert.dynamic_batching import Row, collate_rows, run_offline
from minibert.errors import MinibertError
from minibert.hub import local_folder_or_repo_id
from minibert.models import BertModel
from minibert.prompts import Prompts, read_prompts
from minibert.st_files import st_dict, st_json
from minibert.tokenizer import BertTokenizer

MODES = {  # sentence-transformers' Pooling config keys -> our names
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
MODE_NAMES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len"}  # `pooling_mode`
RUNNABLE_MODULES = ("Transformer", "Pooling", "Normalize")
DEFAULT_BATCH_TOKENS = 8192


@dataclass
class Pooling:
    """How token vectors become one sentence vector; `source` names where that was read from."""

    mode: str = "mean"
    normalize: bool = True
    max_length: int | None = None
    source: str = "default (no sentence-transformers files): mean pooling over real tokens, L2-normalised"
    include_prompt: bool = True  # False: a prompt's tokens are left out of the pooled vector

    @property
    def from_files(self) -> bool:
        return not self.source.startswith("default")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling,
         pooled_from: torch.Tensor | None = None) -> torch.Tensor:
    """hidden (b, t, h), attention_mask (b, t) 1 = token -> (b, h), as sentence-transformers computes it;
    `pooled_from` (b,): per row, the first position pooled (after a prompt the pooling excludes; CLS then takes
    the first token after it, as sentence-transformers does)."""
    if pooled_from is not None:
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        attention_mask = attention_mask * (positions >= pooled_from.unsqueeze(1))
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling.mode == "cls":
        first = attention_mask.argmax(dim=1) if pooled_from is not None else torch.zeros_like(attention_mask[:, 0])
        out = hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    elif pooling.mode == "max":
        out = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    else:
        count = mask.sum(dim=1).clamp(min=1e-9)
        out = (hidden * mask).sum(dim=1) / (count if pooling.mode == "mean" else count.sqrt())
    return F.normalize(out, p=2, dim=1) if pooling.normalize else out


def read_pooling(name_or_path: str | Path, revision: str | None = None) -> Pooling:
    """The pooling a sentence-transformers folder (or Hub repo) declares, or the default when it declares none."""
    where = local_folder_or_repo_id(name_or_path, "the model")
    modules = st_json(where, "modules.json", revision)
    st_config = st_json(where, "sentence_bert_config.json", revision) or {}
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
    config = st_dict(where, f"{pooling_dir}/config.json", revision)
    chosen = [MODES[k] for k, v in config.items() if v is True and k in MODES]
    others = [k for k, v in config.items() if v is True and k.startswith("pooling_mode") and k not in MODES]
    named = config.get("pooling_mode")  # sentence-transformers 6 writes one name instead of the booleans
    if named is not None:
        (chosen if named in MODE_NAMES else others).append(MODE_NAMES.get(str(named), str(named)))
    if len(chosen) != 1 or others:
        raise MinibertError(f"{name_or_path}/{pooling_dir}/config.json asks for {', '.join(chosen + others) or 'no'} "
                            f"pooling; minibert supports exactly one of {', '.join(MODES.values())}.")
    return Pooling(chosen[0], "Normalize" in kinds, max_length,
                   f"{name_or_path}: modules.json, {pooling_dir}/config.json",
                   config.get("include_prompt", True) is not False)


class SentenceEncoder:
    """A BERT encoder, its pooling and its prompts: texts in, one vector per text out."""

    def __init__(self, model: BertModel, tokenizer: BertTokenizer, pooling: Pooling,
                 prompts: Prompts | None = None) -> None:
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        self.prompts = prompts or Prompts()
        # sentence-transformers' limit: sentence_bert_config.json's, else the tokenizer's (where version 6 saves it)
        self.max_length = min(model.config.max_position_embeddings, pooling.max_length or tokenizer.model_max_length)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None,
                        attn_impl: str = "auto") -> SentenceEncoder:
        pooling = read_pooling(name_or_path, revision)
        model = BertModel.from_pretrained(name_or_path, revision=revision, attn_impl=attn_impl,
                                          add_pooling_layer=False)
        prompts = read_prompts(local_folder_or_repo_id(name_or_path, "the model"), revision)
        return cls(model, BertTokenizer.from_pretrained(name_or_path, revision=revision), pooling, prompts)

    def pooled_from(self, prompt: str | None, max_length: int | None = None) -> int:
        """The first position pooled after `prompt`: its tokens and [CLS] when the pooling leaves the prompt out
        (sentence-transformers' prompt length: the prompt tokenised alone, without its final [SEP]), else 0."""
        if not prompt or self.pooling.include_prompt:
            return 0
        return len(self.tokenizer.encode(prompt, max_length=max_length or self.max_length, truncation=True)) - 1

    def tokenize(self, texts: Sequence[str], max_length: int | None = None, prompt: str | None = None) -> list[Row]:
        """Rows of `prompt + text` (sentence-transformers joins them as strings), cut at the token limit."""
        limit = max_length or self.max_length
        texts = [prompt + text for text in texts] if prompt else list(texts)
        enc = self.tokenizer.encode_batch(texts, max_length=limit, truncation=True)
        skip = self.pooled_from(prompt, limit)
        return [Row(ids, types, skip) for ids, types in zip(enc["input_ids"], enc["token_type_ids"])]

    def embed_rows(self, rows: Sequence[Row]) -> torch.Tensor:
        """One forward over already tokenized rows -> (len(rows), hidden) float32, on the model's device."""
        device = next(self.model.parameters()).device
        batch = collate_rows(rows, self.tokenizer.pad_token_id, device)
        hidden = self.model(**batch).last_hidden_state
        skips = [r.pooled_from for r in rows]
        pooled_from = torch.tensor(skips, device=device) if any(skips) else None
        return pool(hidden.float(), batch["attention_mask"], self.pooling, pooled_from)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
               autocast: torch.dtype | None = None, prompt_name: str | None = None, prompt: str | None = None,
               truncate_dim: int | None = None, normalize_embeddings: bool = False) -> torch.Tensor:
        """(len(texts), hidden or truncate_dim) float32 on CPU, in input order; batches of at most `max_batch_tokens`
        real tokens. `prompt_name`, `prompt`, `truncate_dim` and `normalize_embeddings` (after truncating) are
        sentence-transformers' `encode` arguments, with its defaults (the model's default prompt, if any)."""
        if isinstance(texts, str):
            raise MinibertError("encode takes a list of texts; wrap a single text in a list.")
        device = next(self.model.parameters()).device
        rows = self.tokenize(texts, prompt=self.prompts.resolve(prompt, prompt_name))

        def forward(batch: list[Row]) -> list[torch.Tensor]:
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                return list(self.embed_rows(batch).cpu())

        vectors = run_offline(rows, forward, max_batch_tokens)
        out = torch.stack(vectors) if vectors else torch.empty(0, self.model.config.hidden_size)
        if truncate_dim is not None:
            out = truncate_embeddings(out, truncate_dim)
        return F.normalize(out, p=2, dim=1) if normalize_embeddings else out


def truncate_embeddings(vectors: torch.Tensor, dim: int, normalize: bool = False) -> torch.Tensor:
    """The first `dim` components of each vector (Matryoshka-trained models keep their meaning there), L2-normalised
    again with `normalize`; more components than the vectors have is an error."""
    size = vectors.shape[-1]
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= size:
        raise MinibertError(f"cannot keep {dim!r} dimensions of vectors of {size}; ask for 1 to {size}.")
    out = vectors[..., :dim]
    return F.normalize(out, p=2, dim=-1) if normalize else out


def embed(texts: Sequence[str], model: str | Path, **kwargs: object) -> torch.Tensor:
    """`SentenceEncoder.from_pretrained(model).encode(texts, **kwargs)`, for one-off use."""
    return SentenceEncoder.from_pretrained(model).encode(texts, **kwargs)  # type: ignore[arg-type]
