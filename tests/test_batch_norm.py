"""BatchNorm1d and MaskedBatchNorm1d: float64 NumPy references, finite differences, PyTorch's
BatchNorm1d in float64 from the same state_dict over several steps, batch-composition
dependence, eval mode, the padding-aware form against plain batch norm over the real
positions, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from tfm_rs import nn
from helpers import AWKWARD, assert_close, check_op, randn

EPS = 1e-5


def ref_bn(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 training-mode batch norm of (N, C) or (N, C, L) over every axis but 1."""
    axes = (0,) if x.ndim == 2 else (0, 2)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1)
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * w.reshape(shape) + b.reshape(shape)


@pytest.mark.parametrize("n", [3, 17])
@pytest.mark.parametrize("c", AWKWARD)
@pytest.mark.parametrize("length", [None, 1, 3])
def test_training_forward_and_gradients(n: int, c: int, length) -> None:
    shape = (n, c) if length is None else (n, c, length)
    x, w, b = randn(shape, seed=n + c), randn((c,), seed=1) + 1.5, randn((c,), seed=2)
    check_op(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), ref_bn, [x, w, b], seed=3)


def test_eval_uses_running_statistics_and_allows_a_batch_of_one() -> None:
    c = 17
    x, w, b = randn((1, c, 3), seed=4), randn((c,), seed=5), randn((c,), seed=6)
    rm, rv = randn((c,), seed=7), np.abs(randn((c,), seed=8)) + 0.5

    def ref(x, w, b):
        return (x - rm[None, :, None]) / np.sqrt(rv[None, :, None] + EPS) * w[None, :, None] + b[None, :, None]

    def run(x, w, b):
        return F.batch_norm(x, tfm_rs.tensor(rm), tfm_rs.tensor(rv), w, b, training=False)

    check_op(run, ref, [x, w, b], seed=9)


def test_batch_composition_changes_training_outputs_not_eval_outputs() -> None:
    bn = nn.BatchNorm1d(5)
    a = randn((4, 5), seed=10)
    other = np.concatenate([a[:2], randn((2, 5), seed=11, scale=3.0)])
    assert not np.allclose(bn(a).numpy()[:2], bn(other).numpy()[:2], atol=1e-3)
    bn.eval()
    assert np.array_equal(bn(a).numpy()[:2], bn(other).numpy()[:2])
    assert np.array_equal(bn(a[:1]).numpy(), bn(a).numpy()[:1])


def test_running_statistics_momentum_and_cumulative_average() -> None:
    c = 3
    batches = [randn((6, c, 2), seed=20 + i) * (i + 1) + i for i in range(4)]
    for momentum in (0.1, None):
        bn = nn.BatchNorm1d(c, momentum=momentum)
        mean, var = np.zeros(c), np.ones(c)
        for i, x in enumerate(batches, 1):
            bn(x)
            bm, bv = x.astype(np.float64).mean(axis=(0, 2)), x.astype(np.float64).var(axis=(0, 2), ddof=1)
            m = 1.0 / i if momentum is None else momentum
            mean, var = (1 - m) * mean + m * bm, (1 - m) * var + m * bv
        assert_close(bn.running_mean, mean, what="running_mean")
        assert_close(bn.running_var, var, what="running_var")
        assert float(bn.num_batches_tracked.numpy()) == len(batches)
    # momentum None is the plain mean of the batch statistics.
    assert_close(bn.running_mean, np.mean([x.astype(np.float64).mean(axis=(0, 2)) for x in batches], axis=0))


def test_state_dict_keys_and_options() -> None:
    assert list(nn.BatchNorm1d(4).state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                                     "num_batches_tracked"]
    assert list(nn.BatchNorm1d(4, affine=False).state_dict()) == ["running_mean", "running_var",
                                                                   "num_batches_tracked"]
    bn = nn.BatchNorm1d(4, track_running_stats=False)
    assert list(bn.state_dict()) == ["weight", "bias"]
    x = randn((5, 4), seed=30)
    bn.eval()  # no running statistics: batch statistics in eval mode too, as PyTorch
    assert_close(bn(x), ref_bn(x.astype(np.float64), np.ones(4), np.zeros(4)))


def masked_ref(x: np.ndarray, pad: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    keep = x[~pad]
    mean, var = keep.mean(axis=0), keep.var(axis=0)
    return (x - mean) / np.sqrt(var + EPS) * w + b


@pytest.mark.parametrize("c", AWKWARD)
def test_masked_forward_and_gradients(c: int) -> None:
    lengths = np.array([5, 2, 7])
    pad = np.arange(7)[None, :] >= lengths[:, None]
    x, w, b = randn((3, 7, c), seed=c), randn((c,), seed=40) + 1.5, randn((c,), seed=41)
    check_op(lambda x, w, b: F.masked_batch_norm(x, pad, None, None, w, b, training=True),
             lambda x, w, b: masked_ref(x, pad, w, b), [x, w, b], seed=42)


def test_masked_equals_plain_batch_norm_over_real_positions() -> None:
    c, lengths = 17, np.array([4, 1, 6, 3])
    x = randn((4, 6, c), seed=50)
    pad = np.arange(6)[None, :] >= lengths[:, None]
    x[pad] = 1e3  # padding values must not matter
    masked, plain = nn.MaskedBatchNorm1d(c), nn.BatchNorm1d(c)
    plain.load_state_dict(masked.state_dict())
    xt = tfm_rs.tensor(x, requires_grad=True)
    real = tfm_rs.tensor(x[~pad], requires_grad=True)
    y_masked, y_plain = masked(xt, lengths=lengths), plain(real)
    assert_close(y_masked.numpy()[~pad], y_plain.numpy())
    g = randn((int((~pad).sum()), c), seed=51)
    g_full = np.zeros((4, 6, c), np.float32)
    g_full[~pad] = g
    y_masked.backward(g_full)
    y_plain.backward(g)
    assert_close(xt.grad.numpy()[~pad], real.grad.numpy(), rtol=1e-4, atol=1e-5)
    assert_close(masked.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var"):
        assert_close(getattr(masked, name), getattr(plain, name))
    # Without a mask it is BatchNorm1d over (N, C, T).
    full = nn.MaskedBatchNorm1d(c)
    assert_close(full(x).numpy().transpose(0, 2, 1), nn.BatchNorm1d(c)(x.transpose(0, 2, 1)), rtol=1e-5,
                 atol=1e-4)


@pytest.mark.parametrize("make,shape,msg", [
    (lambda: nn.BatchNorm1d(3), (1, 3), "more than 1 value per channel"),
    (lambda: nn.BatchNorm1d(3), (1, 3, 1), "more than 1 value per channel"),
    (lambda: nn.BatchNorm1d(3), (4, 2), "expected"),
    (lambda: nn.BatchNorm1d(3), (4, 3, 2, 2), "expected"),
    (lambda: nn.MaskedBatchNorm1d(3), (4, 3), "expected"),
])
def test_bad_input(make, shape, msg) -> None:
    with pytest.raises((tfm_rs.InvalidArgumentError, tfm_rs.ShapeError), match=msg):
        make()(np.zeros(shape, np.float32))


def test_bad_arguments_and_masks() -> None:
    for kwargs in (dict(num_features=0), dict(num_features=2.5), dict(num_features=3, momentum=2.0),
                   dict(num_features=3, eps=-1.0)):
        with pytest.raises(tfm_rs.InvalidArgumentError):
            nn.BatchNorm1d(**kwargs)
    bn, x = nn.MaskedBatchNorm1d(3), np.zeros((2, 4, 3), np.float32)
    with pytest.raises(tfm_rs.ShapeError):
        bn(x, padding_mask=np.zeros((2, 3), bool))
    with pytest.raises(tfm_rs.InvalidArgumentError):
        bn(x, padding_mask=np.zeros((2, 4), np.int64))
    with pytest.raises(tfm_rs.InvalidArgumentError):
        bn(x, lengths=np.array([5, 1]))
    # One real position in all: not enough for batch statistics.
    with pytest.raises(tfm_rs.InvalidArgumentError, match="more than 1 value"):
        bn(x, lengths=np.array([1, 0]))
    with pytest.raises(tfm_rs.InvalidArgumentError):
        F.batch_norm(np.zeros((4, 3), np.float32), tfm_rs.tensor(np.zeros(3, np.float32)), None)
