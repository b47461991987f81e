"""The specification in one file, in minGPT's shape: the real MiniLM checkpoint and real sentences through both
libraries, tokenizer to prediction. Same ids, same hidden states on every real token, same pooled vector, same
classifier logits and the same predicted class, from a model we save and transformers loads."""

from __future__ import annotations

import pytest
import torch
import transformers

import minibert

SENTENCES = [
    "A gripping, beautifully shot film; the ending stayed with me for days.",
    "I wanted to like it. I didn't.",
    "Naïve café owners in Zürich, 1999 — a charming (if slight) comedy!",
    "worst.",
    "The plot is thin, the actors are wooden, and the soundtrack never stops.",
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def both(minilm_dir, tmp_path_factory):
    """minibert's and transformers' tokenizer and classifier, with the same weights (ours saved, theirs loaded)."""
    torch.manual_seed(0)
    ours = minibert.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=3)
    folder = tmp_path_factory.mktemp("parity")
    ours.save_pretrained(folder)
    theirs = transformers.BertForSequenceClassification.from_pretrained(folder, attn_implementation="sdpa").eval()
    return (minibert.BertTokenizer.from_pretrained(minilm_dir), ours,
            transformers.BertTokenizer.from_pretrained(minilm_dir), theirs)


def test_tokenizers_give_the_same_ids(both):
    our_tok, _, their_tok, _ = both
    ours = our_tok(SENTENCES, padding=True, return_tensors="pt")
    theirs = their_tok(SENTENCES, padding=True, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("attn_impl", ["math", "sdpa", "unpadded", "auto"])
def test_models_give_the_same_hidden_states_logits_and_prediction(both, attn_impl):
    our_tok, ours, _, theirs = both
    enc = our_tok(SENTENCES, padding=True, return_tensors="pt")
    model = minibert.BertForSequenceClassification(ours.config, attn_impl=attn_impl).eval()
    model.load_state_dict(ours.state_dict())
    with torch.no_grad():
        got = model.bert(**enc, output_hidden_states=True)
        want = theirs.bert(**enc, output_hidden_states=True)
        got_logits, want_logits = model(**enc).logits, theirs(**enc).logits
    real = enc["attention_mask"].bool()
    assert len(got.hidden_states) == len(want.hidden_states) == 7  # embeddings + 6 layers
    for layer, (a, b) in enumerate(zip(got.hidden_states, want.hidden_states)):
        assert (a - b)[real].abs().max().item() <= ATOL, f"layer {layer}"
    assert (got.pooler_output - want.pooler_output).abs().max().item() <= ATOL
    assert (got_logits - want_logits).abs().max().item() <= ATOL
    assert torch.equal(got_logits.argmax(-1), want_logits.argmax(-1))
