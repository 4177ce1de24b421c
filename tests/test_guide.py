"""The claims docs/guide.md makes about the Transformer, checked numerically on tfm_rs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from tfm_rs.nn.positional import sinusoidal_table


def test_unscaled_dot_products_grow_with_d_k_and_saturate_the_softmax():
    """q·k of unit-variance vectors has variance d_k; dividing by √d_k brings it back to 1.
    Without it, a 512-wide head's softmax is almost one-hot (tiny gradients)."""
    rng = np.random.default_rng(0)
    for d_k in (16, 512):
        q = rng.standard_normal((1, 1, 64, d_k)).astype(np.float32)
        k = rng.standard_normal((1, 1, 64, d_k)).astype(np.float32)
        scores = (q @ k.transpose(0, 1, 3, 2))[0, 0]
        assert abs(scores.var() / d_k - 1.0) < 0.25
        assert abs((scores / math.sqrt(d_k)).var() - 1.0) < 0.25
    v = np.eye(64, dtype=np.float32)[None, None]  # the output rows are the attention weights
    scaled = F.scaled_dot_product_attention(q, k, v).numpy()[0, 0]
    unscaled = F.scaled_dot_product_attention(q, k, v, scale=1.0).numpy()[0, 0]
    assert scaled.max(-1).mean() < 0.5  # spread over several keys
    assert unscaled.max(-1).mean() > 0.9  # nearly one-hot


def test_sinusoidal_offsets_are_rotations():
    """PE[pos + k] is a fixed linear map (a rotation per sin/cos pair) of PE[pos]: relative
    positions are easy for attention to express."""
    d, k = 16, 5
    pe = sinusoidal_table(64, d).astype(np.float64)
    freqs = np.exp(np.arange(0, d, 2) * (-math.log(10000.0) / d))
    rot = np.zeros((d, d))
    for i, w in enumerate(freqs):
        c, s = math.cos(k * w), math.sin(k * w)
        rot[2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = [[c, -s], [s, c]]  # (sin, cos) of pos → of pos + k
    np.testing.assert_allclose(pe[:-k] @ rot, pe[k:], atol=1e-5)
    assert np.all(np.abs(pe) <= 1.0)


def test_label_smoothing_is_a_mix_with_the_uniform_distribution():
    """loss = (1 − ε)·NLL(target) + ε·mean over classes of −log p."""
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 10)).astype(np.float32)
    target = rng.integers(0, 10, 6)
    eps = 0.1
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref = ((1 - eps) * -logp[np.arange(6), target] + eps * -logp.mean(-1)).mean()
    got = float(F.cross_entropy(tfm_rs.tensor(logits), target, label_smoothing=eps).item())
    assert got == pytest.approx(ref, rel=1e-5)


def test_post_ln_and_pre_ln_residual_paths():
    """Post-LN normalizes after the residual sum (every layer output has unit scale); pre-LN
    leaves the residual stream un-normalized, so it grows with depth unless a final norm is added."""
    from tfm_rs import nn

    tfm_rs.manual_seed(0)
    x = tfm_rs.tensor(np.random.default_rng(2).standard_normal((2, 8, 32)).astype(np.float32) * 3)
    post = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, norm_first=False).eval()
    pre = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, norm_first=True).eval()
    y_post, y_pre = post(x).numpy(), pre(x).numpy()
    np.testing.assert_allclose(y_post.std(-1), 1.0, atol=1e-2)  # LayerNorm last
    assert y_pre.std(-1).mean() > 2.0  # the input's scale carries through the residual


def test_written_out_attention_layer_norm_and_positions_equal_the_fused_ops():
    """The guide's from-scratch versions (torch-style tensor code: ``masked_fill``, ``softmax``,
    ``var``, ``sin``/``cos``) give what the fused kernels give, values and gradients."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 3, 17, 8)).astype(np.float32) for _ in range(3))
    mask = np.tril(np.ones((17, 17), dtype=np.float32))

    def attention(q, k, v, mask):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(mask == 0, float("-inf"))
        return scores.softmax(-1) @ v

    written = [tfm_rs.tensor(a, requires_grad=True) for a in (q, k, v)]
    fused = [tfm_rs.tensor(a, requires_grad=True) for a in (q, k, v)]
    up = rng.standard_normal((2, 3, 17, 8)).astype(np.float32)
    attention(*written, mask).backward(up)
    out = F.scaled_dot_product_attention(*fused, is_causal=True)
    out.backward(up)
    np.testing.assert_allclose(attention(*written, mask).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)
    for a, b in zip(written, fused):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-4, atol=1e-5)

    x = tfm_rs.tensor(rng.standard_normal((5, 16)).astype(np.float32) + 3)
    by_hand = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
    np.testing.assert_allclose(by_hand.numpy(), F.layer_norm(x, 16).numpy(), rtol=1e-5, atol=1e-5)

    d, length = 16, 50
    pos = tfm_rs.arange(length).unsqueeze(1)
    angle = pos * tfm_rs.exp(tfm_rs.arange(0, d, 2) * (-math.log(10000.0) / d))
    table = tfm_rs.stack([angle.sin(), angle.cos()], dim=-1).reshape(length, d)
    np.testing.assert_allclose(table.numpy(), sinusoidal_table(length, d), atol=2e-5)
