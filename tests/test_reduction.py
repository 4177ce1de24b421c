"""Reductions: ``max``/``min`` (with indices), ``amax``/``amin``, ``argmax``/``argmin``, ``var``/``std``
against NumPy float64, finite differences and PyTorch in float64 (gradients on ties, and the
tie and boundary rules of ``clamp`` and ``maximum``)."""

import numpy as np
import pytest

import tfm_rs
from helpers import AWKWARD, assert_close, check_op, leaf, randn

NAN = float("nan")


@pytest.mark.parametrize("shape,dim", [((1,), 0), ((3,), 0), ((17, 127), 1), ((17, 127), 0), ((3, 17, 5), 1),
                                       ((3, 17, 5), -1), ((3, 17, 5), 0)])
@pytest.mark.parametrize("which", ["max", "min"])
def test_max_min_along_dim_match_numpy(shape, dim, which):
    x = randn(shape, seed=11)
    ref, arg = (np.max, np.argmax) if which == "max" else (np.min, np.argmin)
    for keepdim in (False, True):
        values, indices = getattr(tfm_rs.tensor(x), which)(dim, keepdim=keepdim)
        assert_close(values, ref(x, axis=dim, keepdims=keepdim), rtol=0, atol=0)
        expected = arg(x, axis=dim, keepdims=keepdim)
        assert indices.dtype == np.int64 and indices.shape == expected.shape
        assert (indices == expected).all()
        r = getattr(tfm_rs, which)(x, dim=dim, keepdim=keepdim)
        assert (r.indices == expected).all() and type(r).__name__ == which
    check_op(lambda a: getattr(a, which)(dim).values, lambda a: ref(a, axis=dim), [x])


def test_first_index_on_ties_and_nan_is_the_extreme_as_numpy():
    x = np.array([[1, 3, 3, 0], [2, NAN, 5, NAN], [7, 7, 7, 7]], dtype=np.float32)
    for which, arg in [("max", np.argmax), ("min", np.argmin)]:
        values, indices = getattr(tfm_rs.tensor(x), which)(1)
        assert (indices == arg(x, axis=1)).all()
        assert_close(values, getattr(np, which)(x, axis=1))
        assert (getattr(tfm_rs.tensor(x), "arg" + which)(1) == arg(x, axis=1)).all()
    assert tfm_rs.tensor(x).argmax() == np.argmax(x) == 5  # flattened: the first NaN
    assert tfm_rs.tensor(x).argmin(keepdim=True).shape == (1, 1)


@pytest.mark.parametrize("dims", [None, 0, 1, (0, 2), (-1, 1)])
def test_amax_amin_match_numpy(dims):
    x = randn((3, 17, 5), seed=12)
    axis = dims if not isinstance(dims, int) else (dims,)
    for fn in ("amax", "amin"):
        for keepdim in (False, True):
            out = getattr(tfm_rs, fn)(x, dims, keepdim)
            assert_close(out, getattr(np, fn)(x, axis=axis, keepdims=keepdim), rtol=0, atol=0)
        check_op(lambda a: getattr(a, fn)(dims), lambda a: getattr(np, fn)(a, axis=axis), [x])
    assert_close(tfm_rs.tensor(x).max(), x.max(), rtol=0, atol=0)


def test_gradients_on_ties_match_torch_in_float64():
    torch = pytest.importorskip("torch", reason="PyTorch is the optional reference for this check")
    x = np.array([[1, 3, 3, 0], [2, 2, 5, 5], [7, 7, 7, 7]], dtype=np.float32)
    g2, g1 = randn((3, 4), seed=13), randn((3,), seed=14)
    cases = [
        ("max(dim)", lambda t: t.max(1).values, lambda t: t.max(1).values, g1),
        ("min(dim)", lambda t: t.min(0).values, lambda t: t.min(0).values, randn((4,), seed=15)),
        ("amax", lambda t: t.amax(1), lambda t: t.amax(1), g1),
        ("amin", lambda t: t.amin((0, 1)), lambda t: t.amin((0, 1)), np.float32(2.0)),
        ("max()", lambda t: t.max(), lambda t: t.max(), np.float32(3.0)),
        ("clamp", lambda t: t.clamp(2, 5), lambda t: t.clamp(2, 5), g2),
        ("maximum", lambda t: t.maximum(tfm_rs.tensor(np.full(4, 3, np.float32))),
         lambda t: t.maximum(torch.full((4,), 3.0, dtype=torch.float64)), g2),
    ]
    for name, ours, theirs, g in cases:
        a = leaf(x)
        ours(a).backward(np.asarray(g, dtype=np.float32))
        ref = torch.tensor(x.astype(np.float64), requires_grad=True)
        theirs(ref).backward(torch.tensor(np.asarray(g, dtype=np.float64)))
        assert_close(a.grad, ref.grad.numpy(), rtol=1e-6, atol=1e-7, what=name)


def test_bad_reductions_raise_clear_errors():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="no elements"):
        tfm_rs.zeros(0).max()
    with pytest.raises(tfm_rs.InvalidArgumentError, match="no elements"):
        tfm_rs.zeros(2, 0).argmax(1)
    assert tfm_rs.zeros(0, 3).max(1).values.shape == (0,)
    with pytest.raises(tfm_rs.TfmError):
        tfm_rs.zeros(2, 3).max(2)
    with pytest.raises(TypeError):
        tfm_rs.zeros(2, 3).max("a")


def test_argmax_picks_greedy_tokens_for_the_library():
    logits = randn((2, 7, 11), seed=16)
    ids = tfm_rs.tensor(logits).argmax(-1)
    assert (ids == logits.argmax(-1)).all()
    emb = tfm_rs.nn.Embedding(11, 4)
    assert emb(ids).shape == (2, 7, 4)  # the indices feed an embedding as they are



@pytest.mark.parametrize("n", AWKWARD)
@pytest.mark.parametrize("dims,correction", [(None, 1), (1, 1), (1, 0), ((0, 2), 1), (-1, 0.5)])
def test_var_std_match_numpy_and_finite_differences(n, dims, correction):
    x = randn((3, n, 2), seed=20) + 10.0  # an offset mean, which the two-pass form handles
    axis = dims if not isinstance(dims, int) else (dims,)
    count = x.size if dims is None else int(np.prod([x.shape[d] for d in axis]))
    if count <= correction:  # no degrees of freedom left: NaN (0/0) or inf, as torch's
        assert not np.isfinite(tfm_rs.tensor(x).var(dims, correction=correction).numpy()).any()
        return
    for keepdim in (False, True):
        v = tfm_rs.tensor(x).var(dims, keepdim=keepdim, correction=correction)
        assert_close(v, x.astype(np.float64).var(axis=axis, ddof=correction, keepdims=keepdim), rtol=2e-5)
    check_op(lambda a: a.var(dims, correction=correction),
             lambda a: a.var(axis=axis, ddof=correction), [x], grad_rtol=1e-3)
    if count > 1:  # one value: std 0, whose gradient is NaN (as torch's)
        check_op(lambda a: tfm_rs.std(a, dims, correction=correction),
                 lambda a: a.std(axis=axis, ddof=correction), [x], grad_rtol=1e-3)


def test_var_spellings_and_degenerate_counts_follow_pytorch():
    x = randn((4, 6), seed=21)
    assert_close(tfm_rs.var(x, 1, unbiased=False), x.var(1), rtol=1e-5)
    assert_close(tfm_rs.tensor(x).std(-1, keepdim=True), x.std(-1, ddof=1, keepdims=True), rtol=1e-5)
    assert np.isnan(tfm_rs.tensor([3.0]).var().item())  # one value, correction 1: NaN, as torch
    with pytest.raises(tfm_rs.InvalidArgumentError, match="either"):
        tfm_rs.tensor(x).var(unbiased=True, correction=1)
    torch = pytest.importorskip("torch", reason="PyTorch is the optional reference for this check")
    ref = torch.tensor(x.astype(np.float64), requires_grad=True)
    ours = leaf(x)
    up = randn((4, 1), seed=22)
    ours.std(1, keepdim=True).backward(up)
    ref.std(1, keepdim=True).backward(torch.from_numpy(up.astype(np.float64)))
    assert_close(ours.grad, ref.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_sum_and_mean_at_the_top_level():
    x = randn((3, 5), seed=23)
    assert_close(tfm_rs.sum(x, 1), x.sum(1), rtol=1e-6)
    assert_close(tfm_rs.mean(x, (0, 1), keepdim=True), x.mean(keepdims=True), rtol=1e-6)
