"""Entity scores against seqeval on random tag sequences, in its lenient (conlleval) reading and strict IOB2/IOB1."""

import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB1, IOB2

from minibert.ner_metrics import entities, entity_scores

TAG = st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"])
SENTENCES = st.lists(st.lists(TAG, min_size=1, max_size=12), min_size=1, max_size=6)


def pairs(sentences):
    """Gold and predicted sentences of equal lengths: the prediction is the gold with some tags redrawn."""
    return sentences.flatmap(lambda gold: st.tuples(st.just(gold), st.tuples(*[
        st.lists(TAG, min_size=len(s), max_size=len(s)) for s in gold]).map(list)))


def seqeval_scores(gold, pred, scheme):
    kwargs = {} if scheme == "conlleval" else {"mode": "strict", "scheme": {"IOB2": IOB2, "IOB1": IOB1}[scheme]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-division warnings: both sides give 0 there
        report = classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)
        out = {"precision": precision_score(gold, pred, zero_division=0, **kwargs),
               "recall": recall_score(gold, pred, zero_division=0, **kwargs),
               "f1": f1_score(gold, pred, zero_division=0, **kwargs)}
    out.update({f"f1_{k}": v["f1-score"] for k, v in report.items() if "avg" not in k})
    out["accuracy"] = accuracy_score(gold, pred)
    return out


@pytest.mark.parametrize("scheme", ["conlleval", "IOB2", "IOB1"])
@given(data=pairs(SENTENCES))
def test_scores_equal_seqeval(scheme, data):
    gold, pred = data
    ours, theirs = entity_scores(gold, pred, scheme), seqeval_scores(gold, pred, scheme)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


@given(tags=st.lists(TAG, max_size=20))
def test_lenient_entities_equal_seqeval_spans(tags):
    assert entities(tags) == [(t, s, e + 1) for t, s, e in get_entities(tags)]


def test_by_hand():
    """B-PER I-PER is one person; I-LOC after O starts a location in the lenient and IOB1 readings, not in IOB2."""
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC"]
    assert entities(tags) == [("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6)]
    assert entities(tags, "IOB2") == [("PER", 0, 2), ("LOC", 5, 6)]
    assert entities(tags, "IOB1") == [("PER", 1, 2), ("LOC", 3, 5), ("LOC", 5, 6)]
    scores = entity_scores([tags], [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]])
    # gold PER, LOC(3-5), LOC(5-6); predicted PER, LOC(3-5): 2 hits of 2 predicted and 3 gold; 4 of 6 tags right
    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (scores["f1_PER"], scores["f1_LOC"], scores["accuracy"]) == pytest.approx((1.0, 2 / 3, 2 / 3))
