"""nn.Conv1d / functional.conv1d against a direct float64 convolution (stride, padding,
dilation, groups, causal), finite differences, and bad input. PyTorch parity is in
test_conv1d_torch.py."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from tfm_rs import nn
from helpers import FWD_ATOL, FWD_RTOL, GRAD_ATOL, GRAD_RTOL, assert_close, leaf, numeric_grad, randn


def direct(x, w, b, stride=1, pad=(0, 0), dilation=1, groups=1):
    """The convolution by its definition, in float64."""
    n, c_in, length = x.shape
    c_out, cg, k = w.shape
    og = c_out // groups
    xp = np.concatenate([np.zeros((n, c_in, pad[0])), x, np.zeros((n, c_in, pad[1]))], axis=2)
    l_out = (length + pad[0] + pad[1] - dilation * (k - 1) - 1) // stride + 1
    y = np.zeros((n, c_out, l_out))
    for oc in range(c_out):
        g = oc // og
        for o in range(l_out):
            window = xp[:, g * cg:(g + 1) * cg, o * stride: o * stride + dilation * (k - 1) + 1: dilation]
            y[:, oc, o] = (window * w[oc]).sum(axis=(1, 2)) + (b[oc] if b is not None else 0.0)
    return y


CASES = [  # (n, c_in, length, c_out, k, stride, padding, dilation, groups)
    (1, 1, 1, 1, 1, 1, 0, 1, 1),
    (3, 3, 17, 5, 3, 1, 1, 1, 1),
    (2, 4, 127, 6, 5, 2, 3, 2, 2),
    (2, 6, 17, 3, 2, 3, 0, 1, 3),
]


@pytest.mark.parametrize("n,c_in,length,c_out,k,stride,padding,dilation,groups", CASES)
def test_module_matches_the_direct_convolution(n, c_in, length, c_out, k, stride, padding, dilation, groups):
    m = nn.Conv1d(c_in, c_out, k, stride, padding, dilation, groups)
    x = randn((n, c_in, length), seed=k)
    sd = m.state_dict()
    want = direct(x.astype(np.float64), sd["weight"], sd["bias"], stride, (padding, padding), dilation, groups)
    assert_close(m(x), want, FWD_RTOL, FWD_ATOL)
    assert_close(m(x[0]), want[0], FWD_RTOL, FWD_ATOL)


@pytest.mark.parametrize("k,dilation", [(1, 1), (3, 1), (3, 2)])
def test_causal_and_same_padding(k, dilation):
    causal = nn.Conv1d(2, 3, k, dilation=dilation, causal=True)
    x = randn((2, 2, 17), seed=1)
    y = causal(x).numpy()
    assert y.shape == (2, 3, 17)
    x2 = x.copy()
    x2[:, :, 9:] = 7.0  # the future changes nothing before it
    np.testing.assert_array_equal(causal(x2).numpy()[:, :, :9], y[:, :, :9])
    same = nn.Conv1d(2, 3, k, padding="same", dilation=dilation, bias=False)
    span = dilation * (k - 1)
    want = direct(x.astype(np.float64), same.state_dict()["weight"], None, pad=(span // 2, span - span // 2),
                  dilation=dilation)
    assert same(x).shape == (2, 3, 17)
    assert_close(same(x), want, FWD_RTOL, FWD_ATOL)


@pytest.mark.parametrize("stride,pad,dilation,groups", [(1, (0, 0), 1, 1), (2, (2, 1), 2, 2), (3, (0, 3), 1, 2)])
def test_backward_matches_finite_differences(stride, pad, dilation, groups):
    x, w, b = randn((2, 4, 9), 1), randn((6, 4 // groups, 3), 2), randn((6,), 3)
    up = None
    xt, wt, bt = leaf(x), leaf(w), leaf(b)
    y = F.conv1d(xt, wt, bt, stride, pad, dilation, groups)
    up = randn(y.shape, 4)
    (y * tfm_rs.tensor(up)).sum().backward()
    want = numeric_grad(lambda *a: direct(*a, stride, pad, dilation, groups), [x, w, b], up)
    for name, g, wnt in zip("xwb", [xt.grad, wt.grad, bt.grad], want):
        assert_close(g, wnt, GRAD_RTOL, GRAD_ATOL, f"d{name}")


def test_bad_input():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="groups"):
        nn.Conv1d(3, 4, 2, groups=2)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="kernel_size"):
        nn.Conv1d(3, 4, 0)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="padding_mode"):
        nn.Conv1d(3, 4, 2, padding_mode="reflect")
    with pytest.raises(tfm_rs.InvalidArgumentError, match="causal"):
        nn.Conv1d(3, 4, 2, padding=1, causal=True)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="stride 1"):
        nn.Conv1d(3, 4, 2, stride=2, padding="same")
    m = nn.Conv1d(3, 4, 5)
    with pytest.raises(tfm_rs.ShapeError, match="shorter"):
        m(randn((1, 3, 4)))
    with pytest.raises(tfm_rs.ShapeError):
        m(randn((1, 2, 9)))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="padding"):
        F.conv1d(randn((1, 3, 9)), randn((4, 3, 2)), padding=-1)
