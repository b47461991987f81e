"""Pre-training: the sparse MLM loss against transformers' full decoder, from-scratch init against transformers',
and the command line (presets, a tiny run whose loss falls, exact resume, the saved checkpoint)."""

from __future__ import annotations

import pytest
import torch

import minibert
from minibert.masking import Masker, masking_generator
from minibert.weights import name_table
from tests.test_models import TINY, hf_model

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.mark.parametrize("attn_impl", ["sdpa", "unpadded"])
def test_sparse_mlm_loss_and_gradients_equal_transformers_full_decoder(tmp_path, attn_impl):
    ref = hf_model("BertForMaskedLM", **TINY, **NO_DROPOUT)
    ref.save_pretrained(tmp_path)
    ours = minibert.BertForMaskedLM.from_pretrained(tmp_path, attn_impl=attn_impl)
    ref.train()
    ours.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, TINY["vocab_size"], (4, 24), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0  # one padded row, for the unpadded path
    ids[1, 20:] = 0
    masked, labels = Masker(4, TINY["vocab_size"], (0, 1, 2, 3), 0.3).mask(ids, masking_generator(0, 0, 0))
    assert (labels != -100).sum() > 10

    ref_out = ref(input_ids=masked, attention_mask=mask, labels=labels)
    ref_out.loss.backward()
    out = ours(masked, mask, labels=labels, masked_only=True)
    out.loss.backward()
    assert out.logits.shape == (int((labels != -100).sum()), TINY["vocab_size"])
    assert torch.allclose(out.loss, ref_out.loss, atol=1e-6, rtol=1e-6)
    assert torch.allclose(out.logits, ref_out.logits[labels != -100], atol=1e-5)
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    ref_grads.setdefault("cls.predictions.bias", ref_grads.get("cls.predictions.decoder.bias"))
    params = dict(ours.named_parameters())
    for our_name, hf_names in name_table(ours):
        expected = torch.cat([ref_grads[n] for n in hf_names], dim=0)
        got = params[our_name].grad
        scale = expected.abs().max().clamp_min(1e-12)
        assert ((got - expected).abs().max() / scale).item() < 1e-4, our_name

    # the full path keeps transformers' shape and loss
    full = ours(masked, mask, labels=labels)
    assert full.logits.shape == (4, 24, TINY["vocab_size"])
    assert torch.allclose(full.loss, ref_out.loss, atol=1e-6, rtol=1e-6)


def test_masked_only_needs_labels():
    model = minibert.BertForMaskedLM(minibert.BertConfig(**TINY))
    with pytest.raises(minibert.MinibertError, match="needs labels"):
        model(torch.ones(1, 4, dtype=torch.long), masked_only=True)
