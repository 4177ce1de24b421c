"""F.lsh_attention (Reformer) against float64 NumPy references.

The hash is random (rotations drawn from ``seed``), so the tests use what does not depend on
it, or read it off a run:

* oracle: with one or two chunks every query sees every key whatever the hash, so the result
  equals dense attention with shared QK (keys = normalised rows), the diagonal masked (float64);
* structure: with ``v = I`` the output rows are the attention weights; they equal the dense
  shared-QK softmax restricted to the keys a query saw, times how many rounds saw each (1 or
  2 with two rounds), there are at most ``n_hashes · (2 · bucket_size − 1)`` of them, and the
  causal variant puts no weight on later tokens;
* backward, hash fixed: central differences of the float64 reference built from those weights;
* reproducibility: same seed → identical output, whatever the thread count.

Forward ~1e-5, gradients ~1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from helpers import GRAD_ATOL, GRAD_RTOL, assert_close, leaf, numeric_grad, randn

NORM_EPS = 1e-6


def scores64(x):
    """x_i·k_j/√E with k_j = x_j/√(|x_j|² + ε), float64, (..., T, T)."""
    x = np.asarray(x, np.float64)
    k = x / np.sqrt((x * x).sum(-1, keepdims=True) + NORM_EPS)
    return x @ np.swapaxes(k, -1, -2) / np.sqrt(x.shape[-1])


def weighted_ref(x, v, counts):
    """Σ_j c_ij e^{s_ij} v_j / Σ_j c_ij e^{s_ij}; rows with no key output their own value."""
    s = scores64(x)
    w = np.where(counts > 0, counts * np.exp(s - s.max(-1, keepdims=True)), 0.0)
    den = w.sum(-1, keepdims=True)
    out = (w / np.where(den > 0, den, 1.0)) @ np.asarray(v, np.float64)
    alone = (counts.sum(-1) == 0)[..., None]
    return np.where(alone, np.asarray(v, np.float64), out)


def dense_counts(t, causal):
    """Every key but the query itself (and, causal, no later key): the one/two-chunk oracle."""
    c = 1.0 - np.eye(t)
    return np.tril(c) if causal else c


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t,bucket,e,ev", [(1, 1, 3, 2), (3, 3, 5, 7), (17, 17, 9, 5), (34, 17, 12, 3),
                                           (127, 127, 7, 13)])
def test_one_or_two_chunks_equal_dense_attention(causal, t, bucket, e, ev):
    x, v = randn((2, 3, t, e), 1), randn((2, 3, t, ev), 2)
    out = F.lsh_attention(x, v, n_hashes=3, bucket_size=bucket, causal=causal, seed=5)
    assert_close(out, weighted_ref(x, v, dense_counts(t, causal)), what=f"T={t} causal={causal}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t,bucket", [(3, 3), (17, 17), (34, 17)])
def test_padding_keys_are_hidden_from_every_query(causal, t, bucket):
    """Per-sample key padding (N, T) over heads (N, H, T, E): the one/two-chunk oracle with the
    padding columns removed; a sample with one real key leaves its real query with nothing to
    see (its own value), and the gradients reach no padding key through the scores."""
    x, v, do = randn((2, 3, t, 4), 21), randn((2, 3, t, 5), 22), randn((2, 3, t, 5), 23)
    lengths = np.array([t - t // 3, 1])
    pad = np.arange(t)[None, :] >= lengths[:, None]
    counts = dense_counts(t, causal) * ~pad[:, None, None, :]
    tx, tv = leaf(x), leaf(v)
    out = F.lsh_attention(tx, tv, n_hashes=2, bucket_size=bucket, causal=causal, seed=4,
                          key_padding_mask=pad[:, None, :])
    assert_close(out, weighted_ref(x, v, counts), what=f"T={t} causal={causal}")
    out.backward(do)
    fd = numeric_grad(lambda x, v: weighted_ref(x, v, counts), [x, v], do.astype(np.float64))
    for got, want, name in zip((tx.grad, tv.grad), fd, ("dqk", "dv")):
        assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=name)


def test_padding_mask_shapes_and_types():
    x = randn((2, 3, 8, 4))
    with pytest.raises(tfm_rs.ShapeError, match="does not broadcast"):
        F.lsh_attention(x, x, bucket_size=4, key_padding_mask=np.zeros((2, 7), bool))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="boolean"):
        F.lsh_attention(x, x, bucket_size=4, key_padding_mask=np.zeros((2, 1, 8)))


def weights_of(x, n_hashes, bucket, causal, seed):
    """The attention weights the kernel used: its output for v = I (one head)."""
    t = x.shape[-2]
    return F.lsh_attention(x, np.eye(t, dtype=np.float32), n_hashes, bucket, causal, seed).numpy()


def counts_of(x, p):
    """How many rounds saw each key, read off the weights p (two rounds: 0, 1 or 2)."""
    c = p * np.exp(-(scores64(x) - scores64(x).max(-1, keepdims=True)))
    nz = np.where(p > 0, c, np.inf).min(-1, keepdims=True)
    return np.round(np.where(p > 0, c / nz, 0.0))


@pytest.mark.parametrize("causal", [False, True])
def test_weights_are_dense_softmax_restricted_to_the_buckets(causal):
    t, bucket, n_hashes = 64, 8, 2
    x = randn((t, 6), 3)
    p = weights_of(x, n_hashes, bucket, causal, seed=1)
    t_idx = np.arange(t)
    alone = np.isclose(p[t_idx, t_idx], 1.0)
    # A token attends to itself only when it sees nothing else (causal: token 0 at least).
    assert alone[0] == causal
    np.testing.assert_array_equal(p[t_idx, t_idx][~alone], 0.0)
    support = (p > 0) & ~np.eye(t, dtype=bool)
    assert support.sum(-1).max() <= n_hashes * (2 * bucket - 1)
    # Sparse: far fewer keys than dense.
    assert support.sum() < 0.6 * t * t
    if causal:
        assert not np.triu(p, 1).any(), "causal LSH attention looked ahead"
    counts = counts_of(x, np.where(np.eye(t, dtype=bool), 0.0, p))
    assert set(np.unique(counts)) <= {0.0, 1.0, 2.0}
    assert_close(np.where(alone[:, None], np.eye(t), p), weighted_ref(x, np.eye(t), counts))


def test_antipodal_tokens_share_no_chunk():
    # Two groups pointing in opposite directions always hash to different buckets; with four
    # chunks each group fills two, so a token sees c−1 of its own group in its chunk, and c
    # tokens of the previous chunk (of either group).
    t, bucket = 32, 8
    u = randn((5,), 4)
    x = np.where((np.arange(t) % 2 == 0)[:, None], u, -u).astype(np.float32)
    p = weights_of(x, 1, bucket, False, seed=2)
    same = (np.arange(t)[:, None] % 2) == (np.arange(t)[None, :] % 2)
    seen = p > 0
    assert (seen & same).sum(-1).min() >= bucket - 1
    assert (seen & ~same).sum(-1).max() <= bucket


def test_seeded_runs_are_reproducible_and_thread_independent():
    x, v = randn((2, 2, 128, 8), 5), randn((2, 2, 128, 8), 6)
    n = tfm_rs.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            tfm_rs.set_num_threads(threads)
            outs.append(F.lsh_attention(x, v, 2, 16, seed=7).numpy())
    finally:
        tfm_rs.set_num_threads(n)
    np.testing.assert_array_equal(outs[0], outs[1])
    other = F.lsh_attention(x, v, 2, 16, seed=8).numpy()
    assert not np.array_equal(outs[0], other)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t,bucket,e,ev", [(3, 3, 3, 2), (12, 3, 5, 3), (16, 4, 3, 5)])
def test_backward_matches_finite_differences_with_the_hash_fixed(causal, t, bucket, e, ev):
    x, v, do = randn((t, e), 11), randn((t, ev), 12), randn((t, ev), 13)
    p = weights_of(x, 2, bucket, causal, seed=3)
    alone = np.isclose(np.diag(p), 1.0)
    counts = counts_of(x, np.where(np.eye(t, dtype=bool), 0.0, p))
    counts[alone] = 0.0
    tx, tv = leaf(x), leaf(v)
    out = F.lsh_attention(tx, tv, 2, bucket, causal, 3)
    assert_close(out, weighted_ref(x, v, counts))
    out.backward(do)
    fd = numeric_grad(lambda x, v: weighted_ref(x, v, counts), [x, v], do.astype(np.float64))
    for got, want, name in zip((tx.grad, tv.grad), fd, ("dqk", "dv")):
        assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=name)


@pytest.mark.parametrize("shapes,kw,err", [
    (((2, 16, 4), (2, 15, 4)), {}, tfm_rs.ShapeError),                        # T differs
    (((2, 16, 4), (3, 16, 4)), {}, tfm_rs.ShapeError),                        # leading dims differ
    (((16,), (16,)), {}, tfm_rs.ShapeError),                                  # no token axis
    (((2, 17, 4), (2, 17, 4)), {"bucket_size": 4}, tfm_rs.ShapeError),        # does not divide
    (((2, 12, 4), (2, 12, 4)), {"bucket_size": 4}, tfm_rs.InvalidArgumentError),  # 3 buckets: odd
    (((2, 16, 4), (2, 16, 4)), {"bucket_size": 0}, tfm_rs.InvalidArgumentError),
    (((2, 16, 4), (2, 16, 4)), {"bucket_size": 4, "n_hashes": 0}, tfm_rs.InvalidArgumentError),
])
def test_bad_input(shapes, kw, err):
    x, v = (randn(s, i) for i, s in enumerate(shapes))
    with pytest.raises(err):
        F.lsh_attention(x, v, **kw)


def test_negative_sizes_are_errors_not_panics():
    x = randn((1, 8, 4))
    with pytest.raises((tfm_rs.TfmError, OverflowError)):
        F.lsh_attention(x, x, bucket_size=-1)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_qk_is_an_error(bad):
    # A NaN key has no bucket; read as "sees nothing" it would silently output its own value.
    x, v = randn((1, 8, 4), 1), randn((1, 8, 4), 2)
    x[0, 3, 1] = bad
    with pytest.raises(tfm_rs.NonFiniteError, match="qk"):
        F.lsh_attention(x, v, 1, 4, seed=0)
