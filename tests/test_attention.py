"""Every attention kernel against `math` (the reference), the unpadded path through whole models, `auto`, bf16.

Tolerances: 1e-5 absolute on outputs, 1e-4 relative on gradients, ‖out − ref‖/‖ref‖ < 1e-2 for bf16 autocast.
"""

from __future__ import annotations

import logging

import pytest
import torch
import transformers
from einops import rearrange

import minibert
from minibert.attention import KERNELS, math_attention, plan_attention
from minibert.config import BertConfig
from minibert.errors import MinibertError
from minibert.padding import packing_from_mask, repad, unpad
from minibert.weights import load_hf_state_dict
from tests.reference import TINY

ATOL = 1e-5
IMPLS = ["math", "sdpa", "unpadded", "auto"]


def lengths_mask(lengths: list[int], seq_len: int) -> torch.Tensor:
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    return mask


def run_kernel(name: str, q, k, v, mask):
    """Any kernel on padded (b, h, t, d) inputs -> (b, h, t, d); a packed kernel packs and re-pads around itself."""
    scale = q.shape[-1] ** -0.5
    if name != "unpadded":
        return KERNELS[name](q, k, v, mask, 0.0, scale)[0]
    p = packing_from_mask(mask)
    packed = [unpad(rearrange(x, "b h t d -> b t h d"), p) for x in (q, k, v)]
    out, _ = KERNELS[name](*packed, None, 0.0, scale, packing=p)
    return rearrange(repad(out, p), "b t h d -> b h t d")


CASES = {  # name: (lengths, seq_len)
    "padding": ([7, 3, 5, 1], 8),
    "batch_of_one": ([6], 6),
    "length_one": ([1, 1], 1),
    "length_512": ([512, 300], 512),
    "all_padding_row": ([4, 0, 2], 5),
    "full_length": ([9, 9, 9], 9),
    "no_token_at_all": ([0, 0], 3),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["sdpa", "unpadded"])
def test_kernel_matches_math(name, case):
    lengths, seq_len = CASES[case]
    g = torch.Generator().manual_seed(len(case))
    q, k, v = (torch.randn(len(lengths), 4, seq_len, 16, generator=g) for _ in range(3))
    mask = lengths_mask(lengths, seq_len)
    ref = math_attention(q, k, v, mask, 0.0, 16**-0.5)[0]
    got = run_kernel(name, q, k, v, mask)
    keep = rearrange(mask, "b t -> b 1 t 1").expand_as(ref)
    assert torch.isfinite(got).all()
    if case == "no_token_at_all":
        assert not keep.any()  # nothing real to compare: the exact zeros below are this case's check
    else:
        assert (got - ref)[keep].abs().max().item() <= ATOL
    empty = torch.tensor([n == 0 for n in lengths])
    assert not got[empty].any() and not ref[empty].any()  # all-padding rows: exact zeros on every kernel


@pytest.mark.parametrize("name", ["sdpa", "unpadded"])
def test_kernel_gradients_match_math(name):
    lengths, seq_len = [7, 3, 5, 1], 8
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(len(lengths), 4, seq_len, 16, generator=g, dtype=torch.float64) for _ in range(3)]
    mask = lengths_mask(lengths, seq_len)
    weight = torch.randn(len(lengths), 4, seq_len, 16, generator=g, dtype=torch.float64) * rearrange(
        mask, "b t -> b 1 t 1")  # the loss reads real query positions only

    def grads(kernel):
        leaves = [x.float().requires_grad_() for x in inputs]
        (run_kernel(kernel, *leaves, mask) * weight.float()).sum().backward()
        return [x.grad for x in leaves]

    for got, ref in zip(grads(name), grads("math")):
        assert ((got - ref).norm() / ref.norm()).item() < 1e-4


def tiny_pair(impl: str, seed: int = 0, head: str = "BertModel", **extra):
    torch.manual_seed(seed)
    config = BertConfig(**TINY, **extra)
    ref = getattr(minibert, head)(config, attn_impl="math").eval()
    with torch.no_grad():
        for param in ref.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    ours = getattr(minibert, head)(config, attn_impl=impl).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def batch(lengths: list[int], seq_len: int, vocab: int = 99, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    mask = lengths_mask(lengths, seq_len).long()
    ids = torch.randint(1, vocab, (len(lengths), seq_len), generator=g) * mask
    types = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        types[row, n // 2: n] = 1
    return ids, mask, types


@pytest.mark.parametrize("impl", ["sdpa", "unpadded", "auto"])
def test_whole_model_matches_math(impl):
    ref, ours = tiny_pair(impl)
    ids, mask, types = batch([11, 4, 1, 0, 16], 16)
    a = ref(ids, mask, types, output_hidden_states=True)
    b = ours(ids, mask, types, output_hidden_states=True)
    keep = mask.bool()
    for x, y in zip(a.hidden_states + (a.last_hidden_state,), b.hidden_states + (b.last_hidden_state,)):
        assert (x - y)[keep].abs().max().item() <= ATOL
    real = keep.any(dim=1)
    assert (a.pooler_output - b.pooler_output)[real].abs().max().item() <= ATOL
    assert torch.isfinite(b.last_hidden_state).all() and torch.isfinite(b.pooler_output).all()


def test_unpadded_inputs_embeds_and_position_ids():
    ref, ours = tiny_pair("unpadded")
    ids, mask, types = batch([5, 3], 6)
    embeds = ref.embeddings.word(ids)
    positions = torch.arange(6).flip(0)[None]  # (1, t), broadcast over the batch
    a = ref(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types, position_ids=positions)
    b = ours(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types, position_ids=positions)
    assert (a.last_hidden_state - b.last_hidden_state)[mask.bool()].abs().max().item() <= ATOL


@pytest.mark.parametrize("head", ["BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForQuestionAnswering", "BertForMaskedLM"])
def test_heads_on_unpadded(head):
    ref, ours = tiny_pair("unpadded", head=head)
    ids, mask, types = batch([9, 2, 6], 10)
    a, b = ref(ids, mask, types), ours(ids, mask, types)
    for name in ("logits", "start_logits", "end_logits"):
        if hasattr(a, name):
            x, y = getattr(a, name), getattr(b, name)
            x, y = (x, y) if x.dim() == 2 and head == "BertForSequenceClassification" else (x[mask.bool()],
                                                                                                y[mask.bool()])
            assert (x - y).abs().max().item() <= ATOL


def test_training_step_gradients_unpadded_vs_math():
    ref, ours = tiny_pair("unpadded", head="BertForSequenceClassification", hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)
    ids, mask, types = batch([9, 2, 6, 10], 10)
    labels = torch.tensor([0, 1, 1, 0])
    for model in (ref, ours):
        model.train()
        model(ids, mask, types, labels=labels).loss.backward()
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        if p.grad is None or p.grad.norm() == 0:
            continue
        assert ((p.grad - q.grad).norm() / p.grad.norm()).item() < 1e-4, name


def test_unpadded_trains_with_dropout():
    _, ours = tiny_pair("unpadded", head="BertForSequenceClassification")
    ours.train()
    ids, mask, types = batch([9, 2, 6], 10)
    loss = ours(ids, mask, types, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in ours.bert.encoder.parameters())


def test_unpadded_with_gradient_checkpointing():
    ref, ours = tiny_pair("unpadded", head="BertForSequenceClassification", hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)
    ours.gradient_checkpointing_enable()
    ours.train(), ref.train()
    ids, mask, types = batch([9, 2, 6], 10)
    la = ref(ids, mask, types, labels=torch.tensor([0, 1, 1])).loss
    lb = ours(ids, mask, types, labels=torch.tensor([0, 1, 1])).loss
    lb.backward()
    assert abs(la.item() - lb.item()) < ATOL
    assert all(p.grad is not None for p in ours.bert.encoder.parameters())


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_autocast_close_to_float32(impl):
    ref, ours = tiny_pair(impl)
    ids, mask, types = batch([16, 9, 3, 0], 16)
    with torch.no_grad():
        want = ref(ids, mask, types).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ours(ids, mask, types).last_hidden_state.float()
    keep = mask.bool()
    assert torch.isfinite(got).all()
    assert ((got - want)[keep].norm() / want[keep].norm()).item() < 1e-2


def test_output_attentions_routes_to_math_with_a_log(caplog):
    from minibert import attention

    ref, ours = tiny_pair("unpadded")
    ids, mask, types = batch([5, 3], 6)
    attention._logged.clear()
    with caplog.at_level(logging.INFO, logger="minibert"):
        got = ours(ids, mask, types, output_attentions=True)
    want = ref(ids, mask, types, output_attentions=True)
    assert [r.message for r in caplog.records] == [
        "output_attentions=True: attention runs on the 'math' kernel for this call, since 'unpadded' cannot return "
        "probabilities."]
    assert len(got.attentions) == TINY["num_hidden_layers"]
    for a, b in zip(got.attentions, want.attentions):
        assert a.shape == (2, TINY["num_attention_heads"], 6, 6)
        assert (a - b).abs().max().item() <= ATOL


def test_auto_says_once_where_its_rule_is_and_unknown_names_are_listed(caplog):
    from minibert import attention

    attention._logged.clear()
    with caplog.at_level(logging.INFO, logger="minibert"):
        minibert.BertModel(BertConfig(**TINY))
        minibert.BertModel(BertConfig(**TINY))
    assert [r.message for r in caplog.records] == [attention.AUTO_NOTE]
    with pytest.raises(MinibertError, match="auto, math, sdpa, unpadded"):
        minibert.BertModel(BertConfig(**TINY), attn_impl="flash")


def plan(impl: str, mask: torch.Tensor | None, shape: tuple[int, int] | None = None, device: str = "cpu",
         dtype: torch.dtype = torch.float32, training: bool = False, need_probs: bool = False,
         compiling: bool = False, heads: int = 1):
    shape = shape or tuple(mask.shape)
    return plan_attention(impl, mask, shape=shape, device=torch.device(device), dtype=dtype, num_heads=heads,
                          training=training, need_probs=need_probs, compiling=compiling)


def test_plan_packs_only_cpu_eager_calls_with_enough_padding():
    four = lengths_mask([10, 2], 10)  # 8 padding positions over 2 sequences: exactly AUTO_MIN_PADDING_PER_SEQUENCE
    got = plan("auto", four)
    assert (got.kernel, got.packing.seqlens, got.packing.cu_seqlens.tolist()) == ("unpadded", (10, 2), [0, 10, 12])
    little = lengths_mask([10, 5], 10)
    assert plan("auto", little) == ("sdpa", "sdpa", None, False)  # too little padding: padded sdpa
    assert plan("unpadded", little).kernel == "unpadded"
    bf16 = torch.bfloat16  # a padded position costs less in bf16: packing pays later
    assert plan("auto", four, dtype=bf16).packing is None
    assert plan("auto", lengths_mask([40, 8], 40), dtype=bf16).kernel == "unpadded"  # 16 per sequence
    assert plan("auto", None, shape=(2, 10)) == ("sdpa", "sdpa", None, False)
    assert plan("auto", four, need_probs=True) == ("math", "math", None, False)
    assert plan("auto", four, device="cuda") == ("sdpa", "sdpa", None, False)
    assert plan("auto", four, compiling=True) == ("sdpa", "sdpa", None, False)
    assert plan("unpadded", four, compiling=True) == ("sdpa", "sdpa", None, False)
    assert plan("unpadded", four, device="cuda").kernel == "unpadded"  # asked for by name: packed on any device
    assert plan("sdpa", four) == ("sdpa", "sdpa", None, False)
    assert plan("math", four) == ("math", "math", None, False)


def test_auto_model_forward_runs_the_plan(monkeypatch):
    """BertModel asks for the plan once per forward, with the call's dtype, training flag and shape."""
    from minibert import models

    calls = []
    real = models.plan_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "plan_attention", spy)
    model = minibert.BertModel(BertConfig(**TINY)).eval()
    ids, mask, types = batch([10, 2, 3], 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, mask, types)
    model.train()(ids, mask, types)
    assert [(c["dtype"], c["training"], c["shape"]) for c in calls] == [
        (torch.bfloat16, False, (3, 10)), (torch.float32, True, (3, 10))]


def test_softmax_of_bf16_scores_accumulates_in_float32():
    """`math_attention` relies on it: the softmax of bf16 scores is the float32 softmax rounded once to bf16."""
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(4, 3, 64, 64, generator=g) * 8).to(torch.bfloat16)
    assert torch.equal(torch.softmax(scores, dim=-1), torch.softmax(scores.float(), dim=-1).to(torch.bfloat16))


def test_auto_runs_math_for_small_bf16_calls_on_cpu(monkeypatch):
    from minibert import attention

    def kernel(b, t, s, dtype=torch.bfloat16, training=False):
        return plan("auto", None, shape=(b, s), dtype=dtype, training=training).kernel if t == s else \
            plan("auto", None, shape=(b, s), dtype=dtype, training=training).first_token_kernel

    limit, training_limit = attention.AUTO_MATH_MAX_SCORES, attention.AUTO_MATH_MAX_SCORES_TRAINING
    assert kernel(1, 1, limit) == "math" and kernel(1, 1, limit + 1) == "sdpa"
    assert kernel(1, 1, training_limit, training=True) == "math"
    assert kernel(1, 1, training_limit + 1, training=True) == "sdpa"
    assert kernel(64, 64, 64) == "math" and kernel(1024, 1024, 1024) == "sdpa"  # 2^18 and 2^30 score elements
    assert kernel(4, 16, 16, dtype=torch.float32) == "sdpa"
    # through a whole model: `auto` gives exactly what the kernel it chose gives
    models = {impl: tiny_pair(impl)[1] for impl in ("math", "sdpa", "auto")}  # the same seeded weights
    ids, mask, types = batch([8, 7], 8)  # little padding: not packed
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        run = {impl: m(ids, mask, types).last_hidden_state for impl, m in models.items()}
        assert torch.equal(run["auto"], run["math"]) and not torch.equal(run["auto"], run["sdpa"])
        heads = TINY["num_attention_heads"]
        monkeypatch.setattr(attention, "AUTO_MATH_MAX_SCORES", 2 * heads * 8 * 8 - 1)  # one element too many
        assert torch.equal(models["auto"](ids, mask, types).last_hidden_state, run["sdpa"])


@pytest.fixture(scope="module")
def minilm_models(minilm_dir):
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    ours = {k: minibert.BertModel.from_pretrained(minilm_dir, attn_impl=k) for k in ("unpadded", "auto")}
    return ref, ours


@pytest.mark.parametrize("lengths", [[40, 7, 1, 25], [40, 40, 38, 40]], ids=["much_padding", "little_padding"])
@pytest.mark.parametrize("impl", ["unpadded", "auto"])
def test_minilm_unpadded_matches_transformers(minilm_models, impl, lengths):
    ref, ours = minilm_models
    ids, mask, types = batch(lengths, 40, vocab=30522, seed=5)
    ids[:, 0] = 101
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours[impl](ids, mask, types)
    keep = mask.bool()
    assert (got.last_hidden_state - want.last_hidden_state)[keep].abs().max().item() <= ATOL
    assert (got.pooler_output - want.pooler_output).abs().max().item() <= ATOL


def test_a_transformers_state_dict_loads_into_the_unpadded_model():
    # bench/ builds random bert-base in transformers and loads its state dict into ours: check that path (no file
    # involved, so no ../shared needed)
    ref = transformers.BertModel(transformers.BertConfig(**TINY)).eval()
    ours = minibert.BertModel(BertConfig(**TINY), attn_impl="unpadded")
    load_hf_state_dict(ours, ref.state_dict())
    ids, mask, types = batch([8, 3], 8)
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        b = ours.eval()(ids, mask, types).last_hidden_state
    assert (a - b)[mask.bool()].abs().max().item() <= ATOL
