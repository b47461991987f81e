"""torch.compile(fullgraph=True) of the whole model: no graph break, and the compiled model matches eager.

`auto` (and `unpadded`) run the padded sdpa kernel inside a compiled graph: packing has data-dependent shapes.
"""

from __future__ import annotations

import pytest
import torch

import minibert
from minibert.config import BertConfig
from tests.reference import TINY


@pytest.mark.parametrize("impl", ["sdpa", "math", "auto"])
def test_compiled_forward_matches_eager(impl):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = minibert.BertForSequenceClassification(BertConfig(**TINY), attn_impl=impl).eval()
    ids = torch.randint(1, 99, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, :] = 0  # an all-padding row: zeros from attention, never NaN, compiled too
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    with torch.no_grad():
        want = model(ids, mask).logits
        got = compiled(ids, mask).logits
    assert torch.isfinite(got).all()
    # an all-padding row has no defined output (eager `auto` packs it away to zeros, compiled runs padded sdpa)
    assert (got - want)[:2].abs().max().item() <= 1e-5
