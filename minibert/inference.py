"""A model folder loaded for inference, with every choice about it made once: what `predict`, `embed` and `serve` run.

    model = InferenceModel.load("weights/sst2")                # a run folder gives its best/ model
    prepared = model.prepare("predict", ["a fine film", "a dull one"])
    outputs = run_offline(prepared.rows, lambda rows: model.forward("predict", rows), 8192)
    records = model.records(model.pooled_logits(outputs, prepared))

Decided at load, in one place each: the folder, the tokenizer, the task (a sequence classifier, or an embedding
model: the plain encoder and its pooling), the labels, the `max_length` (capped at the model's positions by
`BertConfig.fit_max_length`), how long texts are read (the flags given, else the folder's `long_text.json`, else
`--long-text auto`'s rule: `long_text_options`), the precision and the device.

The work is split in three so that a server can batch texts of many requests together: `prepare` (tokenise: a
long text may become several windows, each one `Row`), `forward` (one forward over any rows: the only step that
runs the model, in the batcher's worker threads), and `pooled_logits` / `records` (windows pooled per text, then
the answer in `predict`'s words). `predict` and `serve` therefore give the same answer for the same text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minibert import run_folder
from minibert.attention import ATTN_IMPLS
from minibert.checkpoint_files import read_shapes, resolve_checkpoint
from minibert.config import BertConfig
from minibert.devices import Precision, choose_device
from minibert.dynamic_batching import Row, collate_rows
from minibert.entities import text_windows, texts_entities
from minibert.errors import MinibertError
from minibert.heads import BertForSequenceClassification, BertForTokenClassification
from minibert.hub import local_folder_or_repo_id
from minibert.labels import Labels
from minibert.long_text import SUN_ET_AL_HEAD, encode_long, pool_windows
from minibert.long_text_options import LongText, read_record, resolve_long_text
from minibert.models import BertModel
from minibert.pooling import Pooling, SentenceEncoder, read_pooling, truncate_embeddings
from minibert.prompts import read_prompts
from minibert.quantize import SCHEMES, quantize_model
from minibert.token_labels import TokenWindows
from minibert.tokenizer import BertTokenizer

logger = logging.getLogger("minibert")
KINDS = ("predict", "embed", "tokens")  # tokens: a token classifier's tags (NER)
DEFAULT_MAX_LENGTH = 512  # predict's and serve's length for a model folder that records none


class TooLong(MinibertError):
    """A text over the token limit while long texts are refused (`serve --no-truncate`)."""


@dataclass
class LongTextFlags:
    """`--long-text`, `--head-tokens`, `--stride`, `--pool` as given on a command line (None: not given)."""

    how: str = "auto"
    head_tokens: int | None = None
    stride: int | None = None
    pool: str | None = None


@dataclass
class Prepared:
    """Texts as the model's sequences: `rows[i]` belongs to text `doc_index[i]`; per text, how many sequences it was
    read as (`windows`) and whether tokens were dropped (`truncated`)."""

    rows: list[Row]
    doc_index: list[int]
    windows: list[int]
    truncated: list[bool]
    tagged: tuple[list[str], list[Any], TokenWindows] | None = None  # "tokens": the texts, offsets and windows

    def __len__(self) -> int:
        return len(self.windows)


def model_folder(path: Path) -> Path:
    """The model in a run folder (`best/`, else the newest checkpoint), or the folder itself."""
    if (path / "best" / "config.json").is_file():
        return path / "best"
    if (path / "config.json").is_file():
        return path
    if path.is_dir():
        return run_folder.find_checkpoint(path)
    raise MinibertError(f"{path} does not exist; pass the run folder written by minibert.finetune.")


def resolve_folder(name_or_path: str) -> Path | str:
    """A local model folder (a finetune run folder gives its best/ model), or a Hub id as is."""
    where = local_folder_or_repo_id(name_or_path, "config.json and the weights")
    return model_folder(where) if isinstance(where, Path) else where


def display_name(name_or_path: str, folder: Path | str) -> str:
    """How answers name the model: a Hub id as is, a local model by its folder's name (never an absolute path);
    a run folder's best/ model by the run's name."""
    if isinstance(folder, str):
        return folder
    named = folder.parent if folder.name == "best" or folder.name.startswith("checkpoint") else folder
    return named.resolve().name or Path(name_or_path).name


def is_classifier(config: BertConfig) -> bool:
    return any(str(a).endswith("ForSequenceClassification") for a in config.extra.get("architectures") or [])


def is_token_classifier(config: BertConfig) -> bool:
    """What config.json says the model was saved as (transformers and minibert both write `architectures`)."""
    return any(str(a).endswith("ForTokenClassification") for a in config.extra.get("architectures") or [])


def check_has_classifier(folder: Path | str, name: str) -> None:
    """A model without a trained classification head would label texts at random: refuse it up front."""
    shapes = read_shapes(resolve_checkpoint(folder).weight_files) if isinstance(folder, Path) else None
    if shapes is not None and not any(key.endswith("classifier.weight") for key in shapes):
        raise MinibertError(f"{name} has no classification head (no classifier.weight): it is not a fine-tuned "
                            "classifier; fine-tune it first with python -m minibert.finetune, or use "
                            "python -m minibert.embed for sentence embeddings.")


def records(logits: torch.Tensor, labels: Labels, all_scores: bool = True) -> list[dict[str, Any]]:
    """One answer per row of logits: label and score (multi-label: the labels over 0.5 and their scores), and with
    `all_scores` every label's probability; regression: the value as `score`."""
    if labels.problem_type == "regression":
        return [{"score": value} for value in logits.view(-1).tolist()]
    multi = labels.problem_type == "multi_label_classification"
    probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
    out = []
    for row in probs.tolist():
        if multi:
            chosen = [i for i, p in enumerate(row) if p > 0.5]
            record: dict[str, Any] = {"label": [labels.names[i] for i in chosen], "score": [row[i] for i in chosen]}
        else:
            best = max(range(len(row)), key=row.__getitem__)
            record = {"label": labels.names[best], "score": row[best]}
        if all_scores:
            record["scores"] = dict(zip(labels.names, row))
        out.append(record)
    return out


class InferenceModel:
    """A classifier or an embedding model, ready to answer: see the module docstring. Build it with `load`."""

    def __init__(self, name: str, tokenizer: BertTokenizer, encoder: SentenceEncoder,
                 classifier: BertForSequenceClassification | None, max_length: int, long_text: dict[bool, LongText],
                 long_text_source: str, pool: str, precision: Precision, device: torch.device,
                 tagger: BertForTokenClassification | None = None) -> None:
        self.name, self.tokenizer, self.encoder, self.classifier = name, tokenizer, encoder, classifier
        self.tagger = tagger
        self.tag_names = ([tagger.config.id2label[i] for i in range(tagger.config.num_labels)]
                          if tagger is not None else None)
        self.labels = (Labels.from_config(classifier.config.problem_type, classifier.config.id2label)
                       if classifier is not None else None)
        self.config = encoder.model.config
        self.attn_impl = encoder.model.attn_impl
        self.max_length = {"predict": max_length, "embed": encoder.max_length}
        self._long_text, self.long_text_source, self.pool = long_text, long_text_source, pool
        self.precision, self.device = precision, device

    @classmethod
    def load(cls, model: str, *, task: str | None = None, max_length: int | None = None,
             long_text: LongTextFlags | None = None, precision: str = "auto", attn_impl: str = "auto",
             device: str = "auto", revision: str | None = None, quantize: str | None = None) -> InferenceModel:
        """`model`: a folder (a finetune run folder gives its best/ model) or a Hub id. `task="predict"` refuses a
        model without a trained classifier head; `task="embed"` loads the encoder alone even from a classifier.
        `quantize="int8"`: the encoder's matmuls in int8 on the CPU (`minibert.quantize`), the rest in float32."""
        if attn_impl not in ATTN_IMPLS:
            raise MinibertError(f"attention kernel {attn_impl!r} is not one of {', '.join(sorted(ATTN_IMPLS))}.")
        folder = resolve_folder(model)
        name = display_name(model, folder)
        if quantize is not None and quantize not in SCHEMES:
            raise MinibertError(f"quantization {quantize!r} is not one of {', '.join(SCHEMES)}.")
        where = choose_device("cpu" if quantize and device == "auto" else device)  # int8 runs on the CPU
        config = BertConfig.from_json(resolve_checkpoint(folder, revision=revision).config_file)
        if task == "predict":
            check_has_classifier(folder, name)
        tokenizer = BertTokenizer.from_pretrained(folder, revision=revision)
        classifier, tagger = None, None
        if task != "embed" and is_token_classifier(config):
            tagger = BertForTokenClassification.from_pretrained(folder, revision=revision,
                                                                attn_impl=attn_impl).to(where)
            encoder_model: BertModel = tagger.bert
        elif task != "embed" and (task == "predict" or is_classifier(config)):
            classifier = BertForSequenceClassification.from_pretrained(folder, revision=revision,
                                                                       attn_impl=attn_impl).to(where)
            encoder_model = classifier.bert
        else:
            encoder_model = BertModel.from_pretrained(folder, revision=revision, attn_impl=attn_impl,
                                                      add_pooling_layer=False).to(where)
        if quantize is not None:
            quantize_model(classifier or tagger or encoder_model, quantize)
        if len(tokenizer) != config.vocab_size:  # after loading: a checkpoint that contradicts its config says so first
            raise MinibertError(f"the tokenizer of {name} has {len(tokenizer)} tokens but the model's vocab_size is "
                                f"{config.vocab_size}; use the vocab.txt the checkpoint was trained with.")
        pooling: Pooling = read_pooling(folder, revision)
        encoder = SentenceEncoder(encoder_model, tokenizer, pooling, read_prompts(folder, revision))
        record = (read_record(folder) if isinstance(folder, Path) else None) or {}
        length = config.fit_max_length(max_length or int(record.get("max_length") or DEFAULT_MAX_LENGTH),
                                       say=max_length is not None)
        flags = long_text or LongTextFlags()
        problem = (Labels.from_config(classifier.config.problem_type, classifier.config.id2label).problem_type
                   if classifier is not None else "single_label_classification")
        how = record.get("how", "auto") if flags.how == "auto" else flags.how
        head = flags.head_tokens if flags.head_tokens is not None else int(record.get("head_tokens", SUN_ET_AL_HEAD))
        stride = flags.stride if flags.stride is not None else (
            record.get("stride") if record.get("max_length") == length else None)
        modes = {pairs: resolve_long_text(how, head, stride, length, pairs, problem) for pairs in (False, True)}
        source = ("the flags given" if flags.how != "auto" else
                  "as the model was fine-tuned" if record else "no long_text.json in the model folder")
        pool = flags.pool or str(record.get("pool", "mean"))
        # int8: the float parts stay float32 (autocast would put attention's matmuls in bf16 beside int8 ones)
        chosen = Precision(None, where.type, quantize) if quantize else Precision.choose(precision, where)
        return cls(name, tokenizer, encoder, classifier, length, modes, source, pool, chosen, where, tagger)

    # --- what it is ------------------------------------------------------------------------------------------------

    @property
    def task(self) -> str:
        if self.tagger is not None:
            return "token-classification"
        if self.labels is None:
            return "embedding"
        return "regression" if self.labels.problem_type == "regression" else self.labels.problem_type

    def long_text(self, has_pairs: bool) -> LongText:
        """How texts longer than `max_length` are read: single texts and pairs may differ (auto truncates pairs)."""
        return self._long_text[has_pairs]

    def describe_long_text(self, has_pairs: bool = False) -> str:
        """One line on how long texts are read, and why (for predict's stderr and the server's startup line)."""
        mode, length = self.long_text(has_pairs), self.max_length["predict"]
        what = {"truncate": f"first {length} tokens", "head-tail": f"first {mode.head_tokens} tokens and the end",
                "chunks": f"windows of {length} tokens, stride {mode.stride}, {self.pool}-pooled"}[mode.how]
        return f"{mode.how} ({what}; {self.long_text_source})"

    def info(self) -> dict[str, Any]:
        single = self.long_text(False)
        return {"model": self.name, "task": self.task, "labels": self.labels.names if self.labels else self.tag_names,
                "endpoints": (["/predict"] if self.classifier or self.tagger else []) + ["/embed"],
                "max_length": self.max_length, "kernel": self.attn_impl, "precision": self.precision.name,
                "quantize": self.precision.quantized,
                "device": str(self.device),
                "long_text": {"mode": single.how, "head_tokens": single.head_tokens, "stride": single.stride,
                              "pool": self.pool, "pairs": self.long_text(True).how},
                "pooling": self.pooling_info(), "hidden_size": self.config.hidden_size}

    def pooling_info(self) -> dict[str, Any]:
        """How sentence vectors are pooled, and from which files (named without their folder: no paths in
        answers)."""
        pooling = self.encoder.pooling
        source = pooling.source.rsplit(": ", 1)[-1] if pooling.from_files else pooling.source
        return {"mode": pooling.mode, "normalize": pooling.normalize, "source": source}

    # --- the work --------------------------------------------------------------------------------------------------

    def prepare(self, kind: str, texts: Sequence[str], pairs: Sequence[str] | None = None,
                refuse_long: bool = False, prompt_name: str | None = None, prompt: str | None = None) -> Prepared:
        """Tokenise once: "predict" reads long texts as `long_text` says (windows become rows of the same text);
        "embed" puts the prompt before each text (`prompt`, else the model's prompt `prompt_name`, else its default
        prompt: `minibert.prompts`) and truncates at the encoder's limit, as sentence-transformers does.
        `refuse_long` raises `TooLong` for a text that does not fit in one sequence."""
        if kind not in KINDS:
            raise MinibertError(f"kind {kind!r} is not one of {', '.join(KINDS)}.")
        if kind == "tokens":
            return self._prepare_tags(list(texts))
        prefix = self.encoder.prompts.resolve(prompt, prompt_name) if kind == "embed" else None
        if prefix:
            texts = [prefix + text for text in texts]
        mode = self.long_text(pairs is not None) if kind == "predict" else LongText("truncate")
        limit = self.max_length[kind]
        inputs = encode_long(self.tokenizer, texts, pairs, limit, mode.how, mode.head_tokens, mode.stride)
        windows = [0] * len(texts)
        for doc in inputs.doc_index:
            windows[doc] += 1
        cut = [n > 1 for n in windows] if mode.how == "chunks" else inputs.truncated
        if refuse_long and any(cut):
            i = cut.index(True)
            raise TooLong(f"input {i} has more than the limit of {limit} tokens; shorten it, or start the server "
                          "without --no-truncate to have it read as --long-text says.")
        skip = self.encoder.pooled_from(prefix, limit)
        rows = [Row(ids, types, skip) for ids, types in zip(inputs.input_ids, inputs.token_type_ids)]
        return Prepared(rows, list(inputs.doc_index), windows, inputs.truncated)

    def _prepare_tags(self, texts: list[str]) -> Prepared:
        """A token classifier's windows over each text's tokens (every token scored from the window where it has
        the most context), as `predict` reads raw text."""
        encoded, data = text_windows(self.tokenizer, texts, self.max_length["predict"], self.long_text(False).stride)
        windows = [0] * len(texts)
        for doc in data.sentence:
            windows[doc] += 1
        rows = [Row(ids, [0] * len(ids)) for ids in data.input_ids]
        return Prepared(rows, list(data.sentence), windows, [False] * len(texts), (texts, encoded, data))

    def entities(self, outputs: Sequence[torch.Tensor], prepared: Prepared, aggregation: str = "simple"
                 ) -> list[dict[str, Any]]:
        """A token classifier's answer per text: `entities` as transformers' token-classification pipeline gives
        them (`aggregation` as there), from `forward("tokens", ...)`'s outputs for `prepared`'s rows."""
        assert self.tagger is not None and prepared.tagged is not None, "entities() needs a token classifier"
        texts, encoded, data = prepared.tagged
        return texts_entities(self.tokenizer, texts, encoded, data, list(outputs), self.tagger.config.id2label,
                              aggregation)

    @torch.inference_mode()
    def forward(self, kind: str, rows: list[Row]) -> list[torch.Tensor]:
        """One forward pass over `rows` (any lengths, any texts): one float32 CPU tensor per row, the classifier's
        logits ("predict") or the pooled sentence vector ("embed"). Safe to call from several threads at once."""
        with self.precision.autocast():
            if kind == "embed":
                return list(self.encoder.embed_rows(rows).cpu())
            if kind == "tokens":
                if self.tagger is None:
                    raise MinibertError(f"{self.name} is not a token classifier.")
                batch = collate_rows(rows, self.tokenizer.pad_token_id, self.device)
                logits = self.tagger(**batch).logits.float().cpu()
                return [logits[i, :len(row)] for i, row in enumerate(rows)]
            if self.classifier is None:
                raise MinibertError(f"{self.name} is an embedding model without a classification head; use embed.")
            batch = collate_rows(rows, self.tokenizer.pad_token_id, self.device)
            return list(self.classifier(**batch).logits.float().cpu())

    def pooled_logits(self, outputs: Sequence[torch.Tensor], prepared: Prepared) -> torch.Tensor:
        """(texts, labels): each text's logits, its windows' pooled as the model was validated (`pool`)."""
        logits = torch.stack(list(outputs))
        if len(prepared.rows) == len(prepared):
            return logits
        return pool_windows(logits, prepared.doc_index, len(prepared), self.pool)

    def truncate(self, vectors: torch.Tensor, dimensions: int) -> torch.Tensor:
        """`embed`'s vectors cut to their first `dimensions` components, L2-normalised again when the model's
        vectors are (OpenAI's `dimensions`; sentence-transformers' `truncate_dim` with `normalize_embeddings`)."""
        return truncate_embeddings(vectors, dimensions, normalize=self.encoder.pooling.normalize)

    def records(self, logits: torch.Tensor, all_scores: bool = True) -> list[dict[str, Any]]:
        """`predict`'s answer per text, from `pooled_logits`."""
        assert self.labels is not None, "records() needs a classifier"
        return records(logits, self.labels, all_scores)

    def tokens(self, row: Row) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(row.input_ids)

    def warm_up(self) -> None:
        """One small batch of each kind, so that the first request pays no one-time costs (a quantized model's
        compile of its fused kernels, `minibert.fusion`, among them)."""
        rows = self.prepare("embed", ["warm-up text", "a second, longer warm-up text for the batch"]).rows
        kinds = ["predict"] if self.classifier is not None else ["tokens"] if self.tagger is not None else []
        for kind in [*kinds, "embed"]:
            self.forward(kind, rows)
