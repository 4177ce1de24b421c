"""The compression claims (18, 19, 23) beyond their verdicts: what their figures must show for
the verdict to mean what it says — parameter counts that follow from the construction, and the
structural facts (masks save nothing, int8 stores a byte per weight) the speed verdict rests on."""

from __future__ import annotations

import pytest

from tfm_rs import claims
from tfm_rs.claims.hashed_embeddings import D_MODEL, NUM_HASHES, DictionaryTask, buckets_for


@pytest.fixture(scope="module")
def hashed():
    return claims.run("hashed-embeddings", quick=True).figures


@pytest.fixture(scope="module")
def low_rank():
    return claims.run("low-rank-ffn", quick=True).figures


@pytest.fixture(scope="module")
def compression():
    return claims.run("compression-speed", quick=True).figures


def test_hash_buckets_give_the_stated_fraction_of_the_table(hashed):
    vocab = DictionaryTask(hashed["words"]).vocab
    runs = hashed["runs"]
    assert runs["full table"]["embedding_parameters"] == 2 * vocab * D_MODEL
    for row in runs.values():
        if row["buckets"] is not None:
            assert row["embedding_parameters"] == 2 * (row["buckets"] * D_MODEL + vocab * NUM_HASHES)
    assert abs(runs[next(k for k in runs if k.startswith("1/4"))]["fraction_of_table"] - 0.25) < 0.01
    assert buckets_for(1 / 32, vocab) == 0  # the importance weights alone are 1/32 of a 64-wide table
    assert hashed["holds_at"]["1/2"] and hashed["holds_at"]["1/4"]


def test_low_rank_ffn_parameters_follow_the_rank(low_rank):
    d, ff = low_rank["d_model"], low_rank["d_ff"]
    layers = 2  # one encoder and one decoder layer, each with linear1 and linear2
    assert low_rank["full"]["ffn_parameters"] == layers * (2 * d * ff + ff + d)
    for r, row in low_rank["low_rank"].items():
        assert row["ffn_parameters"] == layers * (2 * int(r) * (d + ff) + ff + d)
    for row in low_rank["factorized"].values():
        assert len(row["ranks"]) == 2 * layers and all(1 <= k <= d for k in row["ranks"])
    ranks = [row["ranks"] for row in low_rank["factorized"].values()]
    assert all(a >= b for hi, lo in zip(ranks, ranks[1:]) for a, b in zip(hi, lo))  # less energy, lower rank
    assert all(len(s) == d and s[0] == 1.0 for s in low_rank["spectra"]["trained"])


def test_masks_save_nothing_and_int8_stores_a_byte_per_weight(compression):
    rows = compression["rows"]
    teacher, mask = rows["teacher (float32)"], rows["mask pruning, 50% of weights"]
    assert mask["parameters"] == teacher["parameters"]
    assert mask["multiplied_bytes"] == teacher["multiplied_bytes"] and mask["file_bytes"] > teacher["file_bytes"]
    assert mask["speed"] == "not faster"
    assert rows["int8 dynamic quantization"]["file_bytes"] < 0.45 * teacher["file_bytes"]
    pruned = rows["half the heads and FFN channels"]
    assert pruned["parameters"] < 0.75 * teacher["parameters"]
    assert any(r["speed"] == "faster" for r in rows.values())
