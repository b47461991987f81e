"""A cross-encoder (reranker): one classifier forward over each (query, passage) pair, as sentence-transformers'
`CrossEncoder` loads and runs it, so that scores and rankings are the same.

    ce = CrossEncoder.from_pretrained("weights/reranker")          # a folder, a finetune run folder, or a Hub id
    ce.predict([("how long do cats live", "Cats live 12 to 18 years."), ...])   # (n,) scores after the activation
    ce.rank("how long do cats live", passages, top_k=3)                  # [{"corpus_id": 4, "score": 0.97}, ...]

What sentence-transformers decides from the folder, decided here the same way:
- the token limit: `max_seq_length` of `sentence_bert_config.json`, else the tokenizer's `model_max_length` capped
  at the model's positions; pairs longer than it are cut "longest_first";
- the prompt (`config_sentence_transformers.json`'s `prompts` / `default_prompt_name`, or `prompt=`), put before
  each query;
- the activation on the logits: `activation_fn` of `config_sentence_transformers.json` (sentence-transformers 6),
  else `config.json`'s `sentence_transformers.activation_fn` (versions 4-5) or `sbert_ce_default_activation_function`
  (older), else Sigmoid for one logit and Identity for several. sentence-transformers imports that name as code;
  minibert looks it up in `ACTIVATIONS`, and a name not there gets the default and one warning, as
  sentence-transformers does for a path it does not trust.

The work runs on `InferenceModel` (prepare, forward, pooled_logits), so the server's `/rerank` batches the pairs
of many requests together and answers what `rank` answers: see `prepare`, `activate` and `ranking`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from minibert.checkpoint_files import resolve_checkpoint
from minibert.config import BertConfig
from minibert.dynamic_batching import run_offline
from minibert.errors import MinibertError
from minibert.inference import InferenceModel, LongTextFlags, Prepared, resolve_folder
from minibert.prompts import Prompts, read_prompts
from minibert.ranking import ranking
from minibert.st_files import st_dict
from minibert.tokenizer import BertTokenizer

logger = logging.getLogger("minibert")

# The activations sentence-transformers saves as `torch.nn...Name`, by class name: the only ones minibert runs.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "Identity": nn.Identity,
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "ReLU": nn.ReLU,
    "LogSigmoid": nn.LogSigmoid,
    "Softmax": partial(nn.Softmax, dim=-1),  # what nn.Softmax() without dim picks for (pairs, labels) logits
}
DEFAULT_BATCH_TOKENS = 8192


class Scored(NamedTuple):
    """Per pair: the model's raw logits (n, labels) and the scores after the activation ((n,) for one logit)."""

    logits: torch.Tensor
    scores: torch.Tensor


def activation_named(path: str) -> nn.Module | None:
    """The activation a name stands for (`torch.nn.modules.activation.Sigmoid`, `torch.nn.Sigmoid` or `Sigmoid`),
    or None when it is not in `ACTIVATIONS`."""
    name = path.rsplit(".", 1)[-1]
    return ACTIVATIONS[name]() if name in ACTIVATIONS and (path == name or path.startswith("torch.")) else None


def read_activation(where: Path | str, config: BertConfig, revision: str | None = None) -> tuple[str, nn.Module]:
    """(its name, the activation) the folder asks for, in sentence-transformers' order of precedence; the default
    (Sigmoid for one logit, Identity otherwise) when it asks for none or for one minibert does not run."""
    st_config = config.extra.get("sentence_transformers")
    saved = [st_dict(where, "config_sentence_transformers.json", revision).get("activation_fn"),
             st_config.get("activation_fn") if isinstance(st_config, dict) else None,
             config.extra.get("sbert_ce_default_activation_function")]
    for path in (p for p in saved if p is not None):
        # sentence-transformers trusts only `torch.` paths in a file: a bare name gets the default there too
        module = activation_named(str(path)) if str(path).startswith("torch.") else None
        if module is not None:
            return str(path).rsplit(".", 1)[-1], module
        logger.warning("%s asks for the activation %r, which minibert does not run (it runs %s); using the default "
                       "activation instead.", where if isinstance(where, str) else where.name, path,
                       ", ".join(ACTIVATIONS))
    name = "Sigmoid" if config.num_labels == 1 else "Identity"
    return name, ACTIVATIONS[name]()


def st_max_length(where: Path | str, tokenizer: BertTokenizer, config: BertConfig,
                  revision: str | None = None) -> int:
    """sentence-transformers' token limit for this folder (see the module docstring)."""
    st_config = st_dict(where, "sentence_bert_config.json", revision)
    tokenizer_args = st_config.get("processor_kwargs") or st_config.get("tokenizer_args") or {}
    given = st_config.get("max_seq_length") or tokenizer_args.get("model_max_length")
    if given is not None:
        if not isinstance(given, int) or given < 2:
            raise MinibertError(f"sentence_bert_config.json of {where} gives max_seq_length {given!r}; it must be "
                                "an integer of at least 2.")
        return given
    return min(tokenizer.model_max_length, config.max_position_embeddings)


def is_cross_encoder(name_or_path: str) -> bool:
    """Whether sentence-transformers' files mark this model a CrossEncoder (for the server's page and routes)."""
    folder = resolve_folder(name_or_path)
    if st_dict(folder, "config_sentence_transformers.json").get("model_type") == "CrossEncoder":
        return True
    config = BertConfig.from_json(resolve_checkpoint(folder).config_file)
    return "sentence_transformers" in config.extra or "sbert_ce_default_activation_function" in config.extra


class CrossEncoder:
    """Scores (query, passage) pairs with a sequence classifier, as sentence-transformers' `CrossEncoder` does."""

    def __init__(self, model: InferenceModel, activation_name: str, activation: nn.Module,
                 prompts: Prompts | None = None) -> None:
        if model.classifier is None:
            raise MinibertError(f"{model.name} has no classification head; a cross-encoder needs one.")
        self.model, self.activation_name, self.activation = model, activation_name, activation
        self.prompts = prompts or Prompts()
        self.num_labels = model.classifier.config.num_labels

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, max_length: int | None = None, precision: str = "fp32",
                        attn_impl: str = "auto", device: str = "auto", revision: str | None = None,
                        quantize: str | None = None) -> CrossEncoder:
        """`name_or_path`: a folder (a finetune run folder gives its best/ model) or a Hub id. `max_length` replaces
        the folder's limit; `precision` fp32 by default, as sentence-transformers runs."""
        name_or_path = str(name_or_path)
        folder = resolve_folder(name_or_path)
        config = BertConfig.from_json(resolve_checkpoint(folder, revision=revision).config_file)
        tokenizer = BertTokenizer.from_pretrained(folder, revision=revision)
        length = max_length or st_max_length(folder, tokenizer, config, revision)
        model = InferenceModel.load(name_or_path, task="predict", max_length=length,
                                    long_text=LongTextFlags(how="truncate"), precision=precision,
                                    attn_impl=attn_impl, device=device, revision=revision, quantize=quantize)
        return cls(model, *read_activation(folder, model.classifier.config, revision), read_prompts(folder, revision))

    @property
    def max_length(self) -> int:
        return self.model.max_length["predict"]

    # --- the steps a server batches ----------------------------------------------------------------------------

    def prepare(self, query: str, texts: Sequence[str], refuse_long: bool = False, prompt_name: str | None = None,
                prompt: str | None = None) -> Prepared:
        """(query, text) pairs as model rows, cut to `max_length` (`refuse_long`: raise `TooLong` instead)."""
        return self.prepare_pairs([(query, text) for text in texts], refuse_long, prompt_name, prompt)

    def prepare_pairs(self, pairs: Sequence[tuple[str, str]], refuse_long: bool = False,
                      prompt_name: str | None = None, prompt: str | None = None) -> Prepared:
        """Pairs as model rows, the prompt (if any) before each query as sentence-transformers puts it."""
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
                raise MinibertError(f"input {i} is not a pair of two texts (query, passage).")
        prefix = self.prompts.resolve(prompt, prompt_name) or ""
        return self.model.prepare("predict", [prefix + a for a, _ in pairs], [b for _, b in pairs],
                                  refuse_long=refuse_long)

    def activate(self, logits: torch.Tensor, activation: str | Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> torch.Tensor:
        """Scores from logits (n, labels): the activation, then (n,) for a one-logit model."""
        if isinstance(activation, str):
            named = activation_named(activation)
            if named is None:
                raise MinibertError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}.")
            activation = named
        scores = (activation or self.activation)(logits.float())
        return scores.squeeze(-1) if self.num_labels == 1 else scores

    # --- whole calls -------------------------------------------------------------------------------------------

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None,
              activation: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
              max_batch_tokens: int = DEFAULT_BATCH_TOKENS, refuse_long: bool = False,
              prompt_name: str | None = None, prompt: str | None = None) -> Scored:
        """Raw logits and activated scores of every pair, in input order."""
        if not pairs:
            return Scored(torch.empty(0, self.num_labels), self.activate(torch.empty(0, self.num_labels), activation))
        prepared = self.prepare_pairs(pairs, refuse_long, prompt_name, prompt)
        outputs = run_offline(prepared.rows, lambda rows: self.model.forward("predict", rows), max_batch_tokens,
                              batch_size)
        logits = self.model.pooled_logits(outputs, prepared)
        return Scored(logits, self.activate(logits, activation))

    def predict(self, pairs: Sequence[tuple[str, str]] | tuple[str, str], batch_size: int = 32,
                activation: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
                prompt_name: str | None = None, prompt: str | None = None) -> torch.Tensor:
        """sentence-transformers' `predict`: (n,) scores for a one-logit model, (n, labels) otherwise; one pair
        (two texts) gives one score."""
        single = isinstance(pairs, (list, tuple)) and len(pairs) > 0 and isinstance(pairs[0], str)
        scores = self.score([pairs] if single else list(pairs), batch_size, activation,  # type: ignore[list-item]
                            prompt_name=prompt_name, prompt=prompt).scores
        return scores[0] if single else scores

    def rank(self, query: str, texts: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             batch_size: int = 32, activation: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
             prompt_name: str | None = None, prompt: str | None = None) -> list[dict[str, Any]]:
        """sentence-transformers' `rank`: `{"corpus_id", "score"(, "text")}` per text, highest score first."""
        if self.num_labels != 1:
            raise MinibertError(f"{self.model.name} has {self.num_labels} outputs; rank needs a model with one "
                                "(use predict for the scores of each label).")
        if isinstance(texts, str):
            raise MinibertError("rank takes a list of texts to rank; wrap a single text in a list.")
        scores = self.score([(query, text) for text in texts], batch_size, activation, prompt_name=prompt_name,
                            prompt=prompt).scores
        values = scores.tolist()
        return [{"corpus_id": i, "score": values[i], **({"text": texts[i]} if return_documents else {})}
                for i in ranking(scores, top_k)]
