"""Property-based tests (hypothesis): invariances and equivariances the ops must have whatever
the input, checked on random shapes and values."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings, strategies as st

import tfm_rs
import tfm_rs.functional as F
from helpers import assert_close

PROPS = settings(max_examples=30, deadline=None, database=None)

small_dim = st.integers(min_value=1, max_value=9)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _arr(seed, shape, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@PROPS
@given(rows=small_dim, cols=small_dim, seed=seeds, scale=st.floats(0.1, 10.0),
       shift=st.floats(-50.0, 50.0, allow_nan=False), dim=st.sampled_from([0, 1, -1]))
def test_softmax_shift_invariance(rows, cols, seed, scale, shift, dim):
    x = _arr(seed, (rows, cols), scale)
    shifted = (x.astype(np.float64) + shift).astype(np.float32)
    a = F.softmax(x, dim).numpy()
    b = F.softmax(shifted, dim).numpy()
    # Rounding x + shift to float32 moves each logit by up to |shift|·2⁻²⁴.
    tol = 2e-6 + abs(shift) * 2e-7
    assert_close(b, a, rtol=4 * tol, atol=tol)
    assert_close(a.sum(dim), np.ones(a.sum(dim).shape), rtol=1e-5, atol=1e-6)
    assert np.all(a >= 0)


@PROPS
@given(rows=st.integers(1, 5), n=st.integers(2, 40), seed=seeds, a=st.floats(0.1, 20.0), b=st.floats(-10.0, 10.0),
       with_affine=st.booleans())
def test_layer_norm_invariant_to_scale_and_shift(rows, n, seed, a, b, with_affine):
    x = _arr(seed, (rows, n))
    min_std = float(x.astype(np.float64).std(-1).min())
    assume(min_std > 0.2)
    y = (a * x.astype(np.float64) + b).astype(np.float32)
    w = _arr(seed + 1, (n,)) if with_affine else None
    bias = _arr(seed + 2, (n,)) if with_affine else None
    eps = 1e-12  # negligible next to the variance, so the invariance is exact up to rounding
    ref = F.layer_norm(x, n, w, bias, eps=eps).numpy()
    got = F.layer_norm(y, n, w, bias, eps=eps).numpy()
    # Rounding a·x + b to float32 (and the kernel's float32 mean) costs ~(|b|/a)·2⁻²⁴/std in
    # the normalized values.
    tol = 3e-5 + 2e-6 * (abs(b) / a) / min_std
    wmax = float(np.abs(w).max()) if with_affine else 1.0
    assert_close(got, ref, rtol=tol, atol=tol * max(1.0, wmax))
    # And the normalized rows really are normalized.
    if not with_affine:
        assert_close(ref.mean(-1), np.zeros(rows), atol=1e-5)
        assert_close(ref.std(-1), np.ones(rows), rtol=1e-4)


@PROPS
@given(batch=st.integers(1, 2), heads=st.integers(1, 2), L=st.integers(1, 12), S=st.integers(1, 12),
       E=st.integers(1, 9), Ev=st.integers(1, 9), seed=seeds, data=st.data())
def test_attention_permutation_equivariance(batch, heads, L, S, E, Ev, seed, data):
    q = _arr(seed, (batch, heads, L, E))
    k = _arr(seed + 1, (batch, heads, S, E))
    v = _arr(seed + 2, (batch, heads, S, Ev))
    pq = np.array(data.draw(st.permutations(range(L))))
    pk = np.array(data.draw(st.permutations(range(S))))
    out = F.scaled_dot_product_attention(q, k, v).numpy()
    # Permuting the queries permutes the output rows.
    out_q = F.scaled_dot_product_attention(q[..., pq, :], k, v).numpy()
    assert_close(out_q, out[..., pq, :], rtol=1e-5, atol=1e-6)
    # Permuting keys and values together changes nothing.
    out_kv = F.scaled_dot_product_attention(q, k[..., pk, :], v[..., pk, :]).numpy()
    assert_close(out_kv, out, rtol=1e-5, atol=1e-6)


@PROPS
@given(L=st.integers(2, 40), E=st.integers(1, 17), Ev=st.integers(1, 17), seed=seeds, data=st.data(),
       junk=st.floats(-1e3, 1e3))
def test_causal_attention_ignores_the_future(L, E, Ev, seed, data, junk):
    q = _arr(seed, (2, 1, L, E))
    k = _arr(seed + 1, (2, 1, L, E))
    v = _arr(seed + 2, (2, 1, L, Ev))
    i = data.draw(st.integers(0, L - 2))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True).numpy()
    k2, v2 = k.copy(), v.copy()
    k2[..., i + 1:, :] = junk
    v2[..., i + 1:, :] = _arr(seed + 3, v2[..., i + 1:, :].shape, 100.0)
    out2 = F.scaled_dot_product_attention(q, k2, v2, is_causal=True).numpy()
    assert_close(out2[..., : i + 1, :], out[..., : i + 1, :], rtol=1e-6, atol=1e-6)
    # Sanity: the rows that may see the changed values do change.
    out3 = F.scaled_dot_product_attention(q, k, v2, is_causal=True).numpy()
    assert_close(out3[..., : i + 1, :], out[..., : i + 1, :], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out3[..., i + 1, :], out[..., i + 1, :], atol=1e-4), "row i+1 must see key i+1"


@PROPS
@given(n=st.integers(1, 8), c=st.integers(1, 12), seed=seeds, scale=st.floats(0.1, 30.0))
def test_cross_entropy_is_nonnegative_and_equals_nll(n, c, seed, scale):
    x = _arr(seed, (n, c), scale)
    t = np.random.default_rng(seed).integers(0, c, size=n)
    loss = F.cross_entropy(x, t, reduction="none").numpy()
    assert loss.shape == (n,)
    assert np.all(loss >= 0)
    nll = -F.log_softmax(x, -1).numpy()[np.arange(n), t]
    assert_close(loss, nll, rtol=1e-5, atol=1e-5)
    x64 = x.astype(np.float64)
    m = x64.max(-1, keepdims=True)
    ref = -(x64 - m - np.log(np.exp(x64 - m).sum(-1, keepdims=True)))[np.arange(n), t]
    assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert_close(F.cross_entropy(x, t).numpy(), ref.mean(), rtol=1e-5, atol=1e-5)
    smoothed = F.cross_entropy(x, t, reduction="none", label_smoothing=0.2).numpy()
    assert np.all(smoothed >= 0)


@PROPS
@given(m=st.integers(1, 20), k=st.integers(1, 20), n=st.integers(1, 20), p=st.integers(1, 8), seed=seeds,
       layout=st.sampled_from(["c", "fortran", "transposed_view"]))
def test_matmul_transpose_and_associativity(m, k, n, p, seed, layout):
    A, Bm, C = _arr(seed, (m, k)), _arr(seed + 1, (k, n)), _arr(seed + 2, (n, p))
    if layout == "fortran":
        A, Bm = np.asfortranarray(A), np.asfortranarray(Bm)
    elif layout == "transposed_view":
        A, Bm = np.ascontiguousarray(A.T).T, np.ascontiguousarray(Bm.T).T
    ta, tb, tc = tfm_rs.tensor(A), tfm_rs.tensor(Bm), tfm_rs.tensor(C)
    ab = ta @ tb
    ref = A.astype(np.float64) @ Bm.astype(np.float64)
    tol = 1e-5 * np.sqrt(k)
    assert_close(ab, ref, rtol=tol, atol=tol)
    # (A·B)ᵀ = Bᵀ·Aᵀ, with the transposes done by the tensor library and by NumPy.
    assert_close(ab.T, (tb.T @ ta.T).numpy(), rtol=tol, atol=tol)
    assert_close(F.matmul(Bm.T, A.T), ref.T, rtol=tol, atol=tol)
    assert_close(tb.transpose(0, 1) @ ta.transpose(0, 1), ref.T, rtol=tol, atol=tol)
    # (A·B)·C = A·(B·C) up to rounding.
    left, right = (ab @ tc).numpy(), (ta @ (tb @ tc)).numpy()
    ref3 = ref @ C.astype(np.float64)
    scale = np.abs(A).astype(np.float64) @ np.abs(Bm) @ np.abs(C)
    assert np.all(np.abs(left - ref3) <= 1e-5 * (scale + 1)), "(A@B)@C"
    assert np.all(np.abs(right - ref3) <= 1e-5 * (scale + 1)), "A@(B@C)"
