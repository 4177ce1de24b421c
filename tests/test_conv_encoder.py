"""models.ConvEncoder (ConvS2S-style GLU + residual blocks): the GLU against NumPy, padding does
not change an encoding, the receptive field is exactly 1 + layers·(k − 1), gradients reach every
parameter, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
from tfm_rs.models.conv_encoder import ConvEncoder, glu
from helpers import assert_close, randn


def test_glu_matches_numpy():
    x = randn((2, 6, 3), seed=1)
    want = x[:, :3] / (1 + np.exp(-x[:, 3:].astype(np.float64)))
    assert_close(glu(tfm_rs.tensor(x), 1), want, 1e-6, 1e-6)


def encoder(**kw):
    tfm_rs.manual_seed(0)
    return ConvEncoder(20, embed_dim=8, channels=6, dropout=0.0, max_len=40, **kw).eval()


def test_padding_does_not_change_an_encoding():
    m = encoder(num_layers=3)
    ids = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    both = m(ids).numpy()
    alone = m(ids[1:, :3]).numpy()
    assert_close(both[1, :3], alone[0], 1e-6, 1e-6)
    assert not both[1, 3:].any()


@pytest.mark.parametrize("layers,k", [(1, 3), (2, 3), (3, 5)])
def test_receptive_field(layers, k):
    m = encoder(num_layers=layers, kernel_size=k)
    ids = np.arange(1, 31)[None] % 19 + 1
    base = m(ids).numpy()[0]
    changed = ids.copy()
    changed[0, 15] = 3 if ids[0, 15] != 3 else 4
    diff = np.abs(m(changed).numpy()[0] - base).max(axis=1)
    reach = layers * (k - 1) // 2
    assert m.receptive_field == 1 + 2 * reach
    assert not diff[: 15 - reach].any() and not diff[15 + reach + 1:].any(), "nothing outside the field"
    assert diff[15 - reach] > 0 and diff[15 + reach] > 0, "the field's edges see the change"


def test_gradients_reach_every_parameter_and_pooling():
    m = encoder(num_layers=2)
    m.train()
    pooled, keep = m.pooled(np.array([[3, 4, 5], [6, 7, 0]]))
    assert pooled.shape == (2, 8)
    pooled.sum().backward()
    assert all(p.grad is not None for name, p in m.named_parameters())


def test_bad_input():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="odd"):
        ConvEncoder(10, kernel_size=2)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="num_layers"):
        ConvEncoder(10, num_layers=0)
