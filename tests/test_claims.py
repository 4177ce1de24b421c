"""tfm_rs.claims: every claim's experiment, in quick mode, reaches its shipped verdict (so a
library change that breaks a finding fails here), writes result.json and its plots, and the
``tfm-rs claims`` command lists and runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfm_rs import claims
from tfm_rs.claims.base import VERDICTS, Outcome
from tfm_rs.cli import main


@pytest.mark.parametrize("name", list(claims.CLAIMS))
def test_claim_reaches_its_verdict(name, tmp_path):
    pytest.importorskip("matplotlib", reason="the claims' plots need matplotlib")
    claim = claims.get(name)
    assert claim.expected in VERDICTS and claim.statement and claim.reason
    try:
        result = claims.run(name, quick=True, out=tmp_path)
    except FileNotFoundError as e:
        if not str(e).startswith("Multi30k"):
            raise
        print(f"skipped {name}: {e}")  # the claims on real translation need the corpus
        pytest.skip(f"{name} needs Multi30k: {e}")
    assert result.verdict == claim.expected, result.summary
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["verdict"] == result.verdict and saved["quick"] is True
    assert result.plots and all((tmp_path / p).stat().st_size > 1000 for p in result.plots)


def test_claim_numbers_and_names_are_unique():
    numbers = [c.number for c in claims.CLAIMS.values()]
    assert len(set(numbers)) == len(numbers) == len(claims.CLAIMS)


def test_an_outcome_needs_a_known_verdict():
    with pytest.raises(ValueError, match="verdict"):
        Outcome("probably", "", {})


def test_command_lists_and_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the claims' plots need matplotlib")
    out = tmp_path / "c"
    assert main(["claims", "run", "which-masks", "--quick", "--out", str(out)]) == 0
    assert "which-masks: wrong" in capsys.readouterr().out
    assert main(["claims", "--out", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "which-masks" in listing and "wrong" in listing and "not run" in listing
    assert main(["claims", "run", "no-such-claim"]) == 2
    assert "no claim named" in capsys.readouterr().err
    assert main(["claims", "run"]) == 2
    assert main(["claims", "run", "which-masks", "--all"]) == 2


def test_receptive_field_grows_by_the_kernel_per_conv_layer():
    figures = claims.run("receptive-field", quick=True).figures
    assert figures["attention_coverage"] == 1.0
    assert figures["widest_field"]["plain"] == figures["expected_plain_field"]
    length = figures["length"]
    assert figures["layers_for_full_coverage"]["plain"] == length  # position 0 needs L − 1 steps of 1
    assert 1 < figures["layers_for_full_coverage"]["dilated"] <= int(np.log2(length)) + 1


def test_rnn_gradients_fall_with_distance_and_attention_does_not():
    figures = claims.run("rnn-gradient-vs-distance", quick=True).figures
    for name in ("LSTM", "GRU"):
        assert all(d < -0.05 for d in figures["decades_per_step"][name])
    assert all(abs(d) < 0.05 for d in figures["decades_per_step"]["attention"])


def test_bert_fills_the_middle_better_than_the_left_allows_and_gpt_does_not():
    figures = claims.run("bert-vs-gpt", quick=True).figures
    assert figures["gpt_past_only"] and figures["bert_both_ways"]
    left, both = figures["optimum"]["left only"][0], figures["optimum"]["both sides"][0]
    assert left + 0.05 < figures["accuracy"]["BERT"][0] <= both + 0.03
    assert figures["accuracy"]["GPT"][0] <= left + 0.03


def test_a_words_vectors_spread_with_depth_but_stay_its_own():
    sims = claims.run("contextual-embeddings", quick=True).figures["similarity"]["trained"]
    assert sims["same word"][0] > 1 - 1e-5 and sims["same word"][-1] < 0.95
    assert min(np.subtract(sims["same word"][1:], sims["different words"][1:])) > 0.3


def test_label_smoothing_costs_perplexity_on_fresh_data():
    figures = claims.run("label-smoothing", quick=True).figures
    assert figures["perplexity_hurt"]["fresh data"]
    assert set(figures["runs"]) == {"fresh data", "fixed 128 pairs"} and len(figures["seeds"]) == 3


def test_only_batch_norm_that_counts_padding_changes_with_padding():
    sens = claims.run("layernorm-vs-batchnorm", quick=True).figures["sensitivity"]
    assert sens["LayerNorm"] == {"batchmates": 0.0, "padding": 0.0}
    assert sens["padding-aware BatchNorm"]["padding"] < 1e-4 < sens["padding-aware BatchNorm"]["batchmates"]
    assert sens["BatchNorm (padding counted)"]["padding"] > 1e-2


def test_cls_vectors_of_neighbouring_layers_are_close_and_the_diagonal_moves():
    figures = claims.run("cls-across-layers", quick=True).figures
    assert min(figures["cls_adjacent"][1:]) > 0.9 > figures["cls_cosine"][0][-1]
    assert max(figures["attention_diagonal"]) > 1.5 * min(figures["attention_diagonal"])


def test_efficient_attention_judges_work_counted_not_timed():
    from tfm_rs.claims.efficient_attention import KINDS, attention_flops
    n, d = 4096, 16
    assert attention_flops("dense", n, d) == 4 * d * n * n
    assert attention_flops("linear", n, d) == 4 * n * d * d + 4 * n * d
    # 4 rounds: a rotation to 64 buckets and each query against 2 chunks of 64 keys.
    assert attention_flops("lsh(n_hashes=4, bucket_size=64)", n, d) == 4 * (2 * n * d * 32 + 4 * d * n * 128)
    # A 128+128 window visits at most 5 of the 64 tiles of each 64-query row block.
    assert 4 * d * 64 * 64 * 3 * 64 <= attention_flops(KINDS["window"], n, d) <= 4 * d * 64 * 64 * 5 * 64
    for label, kind in KINDS.items():
        growth = attention_flops(kind, 2 * n, d) / attention_flops(kind, n, d)
        assert growth == pytest.approx(4.0) if label == "dense" else growth < 2.3, label
