"""tfm_rs.functional: softmax/log_softmax, layer_norm, add_layer_norm, gelu, relu, dropout,
embedding and cross_entropy against independent float64 NumPy references.

Forward values are compared with the reference (~1e-5 relative); gradients with central finite
differences of the reference (``check_op``) on small shapes and with analytic float64 gradients
on the larger ones, where finite differences would be slow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from helpers import (AWKWARD, FWD_RTOL, GRAD_ATOL, GRAD_RTOL, assert_close, check_op, leaf,
                     numeric_grad, randn)


# ----------------------------------------------------------------------------------------------
# float64 references
# ----------------------------------------------------------------------------------------------

def additive(mask) -> np.ndarray | None:
    """A mask as the additive float64 array the module docstring describes."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return np.where(mask, 0.0, -np.inf)
    return mask.astype(np.float64)


def softmax_ref(x, dim=-1, mask=None):
    s = np.asarray(x, np.float64)
    if mask is not None:
        s = s + additive(mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.max(s, axis=dim, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        e = np.exp(s - m)
        z = np.sum(e, axis=dim, keepdims=True)
        return np.where(z > 0, e / np.where(z > 0, z, 1.0), 0.0)


def log_softmax_ref(x, dim=-1, mask=None):
    s = np.asarray(x, np.float64)
    if mask is not None:
        s = s + additive(mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.max(s, axis=dim, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        return s - m - np.log(np.sum(np.exp(s - m), axis=dim, keepdims=True))


def softmax_grad_ref(y, g, dim=-1):
    return y * (g - np.sum(g * y, axis=dim, keepdims=True))


def layer_norm_ref(x, nd, w=None, b=None, eps=1e-5):
    axes = tuple(range(x.ndim - nd, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def layer_norm_grad_ref(x, nd, w, g, eps=1e-5):
    """Analytic gradients (dx, dw, db) of sum(layer_norm(x) * g)."""
    axes = tuple(range(x.ndim - nd, x.ndim))
    batch = tuple(range(x.ndim - nd))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu) * rstd
    dxhat = g * (w if w is not None else 1.0)
    dx = rstd * (dxhat - dxhat.mean(axis=axes, keepdims=True) - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    return dx, (g * xhat).sum(axis=batch), g.sum(axis=batch)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_ref(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh_ref(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def cross_entropy_ref(logits, target, reduction="mean", ignore_index=-100, label_smoothing=0.0):
    """PyTorch's cross_entropy (no class weights), except that a mean over an all-ignored batch is 0."""
    x = np.asarray(logits, np.float64)
    t = np.asarray(target)
    if x.ndim == 1:  # (C,) with a scalar target
        x, t = x[None], t.reshape(1)
        squeeze = True
    else:
        squeeze = False
    x = np.moveaxis(x, 1, -1)  # (N, d1, ..., C)
    C = x.shape[-1]
    lsm = log_softmax_ref(x, -1)
    valid = t != ignore_index
    safe_t = np.where(valid, t, 0)
    nll = -np.take_along_axis(lsm, safe_t[..., None], axis=-1)[..., 0]
    smooth = -lsm.sum(-1) / C
    loss = np.where(valid, (1.0 - label_smoothing) * nll + label_smoothing * smooth, 0.0)
    if reduction == "none":
        return loss[0] if squeeze else loss
    if reduction == "sum":
        return np.sum(loss)
    count = valid.sum()
    return np.sum(loss) / count if count > 0 else np.float64(0.0)


def _grads_of(fn, inputs, upstream):
    leaves = [leaf(x) for x in inputs]
    out = fn(*leaves)
    out.backward(upstream)
    return out, [t.grad for t in leaves]


@pytest.fixture
def restore_threads():
    n = tfm_rs.get_num_threads()
    yield
    tfm_rs.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# softmax / log_softmax
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dim", [((5,), 0), ((3, 7), -1), ((3, 7), 0), ((2, 3, 4), 1), ((2, 3, 4), -1),
                                       ((4, 1, 3), 1), ((2, 3, 4), -3)])
def test_softmax_any_dim(shape, dim):
    x = randn(shape, seed=3, scale=2.0)
    check_op(lambda t: F.softmax(t, dim), lambda t: softmax_ref(t, dim), [x])
    check_op(lambda t: F.log_softmax(t, dim), lambda t: log_softmax_ref(t, dim), [x])


def test_softmax_default_dim_is_last():
    x = randn((3, 5), seed=4)
    assert_close(F.softmax(x), softmax_ref(x.astype(np.float64), -1))
    assert_close(F.log_softmax(x), log_softmax_ref(x.astype(np.float64), -1))


@pytest.mark.parametrize("n", AWKWARD)
def test_softmax_awkward_sizes(n):
    x = randn((n, n), seed=n, scale=3.0)
    if n < 20:
        check_op(lambda t: F.softmax(t, -1), lambda t: softmax_ref(t, -1), [x])
        check_op(lambda t: F.log_softmax(t, 0), lambda t: log_softmax_ref(t, 0), [x])
        return
    g = randn((n, n), seed=7)
    out, (dx,) = _grads_of(lambda t: F.softmax(t, -1), [x], g)
    y = softmax_ref(x.astype(np.float64), -1)
    assert_close(out, y)
    assert_close(dx, softmax_grad_ref(y, g.astype(np.float64)), rtol=GRAD_RTOL, atol=GRAD_ATOL)
    out, (dx,) = _grads_of(lambda t: F.log_softmax(t, -1), [x], g)
    assert_close(out, log_softmax_ref(x.astype(np.float64), -1))
    g64 = g.astype(np.float64)
    assert_close(dx, g64 - y * g64.sum(-1, keepdims=True), rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_softmax_forward_wide_rows():
    x = randn((4, 1000), seed=5, scale=4.0)
    out = F.softmax(x, -1)
    assert_close(out, softmax_ref(x.astype(np.float64)), rtol=FWD_RTOL, atol=1e-7)
    assert_close(out.numpy().sum(-1), np.ones(4), rtol=1e-5)
    assert_close(F.log_softmax(x, -1), log_softmax_ref(x.astype(np.float64)))
    y = F.softmax(randn((1000, 3), seed=6), 0)
    assert_close(y.numpy().sum(0), np.ones(3), rtol=1e-5)


@pytest.mark.parametrize("mask_shape", [(5,), (1, 5), (3, 1, 5), (3, 4, 5), (4, 1)])
def test_softmax_boolean_mask_broadcasts(mask_shape):
    x = randn((3, 4, 5), seed=8)
    rng = np.random.default_rng(11)
    mask = rng.random(mask_shape) < 0.7
    mask.reshape(-1)[0] = True  # at least one entry takes part
    check_op(lambda t: F.softmax(t, -1, mask=mask), lambda t: softmax_ref(t, -1, mask), [x])
    out = F.softmax(x, -1, mask=mask).numpy()
    assert np.all(out[np.broadcast_to(~mask, x.shape)] == 0.0), "masked entries must be exactly 0"


@pytest.mark.parametrize("mask_shape", [(5,), (4, 5), (2, 1, 5), (2, 4, 5)])
def test_softmax_float_mask_is_added(mask_shape):
    x = randn((2, 4, 5), seed=9)
    mask = randn(mask_shape, seed=10, scale=3.0)
    check_op(lambda t: F.softmax(t, -1, mask=mask), lambda t: softmax_ref(t, -1, mask), [x])
    # Float masks with -inf entries exclude them, as a False boolean entry does.
    mask_inf = mask.copy()
    mask_inf[..., 1] = -np.inf
    check_op(lambda t: F.softmax(t, -1, mask=mask_inf), lambda t: softmax_ref(t, -1, mask_inf), [x])


def test_softmax_mask_along_another_dim():
    x = randn((4, 3), seed=12)
    mask = np.array([[True, False, True], [True, True, True], [False, True, True], [True, True, False]])
    check_op(lambda t: F.softmax(t, 0, mask=mask), lambda t: softmax_ref(t, 0, mask), [x])


def test_softmax_fully_masked_rows_give_zeros_and_zero_grads():
    x = randn((4, 6), seed=13)
    mask = np.ones((4, 6), bool)
    mask[1] = False
    mask[3, :5] = False
    g = randn((4, 6), seed=14)
    out, (dx,) = _grads_of(lambda t: F.softmax(t, -1, mask=mask), [x], g)
    out, dx = out.numpy(), dx.numpy()
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    np.testing.assert_array_equal(out[1], np.zeros(6))
    np.testing.assert_array_equal(dx[1], np.zeros(6))
    assert_close(out[3], [0, 0, 0, 0, 0, 1])  # a single survivor takes all the weight
    assert_close(dx[3], np.zeros(6))
    y = softmax_ref(x.astype(np.float64), -1, mask)
    assert_close(out, y)
    assert_close(dx, softmax_grad_ref(y, g.astype(np.float64)), rtol=GRAD_RTOL, atol=GRAD_ATOL)
    # The same with a float mask of -inf.
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    out2, (dx2,) = _grads_of(lambda t: F.softmax(t, -1, mask=fmask), [x], g)
    np.testing.assert_array_equal(out2.numpy()[1], np.zeros(6))
    np.testing.assert_array_equal(dx2.numpy()[1], np.zeros(6))


def test_log_softmax_masked_entries_are_minus_inf_with_zero_grad():
    x = randn((3, 5), seed=15)
    mask = np.array([True, False, True, True, False])
    out = F.log_softmax(x, -1, mask=mask).numpy()
    ref = log_softmax_ref(x.astype(np.float64), -1, mask)
    assert np.all(np.isneginf(out[:, ~mask]))
    assert_close(out[:, mask], ref[:, mask])
    # Upstream gradient is zero on the −∞ entries (as a masked loss would give it).
    g = randn((3, 5), seed=16) * mask
    t = leaf(x)
    F.log_softmax(t, -1, mask=mask).backward(g)
    dx = t.grad.numpy()
    assert np.all(np.isfinite(dx))
    np.testing.assert_array_equal(dx[:, ~mask], 0.0)
    finite_ref = lambda a: np.where(np.isfinite(log_softmax_ref(a, -1, mask)), log_softmax_ref(a, -1, mask), 0.0)  # noqa: E731
    (expected,) = numeric_grad(finite_ref, [x], g.astype(np.float64))
    assert_close(dx, expected, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_log_softmax_fully_masked_row_is_never_nan():
    x = randn((2, 4), seed=17)
    mask = np.array([[True, True, False, True], [False, False, False, False]])
    t = leaf(x)
    out = F.log_softmax(t, -1, mask=mask)
    o = out.numpy()
    assert not np.any(np.isnan(o)), o
    assert np.all((o[1] == 0) | np.isneginf(o[1])), o[1]
    out.backward(np.where(mask, 1.0, 0.0).astype(np.float32))
    assert np.all(np.isfinite(t.grad.numpy()))
    np.testing.assert_array_equal(t.grad.numpy()[1], 0.0)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_softmax_huge_logits_stay_finite(scale):
    x = randn((3, 17), seed=18, scale=scale)
    x[0, 0] = scale  # ±1e4 exactly
    g = randn((3, 17), seed=19)
    out, (dx,) = _grads_of(lambda t: F.softmax(t, -1), [x], g)
    y = softmax_ref(x.astype(np.float64))
    assert np.all(np.isfinite(out.numpy())) and np.all(np.isfinite(dx.numpy()))
    assert_close(out, y)
    assert_close(dx, softmax_grad_ref(y, g.astype(np.float64)), rtol=GRAD_RTOL, atol=GRAD_ATOL)
    ls = F.log_softmax(x, -1).numpy()
    assert np.all(np.isfinite(ls))
    assert_close(ls, log_softmax_ref(x.astype(np.float64)), rtol=FWD_RTOL, atol=1e-2)  # values ~1e4


def test_softmax_shift_invariance():
    x = randn((5, 9), seed=20)
    base = F.softmax(x, -1).numpy()
    for c in (-300.0, 7.5, 1000.0):
        shifted = (x.astype(np.float64) + c).astype(np.float32)
        assert_close(F.softmax(shifted, -1), base, rtol=1e-4, atol=1e-4 * max(1.0, abs(c) / 100))
    assert_close(F.softmax(x + np.float32(8.0), -1), base, rtol=1e-5, atol=1e-6)


def test_softmax_accepts_tensors_and_records_graph():
    t = leaf(randn((2, 3)))
    y = F.softmax(t, -1)
    assert isinstance(y, tfm_rs.Tensor) and y.requires_grad and y.shape == (2, 3)
    with tfm_rs.no_grad():
        assert not F.softmax(t, -1).requires_grad


# ----------------------------------------------------------------------------------------------
# layer_norm / add_layer_norm
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,normalized", [((4, 17), 17), ((4, 17), (17,)), ((2, 3, 5), (3, 5)),
                                              ((6,), 6), ((2, 1, 3), (1, 3))])
@pytest.mark.parametrize("affine", ["both", "none", "weight", "bias"])
def test_layer_norm(shape, normalized, affine):
    nd = 1 if isinstance(normalized, int) else len(normalized)
    wshape = shape[len(shape) - nd:]
    x = randn(shape, seed=21, scale=2.0) + np.float32(0.5)
    w = randn(wshape, seed=22) + np.float32(1.0)
    b = randn(wshape, seed=23)
    if affine == "both":
        check_op(lambda x, w, b: F.layer_norm(x, normalized, w, b), lambda x, w, b: layer_norm_ref(x, nd, w, b),
                 [x, w, b])
    elif affine == "none":
        check_op(lambda x: F.layer_norm(x, normalized), lambda x: layer_norm_ref(x, nd), [x])
    elif affine == "weight":
        check_op(lambda x, w: F.layer_norm(x, normalized, w), lambda x, w: layer_norm_ref(x, nd, w), [x, w])
    else:
        check_op(lambda x, b: F.layer_norm(x, normalized, None, b), lambda x, b: layer_norm_ref(x, nd, None, b), [x, b])


@pytest.mark.parametrize("eps", [1e-5, 1e-2, 1.0])
def test_layer_norm_eps(eps):
    x = randn((3, 8), seed=24, scale=0.1)  # small variance: eps matters
    w, b = randn((8,), seed=25), randn((8,), seed=26)
    check_op(lambda x, w, b: F.layer_norm(x, 8, w, b, eps=eps), lambda x, w, b: layer_norm_ref(x, 1, w, b, eps),
             [x, w, b])


@pytest.mark.parametrize("n", AWKWARD)
def test_layer_norm_awkward_sizes(n):
    x, w, b = randn((5, n), seed=n, scale=3.0), randn((n,), seed=2), randn((n,), seed=3)
    if n < 20:
        check_op(lambda x, w, b: F.layer_norm(x, n, w, b), lambda x, w, b: layer_norm_ref(x, 1, w, b), [x, w, b])
        return
    g = randn((5, n), seed=4)
    out, (dx, dw, db) = _grads_of(lambda x, w, b: F.layer_norm(x, n, w, b), [x, w, b], g)
    x64, w64, g64 = x.astype(np.float64), w.astype(np.float64), g.astype(np.float64)
    assert_close(out, layer_norm_ref(x64, 1, w64, b.astype(np.float64)))
    edx, edw, edb = layer_norm_grad_ref(x64, 1, w64, g64)
    assert_close(dx, edx, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert_close(dw, edw, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert_close(db, edb, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_layer_norm_size_one_normalizes_to_bias():
    x, w, b = randn((4, 1), seed=30), randn((1,), seed=31), randn((1,), seed=32)
    out = F.layer_norm(x, 1, w, b)
    assert_close(out, np.broadcast_to(b, (4, 1)))


def test_layer_norm_forward_wide_and_offset_rows():
    w, b = randn((1000,), seed=34), randn((1000,), seed=35)
    x = randn((3, 1000), seed=33)
    expected = layer_norm_ref(x.astype(np.float64), 1, w.astype(np.float64), b.astype(np.float64))
    assert_close(F.layer_norm(x, 1000, w, b), expected)
    # A mean 1000× the spread: a two-pass (or Welford) variance stays within float32 summation
    # error, where E[x²] − E[x]² in float32 would be off by percents.
    x = randn((3, 1000), seed=33) + np.float32(1000.0)
    expected = layer_norm_ref(x.astype(np.float64), 1, w.astype(np.float64), b.astype(np.float64))
    assert_close(F.layer_norm(x, 1000, w, b), expected, rtol=3e-3, atol=3e-3)


def test_layer_norm_two_dims_big_gradients():
    x, w, b = randn((3, 17, 33), seed=36), randn((17, 33), seed=37), randn((17, 33), seed=38)
    g = randn((3, 17, 33), seed=39)
    out, (dx, dw, db) = _grads_of(lambda x, w, b: F.layer_norm(x, (17, 33), w, b), [x, w, b], g)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert_close(out, layer_norm_ref(x64, 2, w64, b.astype(np.float64)))
    edx, edw, edb = layer_norm_grad_ref(x64, 2, w64, g.astype(np.float64))
    assert_close(dx, edx, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert_close(dw, edw, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert_close(db, edb, rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("shape,normalized", [((4, 7), 7), ((2, 3, 4), (3, 4))])
def test_add_layer_norm_equals_layer_norm_of_sum(shape, normalized):
    nd = 1 if isinstance(normalized, int) else len(normalized)
    x, r = randn(shape, seed=40), randn(shape, seed=41, scale=2.0)
    w, b = randn(shape[-nd:], seed=42), randn(shape[-nd:], seed=43)
    check_op(lambda x, r, w, b: F.add_layer_norm(x, r, normalized, w, b),
             lambda x, r, w, b: layer_norm_ref(x + r, nd, w, b), [x, r, w, b])
    check_op(lambda x, r: F.add_layer_norm(x, r, normalized, eps=0.1),
             lambda x, r: layer_norm_ref(x + r, nd, eps=0.1), [x, r])


def test_add_layer_norm_awkward_big():
    x, r = randn((17, 127), seed=44), randn((17, 127), seed=45)
    w, b = randn((127,), seed=46), randn((127,), seed=47)
    g = randn((17, 127), seed=48)
    out, (dx, dr, dw, db) = _grads_of(lambda x, r, w, b: F.add_layer_norm(x, r, 127, w, b), [x, r, w, b], g)
    s = x.astype(np.float64) + r.astype(np.float64)
    assert_close(out, layer_norm_ref(s, 1, w.astype(np.float64), b.astype(np.float64)))
    edx, edw, edb = layer_norm_grad_ref(s, 1, w.astype(np.float64), g.astype(np.float64))
    assert_close(dx, edx, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert_close(dr, edx, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert_close(dw, edw, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert_close(db, edb, rtol=GRAD_RTOL, atol=GRAD_ATOL)


# ----------------------------------------------------------------------------------------------
# gelu / relu
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("approximate,ref", [("none", gelu_ref), ("tanh", gelu_tanh_ref)])
@pytest.mark.parametrize("shape", [(1,), (3, 17), (2, 3, 5)])
def test_gelu(approximate, ref, shape):
    x = randn(shape, seed=50, scale=2.5)
    check_op(lambda t: F.gelu(t, approximate), ref, [x])


def test_gelu_default_is_exact_and_approximations_differ():
    x = np.linspace(-4, 4, 33).astype(np.float32)
    assert_close(F.gelu(x), gelu_ref(x.astype(np.float64)))
    diff = np.abs(F.gelu(x, "tanh").numpy() - F.gelu(x, "none").numpy())
    assert diff.max() > 1e-5, "the tanh approximation must not be the exact GELU"


@pytest.mark.parametrize("approximate,ref", [("none", gelu_ref), ("tanh", gelu_tanh_ref)])
def test_gelu_wide_and_extreme(approximate, ref):
    x = randn((1000,), seed=51, scale=4.0)
    x[:4] = [-30.0, 30.0, -9.0, 0.0]
    assert_close(F.gelu(x, approximate), ref(x.astype(np.float64)))
    t = leaf(x)
    F.gelu(t, approximate).sum().backward()
    assert np.all(np.isfinite(t.grad.numpy()))
    assert_close(t.grad.numpy()[:2], [0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("shape", [(1,), (3, 17), (2, 3, 5), (127,)])
def test_silu(shape):
    x = randn(shape, seed=53, scale=3.0)
    check_op(F.silu, lambda t: t / (1.0 + np.exp(-t)), [x], fd=shape != (127,))


def test_silu_extremes_and_module():
    x = np.array([-100.0, -30.0, 0.0, 30.0, 100.0], np.float32)
    assert_close(F.silu(x), x / (1.0 + np.exp(-x.astype(np.float64))), atol=1e-6)
    t = leaf(x)
    tfm_rs.nn.SiLU()(t).sum().backward()
    assert_close(t.grad.numpy(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("shape", [(1,), (3, 17), (127,)])
def test_relu(shape):
    x = randn(shape, seed=52)
    check_op(F.relu, lambda t: np.maximum(t, 0.0), [x], fd=shape != (127,))
    t = leaf(x)
    F.relu(t).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), (x > 0).astype(np.float32))


def test_relu_gradient_at_zero_is_zero_like_pytorch():
    t = leaf(np.array([-1.0, 0.0, 2.0], np.float32))
    y = F.relu(t)
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.0, 2.0])
    y.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0.0, 0.0, 1.0])


# ----------------------------------------------------------------------------------------------
# dropout
# ----------------------------------------------------------------------------------------------

def _nonzero(shape, seed):
    x = randn(shape, seed=seed)
    return np.where(x >= 0, x + 0.5, x - 0.5).astype(np.float32)  # no zeros: out/x reveals the mask


def test_dropout_p0_and_eval_are_identity():
    x = _nonzero((3, 17), 60)
    np.testing.assert_array_equal(F.dropout(x, 0.0).numpy(), x)
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=False).numpy(), x)
    np.testing.assert_array_equal(F.dropout(x, 1.0, training=False).numpy(), x)
    t = leaf(x)
    g = randn((3, 17), seed=61)
    F.dropout(t, 0.0).backward(g)
    np.testing.assert_array_equal(t.grad.numpy(), g)


def test_dropout_p1_gives_zeros_and_zero_grads():
    x = _nonzero((4, 33), 62)
    t = leaf(x)
    y = F.dropout(t, 1.0)
    np.testing.assert_array_equal(y.numpy(), np.zeros_like(x))
    y.backward(np.ones_like(x))
    g = t.grad.numpy()
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g, np.zeros_like(x))


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_dropout_keep_rate_and_scale(p):
    x = _nonzero((100_000,), 63)
    tfm_rs.manual_seed(1234)
    y = F.dropout(x, p).numpy()
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.01, f"kept fraction {kept.mean()} for p={p}"
    # Exactly 1/(1-p) up to the float32 rounding of the product (at most one unit in the last
    # place), as PyTorch does with its double-precision scale; a scale computed from p rounded
    # to float32 is off by several ulps for p = 0.9.
    expected = (x[kept].astype(np.float64) / (1 - p)).astype(np.float32)
    ulps = np.abs(y[kept].astype(np.float64) - expected) / np.spacing(np.abs(expected))
    assert ulps.max() <= 1.0, f"kept values are off by up to {ulps.max():.1f} ulp from x/(1-p) for p={p}"
    if p == 0.5:
        np.testing.assert_array_equal(y[kept], 2.0 * x[kept])


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_dropout_backward_uses_the_forward_mask(p):
    x = _nonzero((7, 129), 64)
    t = leaf(x)
    tfm_rs.manual_seed(5)
    y = F.dropout(t, p)
    g = randn((7, 129), seed=65)
    y.backward(g)
    yv = y.numpy()
    ratio = yv.astype(np.float64) / x  # 0 where dropped, 1/(1-p) where kept
    assert 0 < np.count_nonzero(ratio) < ratio.size
    assert_close(t.grad, g.astype(np.float64) * ratio, rtol=1e-6, atol=1e-7)
    # With upstream ones the gradient *is* out / x.
    t2 = leaf(x)
    tfm_rs.manual_seed(5)
    F.dropout(t2, p).backward(np.ones_like(x))
    assert_close(t2.grad, ratio, rtol=1e-6, atol=0)


def test_dropout_manual_seed_reproducible():
    x = _nonzero((64, 65), 66)
    tfm_rs.manual_seed(42)
    a = F.dropout(x, 0.4).numpy()
    b = F.dropout(x, 0.4).numpy()
    tfm_rs.manual_seed(42)
    c = F.dropout(x, 0.4).numpy()
    d = F.dropout(x, 0.4).numpy()
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, d)
    assert not np.array_equal(a != 0, b != 0), "two calls in a row must draw different masks"
    tfm_rs.manual_seed(43)
    assert not np.array_equal(F.dropout(x, 0.4).numpy() != 0, a != 0), "another seed must give another mask"


def test_dropout_mask_independent_of_thread_count(restore_threads):
    x = _nonzero((50_001,), 67)
    tfm_rs.set_num_threads(1)
    tfm_rs.manual_seed(99)
    one = F.dropout(x, 0.3).numpy()
    tfm_rs.set_num_threads(2)
    tfm_rs.manual_seed(99)
    two = F.dropout(x, 0.3).numpy()
    np.testing.assert_array_equal(one, two)


# ----------------------------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------------------------

def test_embedding_forward_and_scatter_add_gradient():
    w = randn((6, 4), seed=70)
    ids = np.array([[1, 3, 1], [0, 3, 3]])
    check_op(lambda w: F.embedding(ids, w), lambda w: w[ids], [w])
    t = leaf(w)
    g = randn((2, 3, 4), seed=71)
    F.embedding(ids, t).backward(g)
    expected = np.zeros((6, 4))
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 4).astype(np.float64))
    assert_close(t.grad, expected)
    np.testing.assert_array_equal(t.grad.numpy()[[2, 4, 5]], 0.0)  # unused rows


@pytest.mark.parametrize("ids", [[2, 0, 2], np.array([4], np.int32), np.array([[0, 1], [5, 5]], np.uint8),
                                 np.array(3), np.array([1, 2, 3], np.int16)])
def test_embedding_id_forms(ids):
    w = randn((6, 5), seed=72)
    out = F.embedding(ids, w)
    idx = np.asarray(ids)
    assert out.shape == idx.shape + (5,)
    np.testing.assert_array_equal(out.numpy(), w[idx])


@pytest.mark.parametrize("padding_idx,row", [(2, 2), (-1, 5), (-6, 0)])
def test_embedding_padding_idx_gets_no_gradient(padding_idx, row):
    w = randn((6, 3), seed=73)
    ids = np.array([[row, 1, row], [4, row, 1]])
    t = leaf(w)
    out = F.embedding(ids, t, padding_idx=padding_idx)
    np.testing.assert_array_equal(out.numpy(), w[ids])  # the row itself is still looked up
    g = randn((2, 3, 3), seed=74)
    out.backward(g)
    expected = np.zeros((6, 3))
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 3).astype(np.float64))
    expected[row] = 0.0
    assert_close(t.grad, expected)
    np.testing.assert_array_equal(t.grad.numpy()[row], 0.0)


@pytest.mark.parametrize("vocab,dim", [(1, 1), (3, 17), (127, 3), (17, 127)])
def test_embedding_awkward_sizes(vocab, dim):
    w = randn((vocab, dim), seed=75)
    ids = np.random.default_rng(vocab).integers(0, vocab, size=(3, 17))
    check_op(lambda w: F.embedding(ids, w), lambda w: w[ids], [w], fd=vocab * dim < 500)
    t = leaf(w)
    g = randn((3, 17, dim), seed=76)
    F.embedding(ids, t).backward(g)
    expected = np.zeros((vocab, dim))
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, dim).astype(np.float64))
    assert_close(t.grad, expected)


def test_embedding_forward_many_ids():
    w = randn((1000, 17), seed=77)
    ids = np.random.default_rng(0).integers(0, 1000, size=(8, 125))
    np.testing.assert_array_equal(F.embedding(ids, w).numpy(), w[ids])


# ----------------------------------------------------------------------------------------------
# cross_entropy
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_2d(reduction, label_smoothing):
    x = randn((6, 5), seed=80, scale=2.0)
    t = np.array([0, 4, -100, 2, 2, 1])
    check_op(lambda x: F.cross_entropy(x, t, reduction=reduction, label_smoothing=label_smoothing),
             lambda x: cross_entropy_ref(x, t, reduction, label_smoothing=label_smoothing), [x])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
def test_cross_entropy_spatial(reduction, label_smoothing):
    x = randn((2, 5, 3), seed=81, scale=2.0)
    t = np.array([[0, 4, 3], [-100, 1, 1]])
    check_op(lambda x: F.cross_entropy(x, t, reduction=reduction, label_smoothing=label_smoothing),
             lambda x: cross_entropy_ref(x, t, reduction, label_smoothing=label_smoothing), [x])


def test_cross_entropy_two_spatial_dims():
    x = randn((2, 4, 3, 2), seed=82)
    t = np.random.default_rng(1).integers(0, 4, size=(2, 3, 2))
    t[0, 1, 1] = -100
    for reduction in ("none", "mean"):
        check_op(lambda x: F.cross_entropy(x, t, reduction=reduction, label_smoothing=0.05),
                 lambda x: cross_entropy_ref(x, t, reduction, label_smoothing=0.05), [x])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_unbatched(reduction):
    x = randn((7,), seed=83)
    for target in (np.array(3), 3, np.int64(6)):
        check_op(lambda x: F.cross_entropy(x, target, reduction=reduction, label_smoothing=0.2),
                 lambda x: cross_entropy_ref(x, np.asarray(target), reduction, label_smoothing=0.2), [x])
    assert F.cross_entropy(x, np.array(3), reduction=reduction).shape == ()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_ignore_index_excluded_everywhere(label_smoothing, reduction):
    x = randn((5, 4), seed=84)
    t = np.array([1, 2, 2, 0, 3])
    # ignore_index may be a valid class: every position with target 2 is dropped from the
    # numerator, the denominator and the smoothing term.
    check_op(lambda x: F.cross_entropy(x, t, ignore_index=2, reduction=reduction, label_smoothing=label_smoothing),
             lambda x: cross_entropy_ref(x, t, reduction, ignore_index=2, label_smoothing=label_smoothing), [x])
    kept = t != 2
    ref_kept = cross_entropy_ref(x[kept], t[kept], reduction, label_smoothing=label_smoothing)
    out = F.cross_entropy(x, t, ignore_index=2, reduction=reduction, label_smoothing=label_smoothing).numpy()
    if reduction == "none":
        np.testing.assert_array_equal(out[~kept], 0.0)
        assert_close(out[kept], ref_kept)
    else:
        assert_close(out, ref_kept)
    t_leaf = leaf(x)
    F.cross_entropy(t_leaf, t, ignore_index=2, reduction="mean", label_smoothing=label_smoothing).backward()
    np.testing.assert_array_equal(t_leaf.grad.numpy()[~kept], 0.0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_all_ignored_is_zero_with_zero_grads(reduction):
    x = randn((3, 4), seed=85)
    t = np.full(3, -100)
    xt = leaf(x)
    loss = F.cross_entropy(xt, t, reduction=reduction, label_smoothing=0.1)
    assert loss.shape == ()
    assert loss.item() == 0.0
    loss.backward()
    g = xt.grad.numpy()
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_large_logits(label_smoothing):
    x = randn((4, 6), seed=86, scale=1e4)
    t = np.array([0, 5, 3, 3])
    xt = leaf(x)
    loss = F.cross_entropy(xt, t, label_smoothing=label_smoothing)
    expected = cross_entropy_ref(x, t, label_smoothing=label_smoothing)
    assert np.isfinite(loss.item())
    assert_close(loss, expected, rtol=1e-5, atol=1e-3)
    loss.backward()
    x64 = x.astype(np.float64)
    onehot = np.eye(6)[t]
    expected_grad = (softmax_ref(x64) - ((1 - label_smoothing) * onehot + label_smoothing / 6)) / 4
    assert np.all(np.isfinite(xt.grad.numpy()))
    assert_close(xt.grad, expected_grad, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    # Correct predictions with huge margins: loss 0, not NaN.
    confident = np.full((2, 3), -1e4, np.float32)
    confident[0, 1] = confident[1, 2] = 1e4
    assert F.cross_entropy(confident, [1, 2]).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("n,c", [(1, 1), (3, 17), (17, 3), (1, 127), (17, 127)])
def test_cross_entropy_awkward_sizes(n, c):
    x = randn((n, c), seed=n + c)
    t = np.random.default_rng(c).integers(0, c, size=n)
    check_op(lambda x: F.cross_entropy(x, t, label_smoothing=0.1),
             lambda x: cross_entropy_ref(x, t, label_smoothing=0.1), [x])


def test_cross_entropy_forward_big():
    x = randn((1000, 33), seed=87, scale=3.0)
    t = np.random.default_rng(2).integers(0, 33, size=1000)
    t[::7] = -100
    for reduction in ("none", "mean", "sum"):
        assert_close(F.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
                     cross_entropy_ref(x, t, reduction, label_smoothing=0.1), rtol=1e-5, atol=1e-4)
    x = randn((4, 1000), seed=88)
    t = np.array([0, 999, 500, 3])
    assert_close(F.cross_entropy(x, t), cross_entropy_ref(x, t))


def test_cross_entropy_target_dtypes_and_lists():
    x = randn((4, 5), seed=89)
    expected = cross_entropy_ref(x, np.array([1, 0, 4, 2]))
    for t in ([1, 0, 4, 2], np.array([1, 0, 4, 2], np.int32), np.array([1, 0, 4, 2], np.uint8)):
        assert_close(F.cross_entropy(x, t), expected)


def test_cross_entropy_unsupported_arguments_are_refused():
    x = randn((2, 3))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="reduction"):
        F.cross_entropy(x, [0, 1], reduction="avg")
    with pytest.raises(tfm_rs.InvalidArgumentError, match="weight"):
        F.cross_entropy(x, [0, 1], weight=np.ones(3, np.float32))
