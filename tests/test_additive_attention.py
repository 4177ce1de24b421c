"""nn.AdditiveAttention (Bahdanau scores ``vᵀ·tanh(W q + U k)``) against a naive float64
(b, i, j) loop, padded keys, finite differences, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
from tfm_rs import nn
from helpers import FWD_ATOL, FWD_RTOL, GRAD_ATOL, GRAD_RTOL, assert_close, leaf, numeric_grad, randn


def reference(q, k, val, w, u, u_b, v, pad=None):
    """Context and weights by the (b, i, j) loop in float64."""
    batch, tq, _ = q.shape
    tk = k.shape[1]
    scores = np.zeros((batch, tq, tk))
    for b in range(batch):
        for i in range(tq):
            for j in range(tk):
                scores[b, i, j] = v @ np.tanh(w @ q[b, i] + u @ k[b, j] + u_b)
    if pad is not None:
        scores = np.where(pad[:, None, :], -np.inf, scores)
    m = scores.max(axis=-1, keepdims=True)
    e = np.exp(scores - np.where(np.isfinite(m), m, 0))
    s = e.sum(axis=-1, keepdims=True)
    weights = np.divide(e, s, out=np.zeros_like(e), where=s > 0)
    return weights @ val, weights


def params(m):
    sd = m.state_dict()
    return [np.asarray(sd[k], np.float64) for k in ("query_proj.weight", "key_proj.weight", "key_proj.bias", "v")]


@pytest.mark.parametrize("batch,tq,tk,dq,dk,hidden", [(1, 1, 1, 1, 1, 1), (2, 3, 17, 5, 4, 17), (3, 17, 3, 3, 2, 127)])
def test_forward_matches_the_naive_loop(batch, tq, tk, dq, dk, hidden):
    m = nn.AdditiveAttention(dq, dk, hidden)
    q, k, val = randn((batch, tq, dq), 1), randn((batch, tk, dk), 2), randn((batch, tk, 3), 3)
    pad = np.zeros((batch, tk), bool)
    pad[0, tk // 2:] = tk > 1
    ctx, w = m(q, k, val, key_padding_mask=pad)
    want_ctx, want_w = reference(q.astype(np.float64), k, val, *params(m), pad)
    assert_close(w, want_w, FWD_RTOL, FWD_ATOL, "weights")
    assert_close(ctx, want_ctx, FWD_RTOL, FWD_ATOL, "context")
    assert not w.numpy()[pad[:, None, :].repeat(tq, 1)].any(), "padded keys get weight exactly 0"


def test_single_query_fully_padded_rows_and_default_value():
    m = nn.AdditiveAttention(4, 4, 8)
    q, k = randn((2, 4), 1), randn((2, 5, 4), 2)
    pad = np.zeros((2, 5), bool)
    pad[1] = True
    ctx, w = m(q, k, key_padding_mask=pad)
    assert ctx.shape == (2, 4) and w.shape == (2, 5)
    want_ctx, want_w = reference(q[:, None].astype(np.float64), k, k, *params(m), pad)
    assert_close(ctx, want_ctx[:, 0], FWD_RTOL, FWD_ATOL)
    assert not w.numpy()[1].any() and not ctx.numpy()[1].any(), "a sample with no key gets zeros"


@pytest.mark.parametrize("tq,tk,hidden", [(1, 1, 1), (3, 3, 3), (2, 17, 3)])
def test_backward_matches_finite_differences(tq, tk, hidden):
    m = nn.AdditiveAttention(2, 3, hidden)
    q, k, val = randn((2, tq, 2), 4), randn((2, tk, 3), 5), randn((2, tk, 2), 6)
    pad = np.zeros((2, tk), bool)
    pad[1, -1] = tk > 1
    up_c, up_w = randn((2, tq, 2), 7), randn((2, tq, tk), 8)
    qt, kt, vt = leaf(q), leaf(k), leaf(val)
    ctx, w = m(qt, kt, vt, key_padding_mask=pad)
    ((ctx * tfm_rs.tensor(up_c)).sum() + (w * tfm_rs.tensor(up_w)).sum()).backward()
    got = [qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy(), m.query_proj.weight.grad.numpy(),
           m.key_proj.weight.grad.numpy(), m.key_proj.bias.grad.numpy(), m.v.grad.numpy()]

    def f(*a):
        c, ww = reference(*a, pad)
        return np.concatenate([(c * up_c).ravel(), (ww * up_w).ravel()])

    want = numeric_grad(f, [q, k, val, *params(m)], np.ones(1))
    for name, g, wnt in zip(["q", "k", "value", "W", "U", "U_b", "v"], got, want):
        assert_close(g, wnt, GRAD_RTOL, GRAD_ATOL, f"d{name}")


def test_bad_input():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="hidden_dim"):
        nn.AdditiveAttention(3, 3, 0)
    m = nn.AdditiveAttention(3, 4, 5)
    with pytest.raises(tfm_rs.ShapeError):
        m(randn((2, 1, 3)), randn((2, 6, 3)))
    with pytest.raises(tfm_rs.ShapeError):
        m(randn((2, 1, 3)), randn((3, 6, 4)))
    with pytest.raises(tfm_rs.ShapeError, match="key_padding_mask"):
        m(randn((2, 1, 3)), randn((2, 6, 4)), key_padding_mask=np.zeros((2, 5), bool))
    with pytest.raises(tfm_rs.ShapeError):
        tfm_rs._core.additive_attention_scores(randn((1, 2, 3)), randn((1, 2, 3)), randn((4,)))
