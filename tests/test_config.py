"""Every config.json field of transformers' BERT is implemented or refused.

For each field that changes the computation, a tiny random transformers model with the field set is saved and
loaded by ours, and the outputs must agree; for each field that builds something minibert does not implement, the
config is refused with a sentence naming the field and its value."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers
from transformers.activations import ACT2CLS, ACT2FN

import minibert
from minibert import MinibertError
from minibert.config import ACTIVATIONS, LEARNED_ACTIVATIONS, NO_EFFECT_FIELDS, UNIMPLEMENTED_FIELDS
from minibert.encoder import ACTIVATION_FUNCTIONS
from tests.reference import ATOL, TINY, assert_close_on_tokens, hf_model, padded_batch

# Fields older transformers versions wrote into BERT config.json files (still found on the Hub).
OLDER_FIELDS = ("position_embedding_type", "pruned_heads", "torchscript", "torch_dtype", "gradient_checkpointing",
                "sep_token_id", "decoder_start_token_id", "tie_encoder_decoder", "cross_attention_hidden_size",
                "use_bfloat16", "finetuning_task", "tokenizer_class", "prefix", "task_specific_params")


def test_every_transformers_field_is_implemented_or_listed():
    """A new field in transformers' BertConfig fails here until it is implemented, listed as without effect on
    the values, or refused."""
    covered = minibert.BertConfig.field_names() | UNIMPLEMENTED_FIELDS.keys() | NO_EFFECT_FIELDS.keys()
    fields = set(transformers.BertConfig().to_dict()) | set(OLDER_FIELDS)
    assert fields - covered == set()


def test_every_transformers_activation_is_implemented_or_refused():
    assert set(ACT2CLS) == set(ACTIVATIONS) | set(LEARNED_ACTIVATIONS)
    assert set(ACTIVATION_FUNCTIONS) == set(ACTIVATIONS)


def outputs(model, name: str, ids, mask, types) -> torch.Tensor:
    """The main output of either library's model: hidden states, MLM or classifier logits."""
    with torch.no_grad():
        if isinstance(model, minibert.BertPreTrainedModel):
            out = model(ids, mask, types)
            return out.last_hidden_state if name == "BertModel" else out.logits
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        return out[0] if isinstance(out, tuple) else (out.last_hidden_state if name == "BertModel" else out.logits)


# (field, value, class): each set on a tiny random transformers model, saved, loaded by ours, outputs compared.
IMPLEMENTED = [
    *[("hidden_act", act, "BertModel") for act in ACTIVATIONS],
    ("hidden_act", "gelu_new", "BertForMaskedLM"),  # the MLM head's transform uses it too
    ("layer_norm_eps", 1e-3, "BertModel"),
    ("layer_norm_eps", 0.5, "BertForMaskedLM"),
    ("pad_token_id", 5, "BertModel"),
    ("pad_token_id", None, "BertModel"),
    ("type_vocab_size", 3, "BertModel"),
    ("max_position_embeddings", 20, "BertModel"),
    ("tie_word_embeddings", False, "BertForMaskedLM"),
    ("tie_word_embeddings", True, "BertForMaskedLM"),
    ("classifier_dropout", 0.3, "BertForSequenceClassification"),
    ("hidden_dropout_prob", 0.0, "BertModel"),
    ("attention_probs_dropout_prob", 0.0, "BertModel"),
    # without effect on the values (NO_EFFECT_FIELDS): transformers' outputs must not move either
    ("chunk_size_feed_forward", 1, "BertModel"),  # transformers needs a divisor of the sequence length
    ("use_cache", False, "BertModel"),
    ("output_attentions", True, "BertModel"),
    ("output_hidden_states", True, "BertModel"),
    ("return_dict", False, "BertModel"),
    ("torchscript", True, "BertForMaskedLM"),
    ("bos_token_id", 2, "BertModel"),
    ("eos_token_id", 3, "BertModel"),
]


@pytest.mark.parametrize("field, value, name", IMPLEMENTED, ids=lambda v: str(v))
def test_field_changes_our_outputs_as_it_changes_transformers(tmp_path, field, value, name):
    eager = {"attn_implementation": "eager"} if field == "output_attentions" else {}  # transformers requires it
    ref = hf_model(name, **{**TINY, field: value}, **eager)
    ref.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()).get(field, value) == value
    ours = getattr(minibert, name).from_pretrained(tmp_path, attn_impl="math")
    ids, mask, types = padded_batch(TINY["vocab_size"], [7, 3], seed=2)
    types = types.clamp(max=ref.config.type_vocab_size - 1)
    got, expected = outputs(ours, name, ids, mask, types), outputs(ref, name, ids, mask, types)
    if got.dim() == 2:  # classifier logits (b, labels)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    else:
        assert_close_on_tokens(got, expected, mask)
    assert getattr(ours.config, field, ours.config.extra.get(field)) == value
    if field == "pad_token_id":
        assert ours.base_model.embeddings.word.padding_idx == value
    if field == "classifier_dropout":
        assert ours.dropout.p == value == ref.dropout.p


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_equals_transformers_elementwise(name):
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([0.0, 1e-8, -1e-8, 0.7071, 88.0, -88.0])])
    torch.testing.assert_close(ACTIVATION_FUNCTIONS[name](x), ACT2FN[name](x), atol=0, rtol=0)


def test_checkpoint_dtype_is_read_exactly_into_float32(tmp_path):
    """dtype (accepted, NO_EFFECT_FIELDS): a bfloat16 checkpoint loads as float32 holding exactly the stored values,
    unless from_pretrained(dtype=...) asks for another precision."""
    ref = hf_model("BertModel", **TINY).to(torch.bfloat16)
    ref.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    ours = minibert.BertModel.from_pretrained(tmp_path)
    assert ours.embeddings.word.weight.dtype == torch.float32
    assert torch.equal(ours.embeddings.word.weight, ref.embeddings.word_embeddings.weight.float())
    assert minibert.BertModel.from_pretrained(tmp_path, dtype=torch.bfloat16).embeddings.word.weight.dtype == \
        torch.bfloat16


# (field, value, what the refusal must say)
REFUSED = [
    ("is_decoder", True, r"config field is_decoder=True is not implemented: it makes a causal"),
    ("add_cross_attention", True, r"config field add_cross_attention=True is not implemented: it makes cross-att"),
    ("is_encoder_decoder", True, r"config field is_encoder_decoder=True is not implemented"),
    ("pruned_heads", {"0": [1]}, r"config field pruned_heads=\{'0': \[1\]\} is not implemented: it makes layers "
                                 r"with pruned attention heads"),
    ("position_embedding_type", "relative_key", r"position_embedding_type 'relative_key' is not supported"),
    ("position_embedding_type", "relative_key_query", r"position_embedding_type 'relative_key_query' is not supp"),
    ("hidden_act", "prelu", r"hidden_act 'prelu' is not supported: it has learned parameters"),
    ("hidden_act", "xielu", r"hidden_act 'xielu' is not supported: it has learned parameters"),
    ("hidden_act", "gelu_13", r"hidden_act 'gelu_13' is not supported; use one of gelu, "),
    ("pad_token_id", 500, r"pad_token_id 500 is outside the vocabulary \(size 99\)"),
    ("layer_norm_eps", 0, r"layer_norm_eps must be positive, got 0"),
    ("classifier_dropout", 1.0, r"classifier_dropout must be in \[0, 1\) or null, got 1.0"),
    ("num_attention_heads", 5, r"hidden_size \(32\) must be divisible by num_attention_heads \(5\)"),
    ("num_hidden_layers", 0, r"num_hidden_layers must be a positive integer, got 0"),
    ("vocab_size", -3, r"vocab_size must be a positive integer, got -3"),
    ("hidden_dropout_prob", 1.5, r"hidden_dropout_prob must be in \[0, 1\), got 1.5"),
    ("problem_type", "ranking", r"problem_type 'ranking' is not one of regression"),
]


@pytest.mark.parametrize("field, value, message", REFUSED, ids=lambda v: str(v))
def test_field_we_do_not_implement_is_refused_by_name(tmp_path, field, value, message):
    minibert.BertModel(minibert.BertConfig(**TINY)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MinibertError, match=message):
        minibert.BertModel.from_pretrained(tmp_path)


def test_config_roundtrip_with_transformers(tmp_path):
    hf = transformers.BertConfig(hidden_size=64, num_attention_heads=4, id2label={0: "neg", 1: "pos"},
                                 classifier_dropout=0.3, problem_type="single_label_classification",
                                 chunk_size_feed_forward=4, tie_word_embeddings=False)
    hf.save_pretrained(tmp_path)
    ours = minibert.BertConfig.from_json(tmp_path / "config.json")
    assert (ours.hidden_size, ours.num_labels, ours.id2label, ours.label2id, ours.classifier_dropout) == \
        (64, 2, {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}, 0.3)
    ours.to_json(tmp_path / "config.json")
    back = transformers.BertConfig.from_pretrained(tmp_path)
    assert back.id2label == {0: "neg", 1: "pos"} and back.problem_type == "single_label_classification"
    assert back.hidden_size == 64 and back.classifier_dropout == 0.3
    assert back.chunk_size_feed_forward == 4 and back.tie_word_embeddings is False


def test_code_fields_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="minibert"):
        minibert.BertConfig.from_dict({**TINY, "auto_map": {"AutoModel": "evil.EvilModel"}})
    assert "auto_map" in caplog.text and "never imports" in caplog.text



@pytest.mark.parametrize(("id2label", "says"), [
    (["neg", "pos"], "id2label in config.json is a list, not an object"),
    ({"neg": "0", "pos": "1"}, "id2label in config.json has the key 'neg', which is not a class id")])
def test_id2label_that_is_not_ids_to_names_is_one_sentence(tmp_path, id2label, says):
    (tmp_path / "config.json").write_text(json.dumps({**minibert.BertConfig().to_dict(), "id2label": id2label}))
    with pytest.raises(MinibertError, match=says):
        minibert.BertConfig.from_json(tmp_path / "config.json")
