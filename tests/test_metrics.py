"""tfm_rs.metrics: BLEU against sacrebleu itself, perplexity, token accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

import tfm_rs
from tfm_rs.metrics import bleu, bleu_score, perplexity, token_accuracy

HYPS = [
    "The dog bit the man.",
    "It wasn't surprising.",
    "The man had just bitten him.",
]
REFS = [
    "The dog bit the man.",
    "It was not unexpected.",
    "The man bit him first.",
]
REFS2 = [
    "The dog had bit the man.",
    "No one was surprised.",
    "The man had bitten the dog.",
]


def test_bleu_matches_sacrebleu():
    want = sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert bleu(HYPS, REFS) == pytest.approx(want, abs=1e-12)
    # sacrebleu's documented example (README) for two reference sets: 48.53
    assert bleu(HYPS, list(zip(REFS, REFS2))) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score)
    assert bleu(HYPS, list(zip(REFS, REFS2))) == pytest.approx(48.53, abs=0.01)


def test_bleu_extremes_and_case():
    assert bleu(REFS, REFS) == pytest.approx(100.0)
    assert bleu(["completely unrelated words here"], ["The dog bit the man."]) == 0.0
    lower = [h.lower() for h in HYPS]
    assert bleu(lower, REFS) < bleu(HYPS, REFS)  # cased by default
    assert bleu(lower, REFS, lowercase=True) == pytest.approx(bleu(HYPS, REFS, lowercase=True))
    s = bleu_score(HYPS, REFS)
    assert s.score == pytest.approx(bleu(HYPS, REFS)) and len(s.precisions) == 4


def test_bleu_bad_input():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="2 hypotheses but 3 references"):
        bleu(HYPS[:2], REFS)
    with pytest.raises(tfm_rs.DTypeError):
        bleu([[1, 2, 3]], REFS[:1])


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.5)) == pytest.approx(7.5)
    assert perplexity(np.float32(2.0)) == pytest.approx(math.exp(2.0), rel=1e-6)
    assert perplexity(tfm_rs.tensor(np.float32(1.0))) == pytest.approx(math.e, rel=1e-6)
    assert perplexity(1e6) == math.inf
    assert math.isnan(perplexity(float("nan")))


def test_token_accuracy_logits_and_predictions():
    target = np.array([[3, 4, 5, 0], [6, 7, 0, 0]])
    pred = np.array([[3, 9, 5, 0], [6, 7, 1, 0]])
    # ignoring pad 0: 5 tokens, 4 right
    assert token_accuracy(pred, target, ignore_index=0) == pytest.approx(4 / 5)
    assert token_accuracy(pred, target, ignore_index=0, return_counts=True) == (4, 5)
    assert token_accuracy(pred, target, ignore_index=None) == pytest.approx(6 / 8)
    logits = np.full((2, 4, 10), -1.0, np.float32)
    np.put_along_axis(logits, pred[..., None], 5.0, axis=-1)
    assert token_accuracy(logits, target, ignore_index=0) == pytest.approx(4 / 5)
    assert token_accuracy(tfm_rs.tensor(logits), target, ignore_index=0) == pytest.approx(4 / 5)
    assert math.isnan(token_accuracy(pred, np.zeros_like(target), ignore_index=0))
    with pytest.raises(tfm_rs.ShapeError):
        token_accuracy(np.zeros((2, 3, 10)), target)
