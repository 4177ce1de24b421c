"""Tensor creation (``tfm_rs.zeros`` … ``randn``, ``stack``) and the torch-style elementwise
functions and methods (``sigmoid``, ``abs``, ``relu``, ``softmax`` …) against NumPy float64."""

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from helpers import AWKWARD, assert_close, check_op, leaf, randn, require_gpu


def test_constant_fills_take_every_size_form():
    for size in [(2, 3), ((2, 3),), ([2, 3],)]:
        z, o = tfm_rs.zeros(*size), tfm_rs.ones(*size)
        assert z.shape == o.shape == (2, 3)
        assert (z.numpy() == 0).all() and (o.numpy() == 1).all()
    assert tfm_rs.zeros(()).shape == () and tfm_rs.ones(0, 4).shape == (0, 4)
    assert_close(tfm_rs.full((3, 1), -2.5), np.full((3, 1), -2.5))
    assert (tfm_rs.empty(4, 2).numpy() == 0).all()
    base = tfm_rs.tensor(randn((3, 17)))
    assert_close(tfm_rs.zeros_like(base), np.zeros((3, 17)))
    assert_close(tfm_rs.ones_like(base), np.ones((3, 17)))
    assert_close(tfm_rs.full_like(base, 7), np.full((3, 17), 7.0))
    assert tfm_rs.empty_like(base).shape == (3, 17)
    assert tfm_rs.zeros(2).dtype == base.dtype


def test_requires_grad_makes_a_leaf_that_collects_gradients():
    w = tfm_rs.ones(3, requires_grad=True)
    assert w.requires_grad and w.is_leaf
    (w * tfm_rs.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert_close(w.grad, [1, 2, 3])
    assert not tfm_rs.zeros(3).requires_grad


@pytest.mark.parametrize("args,expected", [
    ((5,), np.arange(5.0)),
    ((2, 7, 2), [2.0, 4.0, 6.0]),
    ((1, 2, 0.3), [1.0, 1.3, 1.6, 1.9]),  # ceil((2 − 1)/0.3) = 4 values, as torch
    ((3, -1, -1.5), [3.0, 1.5, 0.0]),
    ((0,), np.zeros(0)),
    ((4, 4), np.zeros(0)),
])
def test_arange_matches_torch_counts(args, expected):
    got = tfm_rs.arange(*args)
    assert got.shape == (len(expected),)
    assert_close(got, np.asarray(expected, np.float64))


def test_linspace_and_eye():
    assert_close(tfm_rs.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    assert tfm_rs.linspace(0, 1, 0).shape == (0,)
    assert_close(tfm_rs.linspace(3, 9, 1), [3.0])
    assert_close(tfm_rs.eye(3), np.eye(3))
    assert_close(tfm_rs.eye(2, 5), np.eye(2, 5))


def test_random_draws_follow_the_seed_and_their_distributions():
    tfm_rs.manual_seed(1234)
    a, u = tfm_rs.randn(20000), tfm_rs.rand(4, 5000)
    tfm_rs.manual_seed(1234)
    assert (tfm_rs.randn(20000).numpy() == a.numpy()).all()
    assert (tfm_rs.rand(4, 5000).numpy() == u.numpy()).all()
    # The same draws as the NumPy generator the seed makes, rounded to float32.
    gen = np.random.default_rng(1234)
    assert (a.numpy() == gen.standard_normal(20000).astype(np.float32)).all()
    assert (u.numpy() == gen.random((4, 5000)).astype(np.float32)).all()
    # Moments, 20000 draws: mean within 4.5 standard errors (σ/√n ≈ 0.007) of 0, sd of 1.
    assert abs(a.numpy().mean()) < 0.032 and abs(a.numpy().std() - 1) < 0.025
    assert 0 <= u.numpy().min() and u.numpy().max() < 1 and abs(u.numpy().mean() - 0.5) < 0.01
    mine = np.random.default_rng(5)
    assert (tfm_rs.randn(3, generator=mine).numpy()
            == np.random.default_rng(5).standard_normal(3).astype(np.float32)).all()


@pytest.mark.parametrize("call", [
    lambda: tfm_rs.zeros(2, -1),
    lambda: tfm_rs.ones((3, -2)),
    lambda: tfm_rs.eye(-1),
    lambda: tfm_rs.randn(-3),
])
def test_negative_sizes_raise_shape_errors(call):
    with pytest.raises(tfm_rs.ShapeError, match="negative dimension"):
        call()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="size must be ints"):
        tfm_rs.zeros(2.5)
    with pytest.raises(TypeError, match="size must be ints"):
        tfm_rs.ones("3")
    with pytest.raises(tfm_rs.DTypeError, match="float32"):
        tfm_rs.zeros(2, dtype=np.int64)
    with pytest.raises(tfm_rs.DTypeError, match="float32"):
        tfm_rs.ones(2, dtype="float16")
    assert tfm_rs.zeros(2, dtype=np.float32).shape == (2,)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="nonzero"):
        tfm_rs.arange(0, 5, 0)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="sign of step"):
        tfm_rs.arange(0, 5, -1)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="finite"):
        tfm_rs.arange(float("inf"))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="finite"):
        tfm_rs.linspace(0, float("nan"), 3)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="steps"):
        tfm_rs.linspace(0, 1, -1)
    with pytest.raises(TypeError, match="expected a Tensor"):
        tfm_rs.zeros_like([1, 2])


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_stack_forward_and_backward(dim):
    xs = [randn((3, 17), seed=s) for s in range(4)]
    check_op(lambda *ts: tfm_rs.stack(ts, dim), lambda *a: np.stack(a, dim), xs)


def test_stack_errors():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="non-empty"):
        tfm_rs.stack([])
    with pytest.raises(tfm_rs.ShapeError, match="same shape"):
        tfm_rs.stack([tfm_rs.zeros(2), tfm_rs.zeros(3)])
    with pytest.raises(IndexError, match="out of range"):
        tfm_rs.stack([tfm_rs.zeros(2)], dim=2)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("n", AWKWARD)
def test_sigmoid_against_float64_and_finite_differences(n):
    check_op(lambda t: t.sigmoid(), _sigmoid, [randn((2, n), seed=n, scale=3)])


def test_sigmoid_saturates_without_nan():
    x = tfm_rs.tensor([-1000.0, -100.0, 0.0, 100.0, 1000.0], requires_grad=True)
    y = x.sigmoid()
    assert_close(y, [0, _sigmoid(-100.0), 0.5, 1, 1], rtol=1e-6, atol=1e-30)
    y.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()
    assert_close(x.grad, [0, _sigmoid(-100.0), 0.25, 0, 0], rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("n", AWKWARD)
def test_abs_against_float64_and_finite_differences(n):
    x = randn((2, n), seed=n)
    x[np.abs(x) < 1e-3] = 0.5  # finite differences need a margin from the kink at 0
    check_op(lambda t: t.abs(), np.abs, [x])


def test_abs_gradient_at_zero_is_zero_and_nan_stays_nan():
    x = leaf(np.array([0.0, -0.0, -2.0, 3.0, np.nan], np.float32))
    x.abs().backward(np.ones(5, np.float32))
    g = x.grad.numpy()
    assert g[:4].tolist() == [0.0, 0.0, -1.0, 1.0] and np.isnan(g[4])


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_methods_equal_the_functional_forms(dim):
    x = randn((3, 17), seed=dim + 7)
    for method, fn in [("softmax", F.softmax), ("log_softmax", F.log_softmax)]:
        a, b = leaf(x), leaf(x)
        ya, yb = getattr(a, method)(dim), fn(b, dim)
        assert (ya.numpy() == yb.numpy()).all()
        up = randn((3, 17), seed=3)
        ya.backward(up)
        yb.backward(up)
        assert (a.grad.numpy() == b.grad.numpy()).all()
    t = tfm_rs.tensor(x)
    assert (t.relu().numpy() == F.relu(t).numpy()).all()
    assert (t.softmax().numpy() == F.softmax(t, -1).numpy()).all()


def test_top_level_functions_and_modules_match_the_methods():
    x = randn((4, 3), seed=11)
    t = tfm_rs.tensor(x)
    pos = tfm_rs.tensor(np.abs(x) + 0.5)
    for name in ["exp", "tanh", "sigmoid", "abs", "relu"]:
        assert (getattr(tfm_rs, name)(t).numpy() == getattr(t, name)().numpy()).all(), name
    for name in ["log", "sqrt"]:
        assert (getattr(tfm_rs, name)(pos).numpy() == getattr(pos, name)().numpy()).all(), name
    assert (tfm_rs.softmax(t, 0).numpy() == t.softmax(0).numpy()).all()
    assert (tfm_rs.log_softmax(t, 1).numpy() == t.log_softmax(1).numpy()).all()
    assert (tfm_rs.exp(x).numpy() == t.exp().numpy()).all()  # NumPy input, as torch.exp(tensor)
    assert (F.sigmoid(x).numpy() == t.sigmoid().numpy()).all()
    assert (tfm_rs.nn.Sigmoid()(t).numpy() == t.sigmoid().numpy()).all()
    assert (tfm_rs.nn.Tanh()(t).numpy() == t.tanh().numpy()).all()


def test_sigmoid_and_abs_match_torch_in_float64():
    torch = pytest.importorskip("torch", reason="PyTorch is the optional reference for this check")
    x = randn((5, 17), seed=21, scale=4)
    x[0, :3] = 0.0
    up = randn((5, 17), seed=22)
    for name in ["sigmoid", "abs"]:
        ours = leaf(x)
        y = getattr(ours, name)()
        y.backward(up)
        ref = torch.tensor(x.astype(np.float64), requires_grad=True)
        ry = getattr(ref, name)()
        ry.backward(torch.from_numpy(up.astype(np.float64)))
        assert_close(y, ry.detach().numpy(), what=name)
        assert_close(ours.grad, ref.grad.numpy(), what=name)


@pytest.mark.parametrize("fn", ["sin", "cos"])
def test_sin_cos_match_numpy_to_positional_encoding_angles(fn):
    # Angles as the sinusoidal positional encoding makes them: positions up to 5000.
    angles = np.outer(np.arange(0, 5000, 37), 1 / 10000 ** (np.arange(0, 64, 2) / 64)).astype(np.float32)
    ref = getattr(np, fn)(angles.astype(np.float64))
    assert_close(getattr(tfm_rs, fn)(angles), ref, rtol=0, atol=2e-7)
    x = randn((3, 17), seed=24, scale=3)
    deriv = {"sin": np.cos, "cos": lambda v: -np.sin(v)}[fn]
    check_op(lambda a: getattr(a, fn)(), getattr(np, fn), [x])
    t = leaf(x)
    getattr(t, fn)().backward(np.ones_like(x))
    assert_close(t.grad, deriv(x.astype(np.float64)), rtol=1e-6, atol=1e-7)
    huge = np.array([7e4, -3e6, 1e30, np.nan, np.inf, -0.0], dtype=np.float32)  # libm's reduction
    with np.errstate(invalid="ignore"):
        assert_close(getattr(tfm_rs, fn)(huge), getattr(np, fn)(huge.astype(np.float64)), rtol=0, atol=2e-7)
    if tfm_rs.gpu_available():  # the shader's own range reduction, not WGSL's builtins
        g = tfm_rs.tensor(angles).to("gpu")
        assert_close(getattr(g, fn)().cpu(), ref, rtol=0, atol=1e-6)


def test_device_argument():
    assert tfm_rs.zeros(2, device="cpu").device == "cpu"
    with pytest.raises(tfm_rs.InvalidArgumentError, match="gpu"):
        tfm_rs.ones(2, device="cuda")


def test_device_argument_on_the_gpu():
    require_gpu()
    t = tfm_rs.randn(3, 17, device="gpu", requires_grad=True)
    assert t.device == "gpu" and t.requires_grad
    (t.sigmoid() + t.abs()).sum().backward()
    x = t.detach().cpu().numpy().astype(np.float64)
    s = 1 / (1 + np.exp(-x))
    assert_close(t.grad.cpu(), s * (1 - s) + np.sign(x), rtol=1e-5, atol=1e-6)
