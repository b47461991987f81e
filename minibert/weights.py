"""The one table of names between our parameters and Hugging Face's, and the loader that uses it.

Loading is strict: every parameter is filled exactly once, every tensor in the file is consumed or explicitly
ignored, every shape is checked, and each failure names the tensor and says what to do.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, TypeVar

import torch

from minibert.config import BertConfig
from minibert.errors import MinibertError

if TYPE_CHECKING:
    from minibert.models import BertPreTrainedModel

logger = logging.getLogger("minibert")

# --- the table ------------------------------------------------------------------------------------------------
# One row per parameter: (our name, HF name or names). Two or more HF names mean our tensor is their
# concatenation along dim 0 (the fused q/k/v projection). "{i}" stands for the layer index.
# Names of the base model are relative to `BertModel`; in a model with a head both sides gain a "bert." prefix.

BASE_TABLE: list[tuple[str, str | tuple[str, ...]]] = [
    ("embeddings.word.weight", "embeddings.word_embeddings.weight"),
    ("embeddings.position.weight", "embeddings.position_embeddings.weight"),
    ("embeddings.segment.weight", "embeddings.token_type_embeddings.weight"),
    ("embeddings.norm.weight", "embeddings.LayerNorm.weight"),
    ("embeddings.norm.bias", "embeddings.LayerNorm.bias"),
]

LAYER_TABLE: list[tuple[str, str | tuple[str, ...]]] = [
    ("encoder.layers.{i}.attention.qkv.weight", ("encoder.layer.{i}.attention.self.query.weight",
                                                 "encoder.layer.{i}.attention.self.key.weight",
                                                 "encoder.layer.{i}.attention.self.value.weight")),
    ("encoder.layers.{i}.attention.qkv.bias", ("encoder.layer.{i}.attention.self.query.bias",
                                               "encoder.layer.{i}.attention.self.key.bias",
                                               "encoder.layer.{i}.attention.self.value.bias")),
    ("encoder.layers.{i}.attention.out.weight", "encoder.layer.{i}.attention.output.dense.weight"),
    ("encoder.layers.{i}.attention.out.bias", "encoder.layer.{i}.attention.output.dense.bias"),
    ("encoder.layers.{i}.attention_norm.weight", "encoder.layer.{i}.attention.output.LayerNorm.weight"),
    ("encoder.layers.{i}.attention_norm.bias", "encoder.layer.{i}.attention.output.LayerNorm.bias"),
    ("encoder.layers.{i}.ffn.up.weight", "encoder.layer.{i}.intermediate.dense.weight"),
    ("encoder.layers.{i}.ffn.up.bias", "encoder.layer.{i}.intermediate.dense.bias"),
    ("encoder.layers.{i}.ffn.down.weight", "encoder.layer.{i}.output.dense.weight"),
    ("encoder.layers.{i}.ffn.down.bias", "encoder.layer.{i}.output.dense.bias"),
    ("encoder.layers.{i}.ffn_norm.weight", "encoder.layer.{i}.output.LayerNorm.weight"),
    ("encoder.layers.{i}.ffn_norm.bias", "encoder.layer.{i}.output.LayerNorm.bias"),
]

# Heads: (our name, HF name), both absolute. A head the checkpoint lacks is initialised, and said so.
HEAD_TABLE: list[tuple[str, str]] = [
    ("pooler.dense.weight", "pooler.dense.weight"),  # in the base model; "bert." prefixed like it
    ("pooler.dense.bias", "pooler.dense.bias"),
    ("classifier.weight", "classifier.weight"),
    ("classifier.bias", "classifier.bias"),
    ("qa_outputs.weight", "qa_outputs.weight"),
    ("qa_outputs.bias", "qa_outputs.bias"),
    ("mlm.dense.weight", "cls.predictions.transform.dense.weight"),
    ("mlm.dense.bias", "cls.predictions.transform.dense.bias"),
    ("mlm.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
    ("mlm.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
    ("mlm.bias", "cls.predictions.bias"),
    ("mlm.decoder.weight", "cls.predictions.decoder.weight"),  # only when tie_word_embeddings is false
    ("nsp.weight", "cls.seq_relationship.weight"),
    ("nsp.bias", "cls.seq_relationship.bias"),
]

# In checkpoints, never loaded: buffers HF saved in some versions, and the MLM decoder's bias (a second copy of
# cls.predictions.bias, tied to it by transformers).
IGNORED = {
    "embeddings.position_ids",
    "embeddings.token_type_ids",
    "cls.predictions.decoder.bias",
}
# Also never loaded when tie_word_embeddings is true: the decoder matrix, which transformers replaces by the word
# embeddings (older checkpoints store a copy of them).
TIED_DECODER = "cls.predictions.decoder.weight"


HEAD_HF_NAMES = {hf for _, hf in HEAD_TABLE}


def _is_head_name(hf_name: str) -> bool:
    """True for tensors of the optional parts (pooler and heads), with or without the "bert." prefix."""
    return _strip_base(hf_name) in HEAD_HF_NAMES


def name_table(model: BertPreTrainedModel) -> list[tuple[str, tuple[str, ...]]]:
    """Every parameter of `model` with the HF tensor name(s) it is made of, in full (prefixes included)."""
    has_base_prefix = hasattr(model, "bert")
    prefix = "bert." if has_base_prefix else ""
    rows: list[tuple[str, tuple[str, ...]]] = []
    base_rows = list(BASE_TABLE)
    for i in range(model.config.num_hidden_layers):
        base_rows += [(ours.format(i=i), tuple(h.format(i=i) for h in _as_tuple(hf))) for ours, hf in LAYER_TABLE]
    for ours, hf in base_rows:
        rows.append((prefix + ours, tuple(prefix + h for h in _as_tuple(hf))))
    for ours, hf in HEAD_TABLE:
        if ours.startswith("pooler."):
            ours, hf = prefix + ours, prefix + hf
        rows.append((ours, (hf,)))
    params = dict(model.named_parameters())
    return [(ours, hf) for ours, hf in rows if ours in params]


def _as_tuple(names: str | tuple[str, ...]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else names


# --- dialects ------------------------------------------------------------------------------------------------


T = TypeVar("T")  # a tensor, or only its shape (a safetensors header)


def normalise_names(state: dict[str, T], with_prefix: bool, tied: bool = True) -> tuple[dict[str, T], dict[str, str]]:
    """Bring the dialects of real checkpoints to one: TF-era LayerNorm `gamma`/`beta`, the base model's
    tensors with a "bert." prefix (checkpoints of a model with a head) or without (a bare BertModel), and the
    MLM output bias: `cls.predictions.bias` when the decoder is `tied`, else the decoder's own bias (what
    transformers computes with; its `cls.predictions.bias` is then unused), each falling back on the other.
    Returns the renamed tensors and, for error messages, each new name's name in the file."""
    out: dict[str, T] = {}
    in_file: dict[str, str] = {}
    for original, tensor in state.items():
        name = original
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[: -len("beta")] + "bias"
        base = name[len("bert."):] if name.startswith("bert.") else name
        is_base = base.startswith(("embeddings.", "encoder.", "pooler."))
        if is_base:
            name = "bert." + base if with_prefix else base
        if name in out:
            raise MinibertError(f"the checkpoint holds tensor {name!r} twice (with and without 'bert.' prefix); "
                                "it is ambiguous, keep one of the two.")
        out[name] = tensor
        in_file[name] = original
    if "cls.predictions.decoder.bias" in out and (not tied or "cls.predictions.bias" not in out):
        out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
        in_file["cls.predictions.bias"] = in_file["cls.predictions.decoder.bias"]
    return out, in_file


# --- before building a model ---------------------------------------------------------------------------------

# Tensors of the base model whose shape follows from the config, with the config field behind each dimension.
SHAPE_FIELDS: list[tuple[str, tuple[str, ...]]] = [
    ("embeddings.word_embeddings.weight", ("vocab_size", "hidden_size")),
    ("embeddings.token_type_embeddings.weight", ("type_vocab_size", "hidden_size")),
    ("encoder.layer.0.intermediate.dense.weight", ("intermediate_size", "hidden_size")),
]
POSITION_SHAPE = ("embeddings.position_embeddings.weight", ("max_position_embeddings", "hidden_size"))
LAYER_NAME = re.compile(r"encoder\.layer\.(\d+)\.")


def check_config_fits(shapes: dict[str, tuple[int, ...]], config: BertConfig) -> None:
    """Refuse a config that does not describe the checkpoint, from its tensor names and shapes alone (a safetensors
    header), before a model of the config's size is allocated: another number of layers, vocabulary, hidden or
    feed-forward size. Everything else is checked tensor by tensor when the weights are loaded."""
    base, in_file = normalise_names(shapes, with_prefix=False)
    rows = SHAPE_FIELDS + ([POSITION_SHAPE] if config.position_embedding_type == "absolute" else [])
    for name, fields in rows:
        if name not in base:
            continue
        expected = tuple(getattr(config, f) for f in fields)
        for field_name, found, wanted in zip(fields, base[name], expected):
            if found != wanted:
                raise MinibertError(f"tensor {in_file[name]!r} has shape {base[name]} in the checkpoint, but "
                                    f"config.json's "
                                    f"{field_name}={wanted} needs {expected}; check that config.json belongs to these "
                                    "weights.")
    layers = {int(m.group(1)): name for name in sorted(base) if (m := LAYER_NAME.match(name))}
    if not layers:
        return
    last = max(layers)
    if last + 1 < config.num_hidden_layers:
        raise MinibertError(f"config.json's num_hidden_layers={config.num_hidden_layers} but the checkpoint has "
                            f"{last + 1} layers (no tensor 'encoder.layer.{last + 1}.…', last "
                            f"{in_file[layers[last]]!r}); check that config.json belongs to these weights.")
    if last + 1 > config.num_hidden_layers:
        raise MinibertError(f"the checkpoint has tensor {in_file[layers[last]]!r} but config.json's "
                            f"num_hidden_layers={config.num_hidden_layers}; check that config.json belongs to these "
                            "weights.")


# --- loading into a model --------------------------------------------------------------------------------------


def load_hf_state_dict(
    model: BertPreTrainedModel, state: dict[str, torch.Tensor], ignore_mismatched_sizes: bool = False
) -> None:
    """Copy HF-named tensors into `model`, strictly. Missing heads are left as initialised and named in the log."""
    tied = model.config.tie_word_embeddings
    state, in_file = normalise_names(state, with_prefix=hasattr(model, "bert"), tied=tied)
    params = dict(model.named_parameters())
    used: set[str] = set()
    initialised: list[str] = []
    for ours, hf_names in name_table(model):
        param = params[ours]
        present = [n for n in hf_names if n in state]
        if not present:
            if _is_head_name(hf_names[0]):
                initialised.append(hf_names[0])
                continue
            raise MinibertError(
                f"the checkpoint has no tensor {hf_names[0]!r}; it is not a complete BERT checkpoint for this config "
                f"(num_hidden_layers={model.config.num_hidden_layers})."
            )
        if len(present) != len(hf_names):
            missing = sorted(set(hf_names) - set(present))
            raise MinibertError(f"the checkpoint has {in_file[present[0]]!r} but not {missing[0]!r}; "
                                "it is incomplete.")
        tensor = state[hf_names[0]] if len(hf_names) == 1 else torch.cat([state[n] for n in hf_names], dim=0)
        used.update(hf_names)
        if tensor.shape != param.shape:
            found = " + ".join(str(tuple(state[n].shape)) for n in hf_names)
            if ignore_mismatched_sizes and _is_head_name(hf_names[0]):
                initialised.append(f"{hf_names[0]} (size {found} in the checkpoint, {tuple(param.shape)} here)")
                continue
            hint = ("pass ignore_mismatched_sizes=True to re-initialise this head" if _is_head_name(hf_names[0])
                    else "check that config.json belongs to these weights")
            raise MinibertError(
                f"tensor {in_file[hf_names[0]]!r} has shape {found} in the checkpoint but the model expects "
                f"{tuple(param.shape)}; {hint}."
            )
        for name in hf_names:
            if not torch.isfinite(state[name]).all():
                raise MinibertError(f"tensor {in_file[name]!r} in the checkpoint contains NaN or Inf values; the "
                                    "file is corrupt or from a diverged run, use another checkpoint.")
        with torch.no_grad():
            param.copy_(tensor)
    ignored = IGNORED | ({TIED_DECODER} if tied else set())
    unexpected = [n for n in state if n not in used and n not in ignored and not n.endswith(".position_ids")]
    unknown = [n for n in unexpected if not _is_head_name(n)]
    if unknown:
        raise MinibertError(
            f"unexpected tensor {in_file[unknown[0]]!r} in the checkpoint ({len(unknown)} in all) does not belong to "
            "a BERT model; this checkpoint is not a Hugging Face BERT checkpoint, or is another architecture."
        )
    if unexpected:
        logger.info("%s: the checkpoint's %s not used by this class.", type(model).__name__, _heads(unexpected))
    if initialised:  # expected when fine-tuning starts, so said quietly; predict refuses a head-less model itself
        logger.info("%s: newly initialised (not in the checkpoint): %s; fine-tune before use.",
                       type(model).__name__, ", ".join(initialised))


def _strip_base(name: str) -> str:
    return name[len("bert."):] if name.startswith("bert.") else name


def _heads(names: list[str]) -> str:
    groups = sorted({n.rsplit(".", 1)[0] for n in names})
    return ", ".join(groups) + (" are" if len(groups) > 1 else " is")


def to_hf_state_dict(model: BertPreTrainedModel) -> dict[str, torch.Tensor]:
    """Our parameters under HF names, as transformers' `save_pretrained` writes them (fused q/k/v split again)."""
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for ours, hf_names in name_table(model):
        tensor = params[ours].detach()
        for name, part in zip(hf_names, tensor.chunk(len(hf_names), dim=0)):
            out[name] = part.contiguous().cpu()
    if TIED_DECODER in out:  # untied: transformers computes with the decoder's own bias, so it must be in the file
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    return out
