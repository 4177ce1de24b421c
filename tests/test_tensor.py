"""Tensor basics, autograd mechanics, elementwise, reductions and shape ops."""

import numpy as np
import pytest

import tfm_rs
from helpers import AWKWARD, assert_close, check_op, leaf, randn


def test_roundtrip_and_layouts_just_work():
    a = randn((5, 7))
    for arr in (a, np.asfortranarray(a), a[::-1], a[:, ::2], a.T):
        assert_close(tfm_rs.tensor(arr), arr)
    ro = a.copy()
    ro.setflags(write=False)
    assert_close(tfm_rs.tensor(ro), ro)


def test_float64_is_converted_and_ints_are_refused():
    t = tfm_rs.tensor(np.array([1.5, 2.25], dtype=np.float64))
    assert t.dtype == "float32" and t.numpy().dtype == np.float32
    assert_close(t, [1.5, 2.25])
    with pytest.raises(tfm_rs.DTypeError, match="int64"):
        tfm_rs.tensor(np.arange(3))
    with pytest.raises(TypeError):
        tfm_rs.tensor(np.array([True]))
    with pytest.raises(tfm_rs.DTypeError):
        tfm_rs.tensor("text")


# Small arrays and ones past the size from which the copy runs without the GIL (65536 values).
@pytest.mark.parametrize("shape", [(5, 7), (300, 301)])
def test_conversion_of_every_layout_and_float_dtype_is_exact(shape):
    a = randn(shape, seed=3)
    views = {
        "contiguous": a, "fortran": np.asfortranarray(a), "transposed": a.T, "reversed": a[::-1, ::-1],
        "strided": a[1::2, ::3], "3-d permuted": a.reshape(shape[0], shape[1], 1).transpose(2, 1, 0),
        "float64": a.astype(np.float64), "float64 transposed": a.astype(np.float64).T,
        "float16": a.astype(np.float16),
    }
    for what, arr in views.items():
        for convert in (tfm_rs.tensor, tfm_rs.from_numpy, tfm_rs.Tensor):
            out = convert(arr).numpy()
            assert out.shape == arr.shape and out.dtype == np.float32, what
            # The float32 values themselves, bit for bit (a cast rounds to nearest, as NumPy's).
            np.testing.assert_array_equal(out, arr.astype(np.float32), err_msg=what)


def test_zero_d_and_empty_arrays_keep_their_shapes():
    for arr in (np.array(2.5, np.float32), np.array(-1.25), np.float32(3.0), np.float64(0.5)):
        t = tfm_rs.tensor(arr)
        assert t.shape == () and t.item() == float(arr)
    for shape in ((0,), (0, 3), (4, 0, 2)):
        for dtype in (np.float32, np.float64):
            t = tfm_rs.tensor(np.zeros(shape, dtype))
            assert t.shape == shape and t.numpy().shape == shape
    assert tfm_rs.tensor(np.zeros((3, 0), np.float32).T).shape == (0, 3)


def test_conversions_copy_and_never_alias_the_array():
    for n in (7, 300):  # both sides of the GIL-free size
        a = randn((n, n), seed=4)
        keep = a.copy()
        t, u = tfm_rs.tensor(a), tfm_rs.from_numpy(a)  # from_numpy copies too (documented)
        a[...] = 7.0
        np.testing.assert_array_equal(t.numpy(), keep)
        np.testing.assert_array_equal(u.numpy(), keep)
        out = t.numpy()
        out[...] = -1.0
        np.testing.assert_array_equal(t.numpy(), keep)
        assert out.flags.c_contiguous and out.flags.writeable and not np.shares_memory(out, t.numpy())


def test_integer_ids_of_any_layout_and_width():
    w = randn((50, 3), seed=5)
    ids = (np.arange(60).reshape(6, 10) * 7) % 50
    for arr in (ids, ids.T, ids[::-1, ::2], ids.astype(np.int32).T, ids.astype(np.uint8), np.asfortranarray(ids)):
        np.testing.assert_array_equal(tfm_rs.functional.embedding(arr, w).numpy(), w[arr], err_msg=str(arr.dtype))


def test_error_hierarchy():
    assert issubclass(tfm_rs.ShapeError, tfm_rs.TfmError) and issubclass(tfm_rs.ShapeError, ValueError)
    assert issubclass(tfm_rs.DTypeError, TypeError)
    assert issubclass(tfm_rs.IndexOutOfRangeError, IndexError)
    assert issubclass(tfm_rs.TfmError, Exception)


@pytest.mark.parametrize("op,ref", [
    (lambda a, b: a + b, lambda a, b: a + b),
    (lambda a, b: a - b, lambda a, b: a - b),
    (lambda a, b: a * b, lambda a, b: a * b),
    (lambda a, b: a / b, lambda a, b: a / b),
])
@pytest.mark.parametrize("sa,sb", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 5)), ((17,), ()),
                                   ((1,), (2, 3, 1))])
def test_binary_broadcast(op, ref, sa, sb):
    a = randn(sa, seed=1)
    b = randn(sb, seed=2) + np.float32(3.0)  # away from 0 for division
    check_op(op, ref, [a, b])


@pytest.mark.parametrize("name,ref,lo", [
    ("exp", np.exp, -2), ("log", np.log, 0.5), ("sqrt", np.sqrt, 0.5), ("tanh", np.tanh, -2),
])
def test_unary(name, ref, lo):
    x = (np.abs(randn((3, 5))) + lo).astype(np.float32)
    check_op(lambda t: getattr(t, name)(), ref, [x])


def test_neg_and_pow():
    x = np.abs(randn((4, 3))) + np.float32(0.5)
    check_op(lambda t: -t, lambda t: -t, [x])
    check_op(lambda t: t ** 3, lambda t: t ** 3, [x])
    check_op(lambda t: 2.0 - t * 0.5, lambda t: 2.0 - t * 0.5, [x])


@pytest.mark.parametrize("dim,keepdim", [(None, False), (0, False), (-1, True), ((0, 2), False), ((1,), True)])
def test_sum_mean(dim, keepdim):
    x = randn((3, 17, 4))
    check_op(lambda t: t.sum(dim, keepdim), lambda t: np.sum(t, axis=dim, keepdims=keepdim), [x])
    check_op(lambda t: t.mean(dim, keepdim), lambda t: np.mean(t, axis=dim, keepdims=keepdim), [x])


def test_shape_ops():
    x = randn((2, 3, 4))
    check_op(lambda t: t.reshape(4, -1), lambda t: t.reshape(4, -1), [x])
    check_op(lambda t: t.transpose(0, 2), lambda t: np.swapaxes(t, 0, 2), [x])
    check_op(lambda t: t.permute(1, 2, 0), lambda t: np.transpose(t, (1, 2, 0)), [x])
    check_op(lambda t: t[1, :, 1::2], lambda t: t[1, :, 1::2], [x])
    check_op(lambda t: t[..., None, -1], lambda t: t[..., None, -1], [x])
    check_op(lambda t: t.unsqueeze(1).squeeze(), lambda t: t, [x])
    y = randn((2, 5, 4), seed=3)
    check_op(lambda a, b: tfm_rs.cat([a, b], dim=1), lambda a, b: np.concatenate([a, b], axis=1), [x, y])


@pytest.mark.parametrize("shape", [(1, 3), (17, 127), (3, 130, 67), (2, 1600, 300)])
def test_transposing_the_last_two_dims_matches_numpy(shape):
    # The blocked-transpose path: odd sizes, several blocks, blocks split among threads; and the
    # backward, itself a transpose, against the incoming gradient swapped back.
    x = randn(shape, seed=7)
    t = tfm_rs.tensor(x, requires_grad=True)
    y = t.transpose(-2, -1)
    np.testing.assert_array_equal(y.numpy(), np.swapaxes(x, -2, -1))
    g = randn(y.shape, seed=8)
    y.backward(tfm_rs.tensor(g))
    np.testing.assert_array_equal(t.grad.numpy(), np.swapaxes(g, -2, -1))


def test_shape_errors_name_the_op():
    x = tfm_rs.tensor(randn((2, 3)))
    with pytest.raises(tfm_rs.ShapeError, match="reshape"):
        x.reshape(4, 2)
    with pytest.raises(tfm_rs.ShapeError, match=r"\(2, 3\).*\(4,\)|broadcast"):
        x + tfm_rs.tensor(randn((4,)))
    with pytest.raises(IndexError):
        x[5]
    with pytest.raises(IndexError):
        x.transpose(0, 2)
    with pytest.raises(tfm_rs.ShapeError):
        tfm_rs.cat([x, tfm_rs.tensor(randn((3, 3)))], dim=1)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 17, 5), (17, 3, 127), (127, 33, 1)])
def test_matmul_2d(m, k, n):
    check_op(lambda a, b: a @ b, lambda a, b: a @ b, [randn((m, k), 1), randn((k, n), 2)])


@pytest.mark.parametrize("sa,sb", [((4,), (4,)), ((4,), (4, 3)), ((2, 3, 4), (4,)), ((2, 3, 4), (4, 5)),
                                   ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5))])
def test_matmul_batched_and_promoted(sa, sb):
    check_op(lambda a, b: tfm_rs.functional.matmul(a, b), np.matmul, [randn(sa, 1), randn(sb, 2)])


@pytest.mark.parametrize("rows,inp,out", [(1, 1, 1), (3, 17, 5), (2 * 17, 127, 3)])
def test_linear(rows, inp, out):
    x, w, b = randn((rows, inp), 1), randn((out, inp), 2), randn((out,), 3)
    check_op(tfm_rs.functional.linear, lambda x, w, b: x @ w.T + b, [x, w, b])
    check_op(lambda x, w: tfm_rs.functional.linear(x, w), lambda x, w: x @ w.T, [x, w])


def test_linear_batched_input_and_bad_shapes():
    x, w = randn((2, 3, 4)), randn((5, 4))
    check_op(lambda x, w: tfm_rs.functional.linear(x, w), lambda x, w: x @ w.T, [x, w])
    with pytest.raises(tfm_rs.ShapeError, match="linear"):
        tfm_rs.functional.linear(x, randn((5, 3)))
    with pytest.raises(tfm_rs.ShapeError, match="linear"):
        tfm_rs.functional.linear(x, w, randn((4,)))


def test_backward_accumulates_and_shares_inputs():
    x = leaf(np.array([1.0, 2.0, 3.0], np.float32))
    y = (x * x + x).sum()
    y.backward(retain_graph=True)
    assert_close(x.grad, [3, 5, 7])
    y.backward()
    assert_close(x.grad, [6, 10, 14])
    with pytest.raises(tfm_rs.AutogradError, match="second time"):
        y.backward()


def test_backward_errors():
    x = leaf(randn((3,)))
    with pytest.raises(tfm_rs.AutogradError, match="scalar"):
        (x * 2).backward()
    with pytest.raises(tfm_rs.ShapeError):
        (x * 2).backward(np.ones(4, np.float32))
    with pytest.raises(tfm_rs.AutogradError, match="does not require grad"):
        tfm_rs.tensor(randn((3,))).sum().backward()


def test_no_grad_and_detach():
    x = leaf(randn((3,)))
    with tfm_rs.no_grad():
        y = x * 2
        assert not tfm_rs.is_grad_enabled()
        with tfm_rs.enable_grad():
            assert (x * 2).requires_grad
    assert tfm_rs.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert not x.detach().requires_grad

    @tfm_rs.no_grad()
    def f(t):
        return t * 3

    assert not f(x).requires_grad


def test_requires_grad_only_on_leaves():
    x = leaf(randn((3,)))
    y = x * 2
    with pytest.raises(tfm_rs.AutogradError):
        y.requires_grad_(False)
    z = tfm_rs.tensor(randn((3,))).requires_grad_()
    assert z.requires_grad and z.is_leaf


def test_empty_tensors():
    e = tfm_rs.tensor(np.zeros((0, 4), np.float32), requires_grad=True)
    assert (e + 1).shape == (0, 4)
    assert (e @ tfm_rs.tensor(randn((4, 3)))).shape == (0, 3)
    assert e.sum().item() == 0.0
    assert np.isnan(e.mean().item())


def test_deep_graph_does_not_overflow_the_stack():
    x = leaf(np.ones(2, np.float32))
    y = x
    for _ in range(20000):
        y = y + 1.0
    y.sum().backward()
    assert_close(x.grad, [1, 1])


def test_threads_and_features():
    n = tfm_rs.get_num_threads()
    tfm_rs.set_num_threads(1)
    assert tfm_rs.get_num_threads() == 1
    tfm_rs.set_num_threads(n)
    with pytest.raises(tfm_rs.InvalidArgumentError):
        tfm_rs.set_num_threads(0)
    feats = tfm_rs.cpu_features()
    assert feats["isa"] in feats["supported"]
    with pytest.raises(tfm_rs.InvalidArgumentError):
        tfm_rs.set_isa("sse9")


@pytest.mark.parametrize("n", AWKWARD)
def test_awkward_sizes_elementwise(n):
    a, b = randn((n, n), 1), randn((n,), 2)
    check_op(lambda a, b: a * b + a, lambda a, b: a * b + a, [a, b], fd=n < 20)


def test_long_ops_release_the_gil():
    import threading

    a = tfm_rs.tensor(randn((512, 512)))
    done = threading.Event()

    def work():
        for _ in range(20):
            a @ a
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    ticks = 0
    while not done.is_set():
        ticks += 1  # runs only while the worker is inside Rust with the GIL released
        done.wait(0.0005)
    worker.join()
    assert ticks > 5


def test_ops_from_several_threads_at_once_match_one_thread():
    # Ops run on the calling thread (small ones entirely, large ones entering the pool for their
    # parallel parts), so threads calling at once must not disturb each other's values, gradients
    # or grad mode.
    from concurrent.futures import ThreadPoolExecutor

    def job(seed):
        x = tfm_rs.tensor(randn((300, 257), seed=seed), requires_grad=True)  # large: pool
        w = tfm_rs.tensor(randn((257, 3), seed=seed + 100), requires_grad=True)  # small: inline
        head = x[:200]  # a view of x's buffer
        loss = ((head @ w).tanh() * 0.5).sum() + (x * x).sum()
        loss.backward()
        with tfm_rs.no_grad():
            frozen = x * 2.0
        return loss.item(), x.grad.numpy(), w.grad.numpy(), frozen.requires_grad

    alone = [job(s) for s in range(8)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(job, range(8)))
    for a, b in zip(alone, together):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2], b[2])
        assert not a[3] and not b[3]


def test_repr_looks_like_pytorch():
    t = tfm_rs.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    assert repr(t) == "tensor([1., 2.], requires_grad=True)"
    assert "grad_fn=<mul>" in repr(t * 2)


def test_rng_state_round_trip_reproduces_dropout():
    x = tfm_rs.tensor(np.ones(1000, np.float32))
    tfm_rs.manual_seed(3)
    state = tfm_rs.get_rng_state()
    a = tfm_rs.functional.dropout(x, 0.5).numpy()
    b = tfm_rs.functional.dropout(x, 0.5).numpy()
    assert not np.array_equal(a, b)
    tfm_rs.set_rng_state(state)
    np.testing.assert_array_equal(tfm_rs.functional.dropout(x, 0.5).numpy(), a)


def test_numpy_on_the_left_stays_in_the_graph():
    x = leaf(np.array([1.0, 2.0], np.float32))
    y = np.array([3.0, 4.0], np.float32) * x + np.float32(1.0)
    assert isinstance(y, tfm_rs.Tensor) and y.requires_grad
    y.sum().backward()
    assert_close(x.grad, [3, 4])
    assert_close(np.asarray(x), [1, 2])
