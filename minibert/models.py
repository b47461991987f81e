"""`BertModel`, and what every model shares: initialisation, `from_pretrained` / `save_pretrained` in Hugging Face
layout. The task heads built on it are in `heads.py`.

Every class mirrors its `transformers` namesake: same constructor argument (a config), same forward arguments,
same losses, and outputs read by attribute. Weight names on disk are HF's; the table that maps them to ours is
in `weights.py`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from minibert import checkpoint_files, fusion, weights
from minibert.attention import AttentionPlan, check_attn_impl, plan_attention
from minibert.config import BertConfig
from minibert.embeddings import BertEmbeddings
from minibert.encoder import Encoder
from minibert.errors import MinibertError
from minibert.outputs import BaseModelOutput
from minibert.padding import repad, unpad
from minibert.quantize import quantize_model

logger = logging.getLogger("minibert")

M = TypeVar("M", bound="BertPreTrainedModel")


class BertPreTrainedModel(nn.Module):
    """What every model shares: weight init, loading and saving. Subclasses build their modules in `__init__`."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.quantization: str | None = None  # "int8" after `quantize`: inference only

    def quantize(self: M, scheme: str = "int8", keep_float: tuple[str, ...] = (), smooth: bool = True) -> M:
        """Quantize this model in place for CPU inference (`minibert.quantize`) -> self; it then refuses training
        and `save_pretrained`."""
        return quantize_model(self, scheme, keep_float, smooth)

    def fuse(self: M, setting: str) -> M:
        """When the encoder layers run compiled, fused elementwise kernels: "auto" (the default), "on" or "off"
        (`minibert.fusion`) -> self."""
        self.base_model.fusion = fusion.check_setting(setting)
        return self

    def train(self: M, mode: bool = True) -> M:
        if mode and self.quantization is not None:
            raise MinibertError(f"this model is quantized ({self.quantization}) for inference only and cannot be "
                                "trained; fine-tune the float model and quantize the result.")
        return super().train(mode)

    # --- init ----------------------------------------------------------------------------------------------

    def init_weights(self) -> None:
        """Initialise every parameter as transformers does for a model trained from scratch."""
        for module in self.modules():
            self._init_module(module)

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def gradient_checkpointing_enable(self) -> None:
        """Trade compute for memory: each layer's activations are recomputed in backward instead of stored."""
        self.base_model.encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.encoder.gradient_checkpointing = False

    @property
    def base_model(self) -> BertModel:
        return self if isinstance(self, BertModel) else self.bert

    # --- files ---------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        attn_impl: str = "auto",
        ignore_mismatched_sizes: bool = False,
        dtype: torch.dtype | None = None,
        **config_overrides: Any,
    ) -> M:
        """Load a Hugging Face BERT checkpoint: a local folder, or a Hub id (honours HF_HUB_OFFLINE and the cache).

        `config_overrides` replace fields of its config.json (e.g. `num_labels=3`); for `BertModel`,
        `add_pooling_layer=False` drops the pooler. A head that the checkpoint lacks is initialised and named in
        the log; `ignore_mismatched_sizes=True` re-initialises a head whose size differs (a classifier trained for
        another number of labels) instead of refusing it. Parameters are float32 unless `dtype` says otherwise.
        The model comes back in eval mode, like transformers.
        """
        model_kwargs = {"attn_impl": attn_impl}
        if cls is BertModel and "add_pooling_layer" in config_overrides:
            model_kwargs["add_pooling_layer"] = config_overrides.pop("add_pooling_layer")
        unknown = sorted(set(config_overrides) - BertConfig.field_names())
        if unknown:
            raise MinibertError(f"{cls.__name__}.from_pretrained got unknown option(s) {', '.join(unknown)}; "
                                "options other than the loading ones must be BertConfig fields.")
        folder = checkpoint_files.resolve_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir)
        config = BertConfig.from_json(folder.config_file, **config_overrides)
        shapes = checkpoint_files.read_shapes(folder.weight_files)
        if shapes is not None:  # a config that does not fit is refused before its model is allocated
            weights.check_config_fits(shapes, config)
        model = cls(config, **model_kwargs)
        state = checkpoint_files.read_state_dict(folder.weight_files)
        weights.load_hf_state_dict(model, state, ignore_mismatched_sizes=ignore_mismatched_sizes)
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json and model.safetensors in HF names, each file atomically."""
        if self.quantization is not None:
            raise MinibertError(f"this model is quantized ({self.quantization}) and is not saved, so that its lossy "
                                "int8 weights never replace a float checkpoint; save the model before quantizing.")
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        checkpoint_files.save_safetensors(weights.to_hf_state_dict(self), path / checkpoint_files.SAFETENSORS_FILE)
        config = self.config.to_dict()
        config["architectures"] = [type(self).__name__]
        checkpoint_files.save_config(config, path / checkpoint_files.CONFIG_FILE)


class Pooler(nn.Module):
    """tanh(dense(hidden state of [CLS])): the sentence vector that the classification heads read."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(BertPreTrainedModel):
    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, attn_impl: str = "auto") -> None:
        super().__init__(config)
        self.attn_impl = check_attn_impl(attn_impl)
        self.fusion = "auto"  # when the layers run compiled, fused kernels: `fuse`
        self.embeddings = BertEmbeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config) if add_pooling_layer else None
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        first_token_only: bool = False,
    ) -> BaseModelOutput:
        """input_ids (b, t) [or inputs_embeds (b, t, hidden)]; attention_mask (b, t) with 1 = token, 0 = padding.

        `first_token_only`, for the heads that read only the pooled [CLS]: the last layer computes position 0 alone
        (the other positions' attention output, feed-forward and LayerNorms are never used), and last_hidden_state
        is (b, 1, hidden). Ignored when hidden states or attentions are asked for.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise MinibertError("pass exactly one of input_ids or inputs_embeds.")
        seq_len = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        if seq_len > self.config.max_position_embeddings and position_ids is None:
            raise MinibertError(
                f"the input has {seq_len} tokens but the model has only {self.config.max_position_embeddings} "
                "positions; truncate it (e.g. tokenizer(..., truncation=True, "
                f"max_length={self.config.max_position_embeddings}))."
            )
        reference = input_ids if input_ids is not None else inputs_embeds
        attention_mask = key_mask_2d(attention_mask) if attention_mask is not None else None
        first_token_only = first_token_only and not (output_hidden_states or output_attentions)
        plan = self.attention_plan(attention_mask, reference, output_attentions)
        if plan.packing is not None:
            # the first packed token of each sequence is its position 0 only if every row has a real token there;
            # otherwise (an all-padding or a left-padded row) the whole last layer runs and position 0 is kept
            packed_first_token_only = first_token_only and bool(attention_mask[:, 0].all())
            x, hidden_states = self._forward_packed(plan, input_ids, token_type_ids, position_ids, inputs_embeds,
                                                    output_hidden_states, packed_first_token_only)
            x = x[:, :1] if first_token_only and not packed_first_token_only else x
            attentions = None
        else:
            x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
            key_mask = None if attention_mask is None else attention_mask.bool()
            x, hidden_states, attentions = self.encoder(x, key_mask, plan, output_hidden_states, output_attentions,
                                                        first_token_only=first_token_only)
        return BaseModelOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )

    def attention_plan(self, attention_mask: torch.Tensor | None, reference: torch.Tensor,
                       output_attentions: bool) -> AttentionPlan:
        """This call's kernels and packing (`attention.plan_attention`), from what the call is."""
        device = reference.device
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else self.embeddings.word.weight.dtype
        compiling = torch.compiler.is_compiling()
        plan = plan_attention(self.attn_impl, attention_mask, shape=tuple(reference.shape[:2]), device=device,
                              dtype=dtype, num_heads=self.config.num_attention_heads, training=self.training,
                              need_probs=output_attentions, compiling=compiling)
        tokens = plan.packing.total if plan.packing is not None else reference.shape[0] * reference.shape[1]
        fused = fusion.use_fused(self.fusion, tokens=tokens, quantized=self.quantization is not None, device=device,
                                 training=self.training, autocast=autocast, compiling=compiling)
        return plan._replace(fused=fused)

    def _forward_packed(
        self,
        plan: AttentionPlan,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        output_hidden_states: bool,
        first_token_only: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Unpad once, run embeddings and encoder on the n real tokens, re-pad once -> (b, t, hidden); with
        `first_token_only` the last layer computes each sequence's first token alone -> (b, 1, hidden)."""
        reference = input_ids if input_ids is not None else inputs_embeds
        packing = plan.packing
        if position_ids is None:  # positions are columns of the padded batch, as in the padded path
            position_ids = torch.arange(packing.seq_len, device=reference.device)

        def packed(x: torch.Tensor | None) -> torch.Tensor | None:  # (b, t, ...), or broadcastable ids -> (n, ...)
            if x is None:
                return None
            if not x.is_floating_point():  # ids: (b, t), or (t,) / (1, t) meant for every row
                x = x.expand(packing.batch, packing.seq_len)
            return unpad(x, packing)

        x = self.embeddings(packed(input_ids), packed(token_type_ids), packed(position_ids), packed(inputs_embeds))
        x, hidden_states, _ = self.encoder(x, None, plan, output_hidden_states, False, first_token_only)
        if hidden_states is not None:
            hidden_states = [repad(h, packing) for h in hidden_states]
        return (x if first_token_only else repad(x, packing)), hidden_states


def key_mask_2d(mask: torch.Tensor) -> torch.Tensor:
    """The (b, s) 0/1 key mask of an attention_mask in one of the forms transformers accepts: (b, s) 0/1; or 4-d
    (b, 1, 1, s) / (b, 1, t, s), boolean (True = attend) or additive float (0 = attend, very negative = masked),
    as long as every query sees the same keys. Per-query masks are refused: this encoder has no use for them."""
    if mask.dim() == 2:
        return mask
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise MinibertError(f"attention_mask has shape {tuple(mask.shape)}; pass (batch, seq) with 1 for tokens and "
                            "0 for padding (or transformers' (batch, 1, 1, seq) form).")
    if mask.dtype == torch.bool:
        keep = mask
    elif mask.is_floating_point():
        masked = mask <= torch.finfo(mask.dtype).min / 2
        if not (masked | (mask == 0)).all():
            raise MinibertError("a 4-d float attention_mask must be additive (0 to attend, a very negative value "
                                "to mask); pass a (batch, seq) 0/1 mask instead.")
        keep = ~masked
    else:
        keep = mask != 0
    if not (keep == keep[:, :, :1]).all():
        raise MinibertError("attention_mask gives queries different keys (a per-query 4-d mask), which this encoder "
                            "does not support; pass a (batch, seq) 0/1 mask.")
    return keep[:, 0, 0].long()
