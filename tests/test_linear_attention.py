"""F.linear_attention (Katharopoulos et al.) against float64 NumPy references.

Non-causal: the explicit ``φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1)`` in float64. Causal: the step-by-step
recurrent form in float64 (a loop over tokens updating S and z), independent of the kernel's
prefix sums, and ``LinearAttentionState.step`` equal to the full forward. Forward ~1e-5,
gradients against central differences of the float64 reference ~1e-4, on awkward lengths and
head dims not multiples of 8. Bad input: a ``TfmError`` subclass each.
"""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from helpers import GRAD_ATOL, GRAD_RTOL, assert_close, leaf, numeric_grad, randn


def phi(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def linear_ref(q, k, v):
    """Non-causal: φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1), float64."""
    fq, fk = phi(np.asarray(q, np.float64)), phi(np.asarray(k, np.float64))
    num = fq @ (np.swapaxes(fk, -1, -2) @ np.asarray(v, np.float64))
    den = fq @ fk.sum(-2)[..., None]
    return num / den


def linear_causal_ref(q, k, v):
    """Causal, as a recurrence over tokens: S += φ(k_t) v_tᵀ, z += φ(k_t), out_t = φ(q_t)S / φ(q_t)z."""
    fq, fk, v = phi(np.asarray(q, np.float64)), phi(np.asarray(k, np.float64)), np.asarray(v, np.float64)
    s = np.zeros(fq.shape[:-2] + (fq.shape[-1], v.shape[-1]))
    z = np.zeros(fq.shape[:-2] + (fq.shape[-1],))
    out = []
    for t in range(fq.shape[-2]):
        s = s + fk[..., t, :, None] * v[..., t, None, :]
        z = z + fk[..., t, :]
        num = np.einsum("...e,...ef->...f", fq[..., t, :], s)
        out.append(num / np.einsum("...e,...e->...", fq[..., t, :], z)[..., None])
    return np.stack(out, -2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t,e,ev", [(1, 3, 5), (3, 7, 2), (17, 5, 9), (127, 12, 13)])
def test_forward_matches_float64(causal, t, e, ev):
    q, k, v = randn((2, 3, t, e), 1), randn((2, 3, t, e), 2), randn((2, 3, t, ev), 3)
    out = F.linear_attention(q, k, v, causal=causal)
    ref = (linear_causal_ref if causal else linear_ref)(q, k, v)
    assert_close(out, ref, what=f"causal={causal}")


def test_non_causal_different_query_and_key_lengths():
    q, k, v = randn((2, 17, 5), 1), randn((2, 3, 5), 2), randn((2, 3, 7), 3)
    assert_close(F.linear_attention(q, k, v), linear_ref(q, k, v))


def test_causal_last_row_equals_non_causal():
    q, k, v = randn((1, 17, 6), 4), randn((1, 17, 6), 5), randn((1, 17, 4), 6)
    full = F.linear_attention(q, k, v).numpy()
    causal = F.linear_attention(q, k, v, causal=True).numpy()
    assert_close(causal[:, -1], full[:, -1])


def test_recurrent_state_equals_full_forward():
    q, k, v = randn((2, 3, 17, 5), 7), randn((2, 3, 17, 5), 8), randn((2, 3, 17, 6), 9)
    full = F.linear_attention(q, k, v, causal=True).numpy()
    st = tfm_rs._core.LinearAttentionState()
    assert st.state() is None
    steps = np.stack([st.step(q[..., t, :], k[..., t, :], v[..., t, :]).numpy() for t in range(17)], -2)
    # The same reading code over the same sums: bit for bit.
    np.testing.assert_array_equal(steps, full)
    s, z = st.state()
    assert s.shape == (2, 3, 5, 6) and z.shape == (2, 3, 5)
    assert_close(z, phi(k.astype(np.float64)).sum(-2))
    with pytest.raises(tfm_rs.ShapeError):
        st.step(q[0, :, 0], k[0, :, 0], v[0, :, 0])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t,e,ev", [(1, 3, 2), (3, 5, 3), (17, 3, 5)])
def test_backward_matches_finite_differences(causal, t, e, ev):
    q, k, v = randn((2, t, e), 11), randn((2, t, e), 12), randn((2, t, ev), 13)
    do = randn((2, t, ev), 14)
    ref = linear_causal_ref if causal else linear_ref
    tq, tk, tv = leaf(q), leaf(k), leaf(v)
    F.linear_attention(tq, tk, tv, causal=causal).backward(do)
    fd = numeric_grad(ref, [q, k, v], do.astype(np.float64))
    for got, want, name in zip((tq.grad, tk.grad, tv.grad), fd, "qkv"):
        assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"d{name}")


def test_results_do_not_depend_on_thread_count():
    q, k, v = randn((4, 2, 127, 9), 1), randn((4, 2, 127, 9), 2), randn((4, 2, 127, 9), 3)
    n = tfm_rs.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            tfm_rs.set_num_threads(threads)
            outs.append(F.linear_attention(q, k, v, causal=True).numpy())
    finally:
        tfm_rs.set_num_threads(n)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_nan_propagates_without_panic():
    q = randn((1, 3, 4), 1)
    q[0, 1, 2] = np.nan
    out = F.linear_attention(q, randn((1, 3, 4), 2), randn((1, 3, 4), 3), causal=True).numpy()
    assert np.isfinite(out[0, 0]).all() and np.isnan(out[0, 1]).all()


@pytest.mark.parametrize("shapes,causal", [
    (((2, 3, 4), (2, 3, 5), (2, 3, 4)), False),   # E differs
    (((2, 3, 4), (2, 4, 4), (2, 3, 4)), False),   # key and value lengths differ
    (((2, 3, 4), (3, 3, 4), (3, 3, 4)), False),   # leading dims differ
    (((4,), (4,), (4,)), False),                  # no token axis
    (((2, 3, 4), (2, 5, 4), (2, 5, 4)), True),    # causal with L != S
])
def test_bad_shapes(shapes, causal):
    q, k, v = (randn(s, i) for i, s in enumerate(shapes))
    with pytest.raises(tfm_rs.ShapeError):
        F.linear_attention(q, k, v, causal=causal)


def test_unknown_feature_map():
    x = randn((1, 3, 4))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="feature_map"):
        F.linear_attention(x, x, x, feature_map="relu")
