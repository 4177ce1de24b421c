"""The Multi30k claims' helpers, on figures made up to sit on each side of their thresholds:
Spearman's correlation and the claimed-way fractions (claim 22), the steps up in size (claim
17), the vocabulary trade-off (claim 16); and the corpus lookup's error when Multi30k is absent."""

from __future__ import annotations

import numpy as np
import pytest

from tfm_rs.claims import deeper_wider, loss_vs_bleu, translation, vocabulary


def test_ranks_give_ties_their_mean_rank():
    np.testing.assert_array_equal(loss_vs_bleu.ranks([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])


def test_rank_correlation_matches_pearson_of_ranks_and_its_extremes():
    a, b = [0.1, 0.4, 0.2, 0.9, 0.5], [2.0, 1.0, 3.0, 0.0, 0.5]
    assert loss_vs_bleu.rank_correlation(a, [x ** 3 for x in a]) == pytest.approx(1.0)
    assert loss_vs_bleu.rank_correlation(a, [-x for x in a]) == pytest.approx(-1.0)
    ra, rb = loss_vs_bleu.ranks(a), loss_vs_bleu.ranks(b)
    assert loss_vs_bleu.rank_correlation(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)
    assert loss_vs_bleu.rank_correlation(a, [0.0] * 5) == 0.0  # a flat BLEU curve follows nothing


def test_fraction_moving_counts_strict_moves_the_claimed_way():
    assert loss_vs_bleu.fraction_moving([5, 4, 4, 3, 3.5], down=True) == 0.5
    assert loss_vs_bleu.fraction_moving([0, 0, 1, 2], down=False) == pytest.approx(2 / 3)
    assert loss_vs_bleu.fraction_moving([1.0], down=True) == 0.0


def test_loss_vs_bleu_verdict_needs_both_curves_steady_and_the_same_way():
    assert loss_vs_bleu.verdict_of(0.95, 0.9, -1.0, -0.9) == "holds"
    assert loss_vs_bleu.verdict_of(1.0, 0.5, -1.0, -0.9) == "it depends"
    assert loss_vs_bleu.verdict_of(0.8, 0.95, -1.0, 0.0) == "it depends"  # a flat BLEU: no correlation
    assert loss_vs_bleu.verdict_of(1.0, 1.0, -1.0, 0.2) == "wrong"  # BLEU against the loss
    assert loss_vs_bleu.verdict_of(0.5, 0.5, 0.1, -0.5) == "wrong"  # the loss rose over the run


def test_curves_split_the_training_loss_at_the_evaluations():
    history = [{"type": "valid", "step": 0, "loss": 8.0, "bleu": 0.0}]
    history += [{"type": "train", "step": s, "loss": 10.0 - s} for s in range(1, 5)]
    history += [{"type": "valid", "step": 2, "loss": 7.0, "bleu": 1.04}, {"type": "valid", "step": 4, "loss": 6.0,
                                                                           "bleu": 0.96}]
    history.sort(key=lambda r: (r["step"], r["type"] == "valid"))
    c = loss_vs_bleu.curves(history)
    assert c["step"] == [0, 2, 4] and c["train_loss_interval"] == [8.5, 6.5]
    assert c["valid_loss"] == [8.0, 7.0, 6.0] and c["bleu"] == [0.0, 1.0, 1.0] and c["train_loss"] == [9, 8, 7, 6]


def test_a_step_up_in_size_is_better_only_when_every_score_clears_its_margin():
    margins = {"valid_loss": 0.1, "bleu": 1.0}
    small = {"valid_loss": 3.0, "bleu": 10.0}
    runs = [small, {"valid_loss": 2.8, "bleu": 12.0}, {"valid_loss": 2.75, "bleu": 14.0},
            {"valid_loss": 2.5, "bleu": 12.5}]
    assert deeper_wider.compare({"w": runs}, margins) == {"w": ["better", "tie", "worse"]}
    assert deeper_wider.compare({"w": runs[:2]}, {"valid_loss": 0.1}) == {"w": ["better"]}


def test_deeper_wider_verdict():
    assert deeper_wider.verdict_of({"width": ["better", "better"], "depth": ["better"]}) == "holds"
    assert deeper_wider.verdict_of({"width": ["better", "tie"], "depth": ["better"]}) == "it depends"
    assert deeper_wider.verdict_of({"width": ["better", "tie"], "depth": ["worse"]}) == "wrong"


def _tokenizer_figures(vocab, src, tgt, src_unk, tgt_unk):
    return {"vocab_size": vocab, "src_tokens": src, "tgt_tokens": tgt, "src_unknown": src_unk,
            "tgt_unknown": tgt_unk, "embedding_parameters": vocab * vocabulary.WIDTH}


def test_a_subword_vocabulary_between_the_ends_and_the_bleu_margin():
    figs = {"char": _tokenizer_figures(100, 70, 60, 0.0, 0.0), "word": _tokenizer_figures(15000, 12, 13, 0.04, 0.02),
            "bpe 4000": _tokenizer_figures(4000, 16, 15, 0.0, 0.0),
            "bpe 500": _tokenizer_figures(500, 30, 28, 0.0, 0.0),  # too long: 58 > 1.5 × 25
            "bpe 9000": _tokenizer_figures(9000, 13, 13, 0.0, 0.0)}  # too large a table: > half the words'
    assert vocabulary.verdict_of(figs, {}) == ("holds", {"table_is_v_times_d": True, "between_the_ends": ["bpe 4000"],
                                                         "end_wins_bleu": []})
    assert vocabulary.verdict_of(figs, {"word": 10.9, "bpe 4000": 10.0, "char": 2.0})[0] == "holds"
    assert vocabulary.verdict_of(figs, {"word": 11.1, "bpe 4000": 10.0})[1]["end_wins_bleu"] == ["word"]
    assert vocabulary.verdict_of(figs, {"word": 11.1, "bpe 4000": 10.0})[0] == "it depends"
    figs["bpe 4000"]["src_unknown"] = 0.01  # more than a tenth of the words' unknown tokens
    assert vocabulary.verdict_of(figs, {})[0] == "wrong"


def test_spread_is_the_sample_standard_deviation():
    assert translation.spread([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert translation.spread([4.0]) == 0.0


def test_without_multi30k_the_claims_say_where_they_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("TFM_RS_MULTI30K", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="Multi30k not found"):
        translation.multi30k(train=10)
