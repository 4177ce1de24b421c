"""Comparisons and selections (``==``, ``where``, ``masked_fill``, ``clamp``, ``maximum`` …)
against NumPy float64 and finite differences (their tie and boundary gradient rules against
PyTorch are in ``test_reduction.py``, with the max/min reductions')."""

import numpy as np
import pytest

import tfm_rs
from helpers import AWKWARD, assert_close, check_op, leaf, randn, require_gpu

NAN = float("nan")


def with_ties_and_nan(shape, seed=0):
    """Values on a coarse grid (so equal values occur) with a NaN, as float32."""
    x = np.round(randn(shape, seed=seed) * 2) / 2
    if x.size > 2:
        x.reshape(-1)[x.size // 2] = NAN
    return x.astype(np.float32)


@pytest.mark.parametrize("name,ref", [
    ("eq", np.equal), ("ne", np.not_equal), ("lt", np.less),
    ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal),
])
@pytest.mark.parametrize("shapes", [((17,), (17,)), ((3, 1, 17), (17,)), ((3, 127), ()), ((1,), (5, 1))])
def test_comparisons_match_numpy_with_broadcasting_ties_and_nan(name, ref, shapes):
    a = with_ties_and_nan(shapes[0], seed=1)
    b = with_ties_and_nan(shapes[1], seed=2) if shapes[1] else np.float32(0.5)
    expected = ref(a, b).astype(np.float64)
    ta = tfm_rs.tensor(a, requires_grad=True)
    for out in [getattr(ta, name)(b), getattr(tfm_rs, name)(a, b)]:
        assert out.shape == expected.shape and not out.requires_grad
        assert_close(out, expected, rtol=0, atol=0)
    dunder = {"eq": "__eq__", "ne": "__ne__", "lt": "__lt__", "le": "__le__", "gt": "__gt__", "ge": "__ge__"}
    assert_close(getattr(ta, dunder[name])(tfm_rs.tensor(b)), expected, rtol=0, atol=0)


def test_operators_hash_and_truth_follow_pytorch():
    x = tfm_rs.tensor([1.0, 2.0, 3.0])
    assert_close(x == 2, [0, 1, 0], rtol=0, atol=0)
    assert_close(2 < x, [0, 0, 1], rtol=0, atol=0)  # reflected: x > 2
    assert (x == None) is False and (x != "a") is True  # noqa: E711 (the operator is the test)
    y = tfm_rs.tensor([1.0, 2.0, 3.0])
    assert hash(x) != hash(y) and len({x, y, x}) == 2  # identity, as torch
    assert x in [x] and x.float() is x  # identity first; `x in [y]` would compare elementwise, as torch
    assert bool(tfm_rs.tensor([2.0])) and not bool(tfm_rs.tensor(0.0))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="ambiguous"):
        bool(x)
    assert_close((x > 1).float().mean(), 2 / 3)


@pytest.mark.parametrize("n", AWKWARD)
def test_where_matches_numpy_and_finite_differences(n):
    cond = randn((3, n), seed=3) > 0
    x, y = randn((3, n), seed=4), randn((1, n), seed=5)
    check_op(lambda a, b: tfm_rs.where(cond, a, b), lambda a, b: np.where(cond, a, b), [x, y])
    # The condition as a 0/1 tensor, and a scalar operand.
    out = tfm_rs.tensor(x).where(tfm_rs.tensor(cond.astype(np.float32)), 0.0)
    assert_close(out, np.where(cond, x, 0.0))


def test_where_routes_gradient_only_to_the_taken_side_even_where_the_other_is_inf():
    x = leaf(np.array([1.0, np.inf, -2.0], dtype=np.float32))
    y = leaf(np.array([np.nan, 5.0, 6.0], dtype=np.float32))
    out = tfm_rs.where(np.array([True, False, True]), x, y)
    assert_close(out, [1.0, 5.0, -2.0])
    out.backward(np.array([10.0, 20.0, 30.0], dtype=np.float32))
    assert_close(x.grad, [10.0, 0.0, 30.0], rtol=0, atol=0)
    assert_close(y.grad, [0.0, 20.0, 0.0], rtol=0, atol=0)


def test_masked_fill_as_in_the_annotated_transformer():
    scores = leaf(randn((2, 3, 5), seed=6))
    mask = np.tril(np.ones((3, 5))) == 0  # True: masked
    filled = scores.masked_fill(mask, float("-inf"))
    expected = np.where(mask, -np.inf, scores.numpy())
    assert_close(filled, expected)
    p = filled.softmax(-1)
    assert_close(p.numpy()[..., 4], 0.0, atol=0)
    g = randn((2, 3, 5), seed=7)
    scores.masked_fill(mask, -1e9).backward(g)
    assert_close(scores.grad, np.where(mask, 0.0, g), rtol=0, atol=0)
    # The mask compares from a tensor too, and may not grow the result.
    m = tfm_rs.tensor(np.tril(np.ones((3, 5), dtype=np.float32)))
    assert_close(scores.masked_fill(m == 0, 0.0), np.where(mask, 0.0, scores.numpy()))
    with pytest.raises(tfm_rs.ShapeError, match="does not broadcast"):
        tfm_rs.tensor(randn((3,))).masked_fill(np.zeros((2, 3), dtype=bool), 1.0)
    with pytest.raises(tfm_rs.DTypeError):
        scores.masked_fill(np.array(["a"]), 1.0)


@pytest.mark.parametrize("n", AWKWARD)
@pytest.mark.parametrize("bounds", [(-0.5, 0.7), (None, 0.3), (-0.2, None)])
def test_clamp_matches_numpy_and_finite_differences(n, bounds):
    lo, hi = bounds
    x = randn((2, n), seed=8)
    x = np.where(np.abs(x - (lo or 0)) < 1e-3, x + 1e-2, x).astype(np.float32)  # no kinks at a bound
    ref = lambda a: np.clip(a, -np.inf if lo is None else lo, np.inf if hi is None else hi)  # noqa: E731
    check_op(lambda a: a.clamp(lo, hi), ref, [x])
    assert_close(tfm_rs.clip(x, lo, hi), ref(x))
    if hi is None:
        assert_close(tfm_rs.tensor(x).clamp_min(lo), ref(x))
    if lo is None:
        assert_close(tfm_rs.tensor(x).clamp_max(hi), ref(x))


def test_clamp_edges_and_bad_bounds():
    x = leaf(np.array([NAN, -1.0, 0.0, 0.5, 1.0, 2.0], dtype=np.float32))
    y = x.clamp(0.0, 1.0)
    assert_close(y, [NAN, 0.0, 0.0, 0.5, 1.0, 1.0])
    y.backward(np.ones(6, dtype=np.float32))
    assert_close(x.grad, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0], rtol=0, atol=0)  # 0 at the bounds, as torch
    assert_close(tfm_rs.tensor([0.5]).clamp(2.0, 1.0), [1.0])  # min > max: max, as torch
    with pytest.raises(tfm_rs.InvalidArgumentError, match="at least one"):
        x.clamp()
    with pytest.raises(tfm_rs.InvalidArgumentError, match="NaN"):
        x.clamp(NAN, 1.0)


@pytest.mark.parametrize("fn,ref", [("maximum", np.maximum), ("minimum", np.minimum)])
def test_maximum_minimum_match_numpy_and_finite_differences(fn, ref):
    a, b = randn((3, 17), seed=9), randn((17,), seed=10)
    check_op(lambda x, y: getattr(tfm_rs, fn)(x, y), ref, [a, b])
    nan = np.array([NAN, 1.0], dtype=np.float32)
    assert_close(getattr(tfm_rs.tensor(nan), fn)(np.array([0.0, NAN], dtype=np.float32)), [NAN, NAN])
    assert_close(getattr(tfm_rs, fn[:3])(tfm_rs.tensor(a), tfm_rs.tensor(b)), ref(a, b))  # torch.max(a, b)


def test_where_broadcasts_all_three_operands():
    cond = randn((3, 1, 1), seed=17) > 0
    x, y = randn((1, 4, 5), seed=18), randn((5,), seed=19)
    check_op(lambda a, b: tfm_rs.where(cond, a, b), lambda a, b: np.where(cond, a, b), [x, y])
    assert tfm_rs.where(np.zeros((0, 5), dtype=bool), tfm_rs.tensor(y), 1.0).shape == (0, 5)


def test_gpu_tensors_get_a_device_error_naming_the_op():
    require_gpu()
    x = tfm_rs.tensor(randn((2, 3))).to("gpu")
    for name, call in [("amax", lambda: x.max()), ("clamp", lambda: x.clamp(0, 1)),
                       ("compare", lambda: x == 1), ("where", lambda: x.masked_fill(np.ones(3, bool), 0.0))]:
        with pytest.raises(tfm_rs.DeviceError, match=name):
            call()
