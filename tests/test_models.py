"""Parity with transformers: every head, every kernel, tiny and full-size configs, and the real MiniLM checkpoint.

The reference model is built by transformers, written to disk with its own `save_pretrained`, and loaded by ours
(so each test also exercises "transformers save -> our load"). Tolerance: 1e-5 absolute on non-padding positions.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import minibert
from minibert.weights import load_hf_state_dict
from tests.reference import ATOL, KERNELS, ODD, TINY, assert_close_on_tokens, hf_model, padded_batch, pair_from_disk

HEADS = ["BertModel", "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
         "BertForMultipleChoice", "BertForNextSentencePrediction", "BertForMaskedLM", "BertForPreTraining"]


@pytest.mark.parametrize("attn_impl", KERNELS)
@pytest.mark.parametrize("config", [TINY, ODD], ids=["tiny", "odd"])
def test_base_model_every_layer(tmp_path, config, attn_impl):
    ref, ours = pair_from_disk("BertModel", tmp_path, attn_impl, **config)
    ids, mask, types = padded_batch(config["vocab_size"], [7, 3, 12, 1])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        got = ours(ids, mask, types, output_hidden_states=True)
    assert len(got.hidden_states) == config["num_hidden_layers"] + 1
    for g, e in zip(got.hidden_states, expected.hidden_states):
        assert_close_on_tokens(g, e, mask)
    assert_close_on_tokens(got.last_hidden_state, expected.last_hidden_state, mask)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=ATOL, rtol=0)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "gelu_pytorch_tanh"])
def test_activations(tmp_path, act):
    ref, ours = pair_from_disk("BertModel", tmp_path, **{**TINY, "hidden_act": act})
    ids, mask, types = padded_batch(TINY["vocab_size"], [9, 4])
    with torch.no_grad():
        assert_close_on_tokens(ours(ids, mask, types).last_hidden_state,
                               ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state, mask)


def head_inputs(name: str, vocab_size: int, num_labels: int):
    ids, mask, types = padded_batch(vocab_size, [10, 6, 10], seq_len=10)
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    g = torch.Generator().manual_seed(3)
    if name == "BertForSequenceClassification":
        batch["labels"] = torch.randint(0, num_labels, (3,), generator=g)
    elif name == "BertForTokenClassification":
        labels = torch.randint(0, num_labels, (3, 10), generator=g)
        batch["labels"] = labels.masked_fill(mask == 0, -100)
    elif name == "BertForQuestionAnswering":
        batch["start_positions"] = torch.tensor([1, 3, 20])  # 20 is beyond the input: ignored, as in transformers
        batch["end_positions"] = torch.tensor([4, 5, 9])
    elif name == "BertForMultipleChoice":
        batch = {k: v.unsqueeze(0).expand(2, -1, -1).contiguous() for k, v in batch.items()}  # (2 examples, 3 choices)
        batch["input_ids"] = torch.randint(1, vocab_size, (2, 3, 10), generator=g) * batch["attention_mask"]
        batch["labels"] = torch.tensor([2, 0])
    elif name == "BertForNextSentencePrediction":
        batch["labels"] = torch.tensor([0, 1, 1])
    elif name in ("BertForMaskedLM", "BertForPreTraining"):
        labels = torch.randint(0, vocab_size, (3, 10), generator=g)
        # about 30% of the real tokens are prediction targets; padding never is (-100, as a data collator does)
        batch["labels"] = labels.masked_fill((torch.rand(3, 10, generator=g) > 0.3) | (mask == 0), -100)
        if name == "BertForPreTraining":
            batch["next_sentence_label"] = torch.tensor([1, 0, 1])
    return batch


OUTPUT_FIELDS = {
    "BertForQuestionAnswering": ["start_logits", "end_logits"],
    "BertForPreTraining": ["prediction_logits", "seq_relationship_logits"],
}


@pytest.mark.parametrize("attn_impl", KERNELS)
@pytest.mark.parametrize("name", HEADS[1:])
def test_heads_logits_and_loss(tmp_path, name, attn_impl):
    num_labels = 2 if name == "BertForQuestionAnswering" else 3  # QA: a start and an end logit
    ref, ours = pair_from_disk(name, tmp_path, attn_impl, **TINY, num_labels=num_labels)
    batch = head_inputs(name, TINY["vocab_size"], num_labels)
    with torch.no_grad():
        expected, got = ref(**batch), ours(**batch)
    for field in OUTPUT_FIELDS.get(name, ["logits"]):
        e, g = getattr(expected, field), getattr(got, field)
        if e.dim() >= 2 and e.shape[:2] == batch["attention_mask"].shape[:2] and name != "BertForMultipleChoice":
            assert_close_on_tokens(g, e, batch["attention_mask"])  # per-token outputs: compare real tokens
        else:
            torch.testing.assert_close(g, e, atol=ATOL, rtol=0)
    if name == "BertForQuestionAnswering" and attn_impl in ("unpadded", "auto"):
        # transformers' span loss is a softmax over every position, padding included, so it depends on what the
        # encoder computes at padding positions, which the packed path never computes (it returns zeros there).
        # Compare the loss where there is no padding; the logits of real tokens were compared above.
        full = {k: v[:1] for k, v in batch.items()}
        with torch.no_grad():
            expected, got = ref(**full), ours(**full)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)


@pytest.mark.parametrize("problem_type,labels", [
    ("single_label_classification", torch.tensor([0, 2, 1])),
    ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),
    ("regression", torch.tensor([[0.5, -1.0, 2.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])),
])
def test_sequence_classification_problem_types(tmp_path, problem_type, labels):
    ref, ours = pair_from_disk("BertForSequenceClassification", tmp_path, num_labels=3, problem_type=problem_type,
                               **TINY)
    ids, mask, types = padded_batch(TINY["vocab_size"], [5, 8, 3])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)


def test_problem_type_inferred_without_touching_config(tmp_path):
    """Float labels on a 3-label model mean multi-label (as in transformers), and the config stays as it was."""
    ref, ours = pair_from_disk("BertForSequenceClassification", tmp_path, num_labels=3, **TINY)
    ids, mask, types = padded_batch(TINY["vocab_size"], [5, 8])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    with torch.no_grad():
        got = ours(ids, mask, types, labels=labels)
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)
    assert ours.config.problem_type is None
    regression = minibert.BertForSequenceClassification(minibert.BertConfig(**TINY, num_labels=1)).eval()
    out = regression(ids, mask, types, labels=torch.tensor([0.3, -0.2]))
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), torch.tensor([0.3, -0.2])))
    assert regression.config.problem_type is None


def test_attentions_match_eager_transformers(tmp_path):
    ref = hf_model("BertModel", **TINY, attn_implementation="eager")
    ref.save_pretrained(tmp_path)
    ours = minibert.BertModel.from_pretrained(tmp_path, attn_impl="sdpa")  # routed to math for probabilities
    ids, mask, types = padded_batch(TINY["vocab_size"], [6, 2])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
        got = ours(ids, mask, types, output_attentions=True)
    assert len(got.attentions) == TINY["num_hidden_layers"]
    for g, e in zip(got.attentions, expected.attentions):
        # probabilities of real query rows over all keys (padded keys have probability 0 in both)
        keep = mask.bool()
        torch.testing.assert_close(g.transpose(1, 2)[keep], e.transpose(1, 2)[keep], atol=ATOL, rtol=0)


@pytest.mark.parametrize("lengths", [[12, 5, 2], [9, 9, 8]], ids=["much_padding", "little_padding"])
@pytest.mark.parametrize("attn_impl", KERNELS)
def test_gradients_of_a_training_step_match(tmp_path, attn_impl, lengths):
    config = {**TINY, "num_labels": 2, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    ref, ours = pair_from_disk("BertForSequenceClassification", tmp_path, attn_impl, **config)
    ref.train()
    ours.train()
    ids, mask, types = padded_batch(TINY["vocab_size"], lengths)
    labels = torch.tensor([1, 0, 1])
    ref(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss.backward()
    ours(ids, mask, types, labels=labels).loss.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    from minibert.weights import name_table

    for our_name, hf_names in name_table(ours):
        expected = torch.cat([ref_grads[n] for n in hf_names], dim=0)
        got = dict(ours.named_parameters())[our_name].grad
        scale = expected.abs().max().clamp_min(1e-12)
        assert ((got - expected).abs().max() / scale).item() < 1e-4, our_name


@pytest.mark.parametrize("attn_impl", KERNELS)
def test_first_token_only_is_the_first_position_of_the_full_forward(attn_impl, monkeypatch):
    """The pooled heads run the last layer for [CLS] alone: the same values and the same gradients as computing
    every position and keeping position 0. Packed batches re-pad only the last layer's keys and values for it; one
    with an all-padding row runs the whole last layer instead."""
    from minibert.padding import Packing

    packed_first = []
    real_mask = Packing.mask
    monkeypatch.setattr(Packing, "mask", lambda self: packed_first.append(self.seqlens) or real_mask(self))
    torch.manual_seed(0)
    config = minibert.BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = minibert.BertModel(config, attn_impl=attn_impl).train()
    for lengths in ([12, 5, 2], [9, 9, 8], [1], [10, 0, 3], "left-padded"):
        if lengths == "left-padded":  # position 0 is padding in row 1: not its first real token
            ids, mask, types = padded_batch(TINY["vocab_size"], [12, 5, 2])
            mask = mask.flip(1).contiguous()
            lengths = [12, 5, 2]
        else:
            ids, mask, types = padded_batch(TINY["vocab_size"], lengths)
        results = []
        for first_token_only in (False, True):
            model.zero_grad()
            out = model(ids, mask, types, first_token_only=first_token_only)
            out.pooler_output.square().sum().backward()
            results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
        (full, full_grads), (first, first_grads) = results
        assert first.last_hidden_state.shape == (len(lengths), 1, TINY["hidden_size"])
        torch.testing.assert_close(first.last_hidden_state, full.last_hidden_state[:, :1], atol=1e-6, rtol=0)
        torch.testing.assert_close(first.pooler_output, full.pooler_output, atol=1e-6, rtol=0)
        for name, grad in full_grads.items():
            torch.testing.assert_close(first_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    expected = {"unpadded": {(12, 5, 2), (9, 9, 8), (1,)}, "auto": {(12, 5, 2)}}.get(attn_impl, set())
    assert set(packed_first) == expected  # which batches took the packed [CLS]-only path
    hidden = model(ids, mask, types, output_hidden_states=True, first_token_only=True)
    assert hidden.last_hidden_state.shape[1] == ids.shape[1]  # asked-for hidden states switch it off


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = minibert.BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = minibert.BertForSequenceClassification(config).train()
    ids, mask, types = padded_batch(TINY["vocab_size"], [9, 5])
    labels = torch.tensor([1, 0])
    model(ids, mask, types, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids, mask, types, labels=labels).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], atol=1e-6, rtol=1e-5)


def test_every_kernel_matches_transformers_on_bert_base_config():
    """Full-size (bert-base) random weights: both kernels against transformers, padded batch, lengths 1..128."""
    ref = hf_model("BertModel")
    ids, mask, types = padded_batch(30522, [128, 77, 1, 30])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        for attn_impl in KERNELS:
            ours = minibert.BertModel(minibert.BertConfig(), attn_impl=attn_impl).eval()
            load_hf_state_dict(ours, ref.state_dict())
            got = ours(ids, mask, types)
            assert_close_on_tokens(got.last_hidden_state, expected.last_hidden_state, mask)
            torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=ATOL, rtol=0)


def test_bert_base_length_512_batch_of_one():
    ref = hf_model("BertModel")
    ours = minibert.BertModel(minibert.BertConfig()).eval()
    load_hf_state_dict(ours, ref.state_dict())
    ids, mask, types = padded_batch(30522, [512])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    assert_close_on_tokens(got.last_hidden_state, expected.last_hidden_state, mask)


@pytest.fixture(scope="module")
def minilm_pair(minilm_dir):
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    return ref, {k: minibert.BertModel.from_pretrained(minilm_dir, attn_impl=k) for k in KERNELS}


@pytest.mark.parametrize("attn_impl", KERNELS)
@pytest.mark.parametrize("lengths,seq_len", [([12, 5, 30, 1], None), ([1], None), ([512], None), ([17], 512),
                                             ([512, 3], None)])
def test_minilm_real_weights(minilm_pair, attn_impl, lengths, seq_len):
    ref, ours = minilm_pair
    ids, mask, types = padded_batch(30522, lengths, seq_len)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        got = ours[attn_impl](ids, mask, types, output_hidden_states=True)
    for g, e in zip(got.hidden_states, expected.hidden_states):
        assert_close_on_tokens(g, e, mask)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attn_impl", KERNELS)
def test_padding_and_batch_invariance(minilm_pair, attn_impl):
    """A sequence gives the same outputs alone, right-padded to 512, or inside a batch of other lengths."""
    model = minilm_pair[1][attn_impl]
    ids, mask, types = padded_batch(30522, [23, 7, 64, 1, 40], seed=5)
    with torch.no_grad():
        batch = model(ids, mask, types).last_hidden_state
        for row, n in enumerate(mask.sum(1).tolist()):
            alone = model(ids[row:row + 1, :n], mask[row:row + 1, :n], types[row:row + 1, :n]).last_hidden_state
            pad = 512 - n
            padded = model(torch.nn.functional.pad(ids[row:row + 1, :n], (0, pad)),
                           torch.nn.functional.pad(mask[row:row + 1, :n], (0, pad)),
                           torch.nn.functional.pad(types[row:row + 1, :n], (0, pad))).last_hidden_state
            torch.testing.assert_close(batch[row, :n], alone[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(padded[0, :n], alone[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("attn_impl", KERNELS)
def test_all_padding_row_is_finite(attn_impl):
    model = minibert.BertModel(minibert.BertConfig(**TINY), attn_impl=attn_impl).eval()
    ids, mask, types = padded_batch(TINY["vocab_size"], [5, 0, 3], seq_len=6)
    with torch.no_grad():
        out = model(ids, mask, types)
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()
    alone = model(ids[:1, :5], mask[:1, :5], types[:1, :5]).last_hidden_state
    torch.testing.assert_close(out.last_hidden_state[0, :5], alone[0], atol=ATOL, rtol=0)


def test_eval_mode_and_dropout():
    """from_pretrained returns eval mode (deterministic); train mode applies dropout."""
    config = minibert.BertConfig(**TINY)
    model = minibert.BertModel(config)
    ids, mask, types = padded_batch(TINY["vocab_size"], [6])
    model.train()
    assert not torch.equal(model(ids, mask, types).last_hidden_state, model(ids, mask, types).last_hidden_state)
    model.eval()
    assert torch.equal(model(ids, mask, types).last_hidden_state, model(ids, mask, types).last_hidden_state)


def test_sinusoidal_positions():
    config = minibert.BertConfig(**{**TINY, "position_embedding_type": "sinusoidal"})
    model = minibert.BertModel(config).eval()
    table = model.embeddings.position_table()
    # hand computation: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)
    pos, i, d = 5, 3, config.hidden_size
    angle = pos / 10000 ** (2 * i / d)
    assert table[pos, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(angle, dtype=torch.float64)).item(),
                                                     abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(angle, dtype=torch.float64)).item(),
                                                         abs=1e-6)
    assert "embeddings.position.weight" not in model.state_dict()  # a fixed table, not a parameter
    ids, mask, types = padded_batch(TINY["vocab_size"], [6, 3])
    assert torch.isfinite(model(ids, mask, types).last_hidden_state).all()


def test_too_long_input_is_a_clear_error():
    model = minibert.BertModel(minibert.BertConfig(**TINY))
    with pytest.raises(minibert.MinibertError, match=r"64 positions; truncate it \(e.g. tokenizer\(\.\.\., "
                                                     r"truncation=True, max_length=64\)\)"):
        model(torch.ones(1, 65, dtype=torch.long))


def test_init_like_transformers():
    """Initialisation statistics match transformers': N(0, 0.02) weights, zero biases, unit LayerNorm."""
    torch.manual_seed(0)
    model = minibert.BertForMaskedLM(minibert.BertConfig(**{**TINY, "hidden_size": 256, "num_attention_heads": 4}))
    qkv = model.bert.encoder.layers[0].attention.qkv
    assert qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert qkv.bias.abs().max().item() == 0.0
    assert model.bert.embeddings.word.weight[0].abs().max().item() == 0.0  # padding row
    assert torch.equal(model.bert.embeddings.norm.weight, torch.ones(256))
    assert model.mlm.bias.abs().max().item() == 0.0


@pytest.mark.parametrize("form", ["bool_b11s", "bool_b1ts", "additive_b11s", "int_b11s"])
def test_four_dimensional_masks_as_transformers_accepts_them(tmp_path, form):
    ref, ours = pair_from_disk("BertModel", tmp_path, attn_impl="auto", **TINY)
    ids, mask, types = padded_batch(TINY["vocab_size"], [7, 3, 5], 8)
    keep = mask.bool()[:, None, None, :]
    four = {"bool_b11s": keep, "bool_b1ts": keep.expand(-1, 1, 8, -1),
            "additive_b11s": (~keep).float() * torch.finfo(torch.float32).min, "int_b11s": keep.long()}[form]
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, four, types)
    assert_close_on_tokens(got.last_hidden_state, expected.last_hidden_state, mask)


def test_per_query_masks_and_odd_shapes_are_refused():
    model = minibert.BertModel(minibert.BertConfig(**TINY)).eval()
    ids = torch.ones(2, 4, dtype=torch.long)
    causal = torch.ones(4, 4).tril().bool()[None, None].expand(2, 1, 4, 4)
    with pytest.raises(minibert.MinibertError, match="per-query 4-d mask"):
        model(ids, causal)
    with pytest.raises(minibert.MinibertError, match=r"attention_mask has shape \(2, 4, 1\)"):
        model(ids, torch.ones(2, 4, 1))
    with pytest.raises(minibert.MinibertError, match="must be additive"):
        model(ids, torch.full((2, 1, 1, 4), 0.5))
