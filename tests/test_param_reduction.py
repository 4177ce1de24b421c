"""Parameter reduction: HashEmbedding (float64 reference, finite differences, the identity hash
as nn.Embedding, fixed hashes, bad input) and LowRankLinear (full rank equals the original, the
truncation error is the Eckart–Young bound, bad ranks)."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
from tfm_rs import nn
from helpers import assert_close, numeric_grad, randn


def bucket_rows(layer: nn.HashEmbedding, ids: np.ndarray) -> np.ndarray:
    """The buckets ``(n, k)`` each id reads, recovered through the layer itself: with a one-hot
    pool per bucket and unit importance, output column ``b`` counts the hashes landing in ``b``."""
    probe = nn.HashEmbedding(layer.num_embeddings, layer.num_buckets, layer.num_buckets, layer.num_hashes,
                             importance=False, seed=layer.seed)
    probe.weight.copy_(np.eye(layer.num_buckets, dtype=np.float32))
    counts = probe(ids).numpy().reshape(len(ids), -1)
    assert np.all(counts.sum(axis=1) == layer.num_hashes)
    return counts


@pytest.mark.parametrize("v,b,k,d", [(1, 1, 1, 3), (7, 3, 2, 1), (17, 5, 3, 17), (127, 17, 2, 127)])
def test_hash_embedding_forward_and_gradients(v: int, b: int, k: int, d: int) -> None:
    layer = nn.HashEmbedding(v, d, b, k, seed=12345)
    ids = np.random.default_rng(v).integers(0, v, size=(3, 5))
    counts = bucket_rows(layer, ids.reshape(-1))
    pool, imp = randn((b, d), seed=1), randn((v, k), seed=2)
    layer.weight.copy_(pool)
    layer.importance.copy_(imp)

    # Independent float64 reference: the bucket multiset from the probe, the importance weight
    # of hash i applied to bucket h_i(id); recover the per-hash buckets by probing each i alone.
    per_hash = []
    for i in range(k):
        single = nn.HashEmbedding(v, b, b, k, importance=True, seed=12345)
        single.weight.copy_(np.eye(b, dtype=np.float32))
        onehot = np.zeros((v, k), np.float32)
        onehot[:, i] = 1.0
        single.importance.copy_(onehot)
        per_hash.append(np.argmax(single(ids.reshape(-1)).numpy(), axis=1))
    assert np.array_equal(sum(np.eye(b)[h] for h in per_hash), counts)
    flat = ids.reshape(-1)

    def ref(pool, imp):
        out = sum(imp[flat, i][:, None] * pool[per_hash[i]] for i in range(k))
        return out.reshape(3, 5, d)

    y = layer(ids)
    assert_close(y, ref(pool.astype(np.float64), imp.astype(np.float64)), rtol=1e-5, atol=1e-6)
    g = randn((3, 5, d), seed=3)
    y.backward(g)
    want = numeric_grad(ref, [pool, imp], g.astype(np.float64))
    assert_close(layer.weight.grad, want[0], rtol=1e-5, atol=1e-5)
    assert_close(layer.importance.grad, want[1], rtol=1e-5, atol=1e-5)


def test_identity_hash_with_enough_buckets_is_an_embedding() -> None:
    v, d = 17, 5
    table = randn((v, d), seed=4)
    hashed = nn.HashEmbedding(v, d, num_buckets=v + 3, num_hashes=1, importance=False, seed=None)
    w = np.zeros((v + 3, d), np.float32)
    w[:v] = table
    hashed.weight.copy_(w)
    plain = nn.Embedding.from_pretrained(table, freeze=False)
    ids = np.random.default_rng(5).integers(0, v, size=(4, 7))
    y1, y2 = hashed(ids), plain(ids)
    assert np.array_equal(y1.numpy(), y2.numpy())
    g = randn((4, 7, d), seed=6)
    y1.backward(g)
    y2.backward(g)
    assert np.array_equal(hashed.weight.grad.numpy()[:v], plain.weight.grad.numpy())
    assert not hashed.weight.grad.numpy()[v:].any()


def test_hashes_are_deterministic_and_seeded() -> None:
    ids = np.arange(50)
    a = bucket_rows(nn.HashEmbedding(50, 4, 1000, 2, seed=7), ids)
    b = bucket_rows(nn.HashEmbedding(50, 4, 1000, 2, seed=7), ids)
    c = bucket_rows(nn.HashEmbedding(50, 4, 1000, 2, seed=8), ids)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # Pinned: the buckets of ids 0..3 under seed 0, hash 0 (the Rust tests pin the same values);
    # a change here would remap every trained HashEmbedding.
    probe = nn.HashEmbedding(4, 1000, 1000, 1, importance=False, seed=0)
    probe.weight.copy_(np.eye(1000, dtype=np.float32))
    assert np.argmax(probe(np.arange(4)).numpy(), axis=1).tolist() == [871, 807, 745, 819]


def test_hash_embedding_parameters_and_state_dict() -> None:
    layer = nn.HashEmbedding(1000, 16, 64, 3)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {"weight": (64, 16), "importance": (1000, 3)}
    assert list(nn.HashEmbedding(10, 4, 5, importance=False).state_dict()) == ["weight"]


@pytest.mark.parametrize("kwargs", [dict(num_buckets=0), dict(num_hashes=0), dict(seed=1.5), dict(seed="a"),
                                    dict(seed=True), dict(num_buckets=2.0)])
def test_hash_embedding_bad_arguments(kwargs) -> None:
    args = dict(num_embeddings=10, embedding_dim=4, num_buckets=5) | kwargs
    with pytest.raises(tfm_rs.InvalidArgumentError):
        nn.HashEmbedding(**args)


def test_hash_embedding_bad_ids() -> None:
    layer = nn.HashEmbedding(10, 4, 5)
    with pytest.raises(tfm_rs.IndexOutOfRangeError):
        layer(np.array([3, 10]))
    with pytest.raises(tfm_rs.IndexOutOfRangeError):
        layer(np.array([-1]))
    with pytest.raises(tfm_rs.DTypeError):
        layer(np.array([0.5]))


# ---------------------------------------------------------------------------------------- low rank

def test_low_rank_at_full_rank_equals_the_original() -> None:
    for out_f, in_f in ((3, 17), (17, 3), (8, 8)):
        dense = nn.Linear(in_f, out_f)
        low = nn.LowRankLinear.from_dense(dense, rank=min(in_f, out_f))
        x = randn((5, in_f), seed=7)
        assert_close(low(x), dense(x).numpy(), rtol=1e-5, atol=1e-5)
        assert_close(low.weight, dense.weight.numpy(), rtol=1e-5, atol=1e-5)


def test_truncation_error_is_the_eckart_young_bound() -> None:
    dense = nn.Linear(40, 24)
    w = dense.weight.numpy().astype(np.float64)
    s = np.linalg.svd(w, compute_uv=False)
    for rank in (1, 5, 23):
        low = nn.LowRankLinear.from_dense(dense, rank=rank)
        err = np.linalg.norm(low.weight.numpy().astype(np.float64) - w)
        assert abs(err - np.sqrt(np.sum(s[rank:] ** 2))) <= 1e-5 * np.linalg.norm(w)
        assert sum(p.numpy().size for p in low.parameters()) == rank * (40 + 24) + 24


def test_energy_picks_the_smallest_sufficient_rank() -> None:
    dense = nn.Linear(30, 20)
    s2 = np.linalg.svd(dense.weight.numpy().astype(np.float64), compute_uv=False) ** 2
    for energy in (0.5, 0.95, 1.0):
        rank = nn.LowRankLinear.from_dense(dense, energy=energy).rank
        assert s2[:rank].sum() >= energy * s2.sum() * (1 - 1e-9)
        assert rank == 1 or s2[:rank - 1].sum() < energy * s2.sum()


def test_low_rank_gradients() -> None:
    low = nn.LowRankLinear(5, 3, rank=2)
    u, v, b = low.weight_u.numpy(), low.weight_v.numpy(), low.bias.numpy()
    x = randn((4, 5), seed=8)
    y = low(x)
    g = randn((4, 3), seed=9)
    y.backward(g)
    want = numeric_grad(lambda u, v, b: x.astype(np.float64) @ v.T @ u.T + b, [u, v, b], g.astype(np.float64))
    for p, w in zip((low.weight_u, low.weight_v, low.bias), want):
        assert_close(p.grad, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank", [0, 4, 100, 2.5])
def test_bad_ranks(rank) -> None:
    with pytest.raises(tfm_rs.InvalidArgumentError, match="rank"):
        nn.LowRankLinear(5, 3, rank=rank)
    if not isinstance(rank, float):
        with pytest.raises(tfm_rs.InvalidArgumentError, match="rank"):
            nn.LowRankLinear.from_dense(nn.Linear(5, 3), rank=rank)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="energy"):
        nn.LowRankLinear.from_dense(nn.Linear(5, 3), energy=0.0)
