"""Bad input raises the specific tfm_rs error with a message that names the op (never a panic,
a segfault or a silent wrong answer); empty batches and unusual array layouts just work."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from helpers import assert_close, leaf, randn


# ----------------------------------------------------------------------------------------------
# wrong shapes → ShapeError naming the op
# ----------------------------------------------------------------------------------------------

def test_error_classes_subclass_the_builtins():
    assert issubclass(tfm_rs.ShapeError, ValueError)
    assert issubclass(tfm_rs.DTypeError, TypeError)
    assert issubclass(tfm_rs.IndexOutOfRangeError, IndexError)
    assert issubclass(tfm_rs.NonFiniteError, ValueError)
    assert issubclass(tfm_rs.InvalidArgumentError, ValueError)
    for cls in (tfm_rs.ShapeError, tfm_rs.DTypeError, tfm_rs.IndexOutOfRangeError, tfm_rs.NonFiniteError,
                tfm_rs.InvalidArgumentError):
        assert issubclass(cls, tfm_rs.TfmError)


def test_softmax_mask_shape_mismatch():
    x = randn((3, 4))
    with pytest.raises(tfm_rs.ShapeError, match="softmax"):
        F.softmax(x, -1, mask=np.ones((3, 5), bool))
    with pytest.raises(tfm_rs.ShapeError, match="softmax"):
        F.log_softmax(x, -1, mask=np.zeros((2, 4), np.float32))


def test_softmax_dim_out_of_range():
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="softmax"):
        F.softmax(randn((3, 4)), 2)
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="softmax"):
        F.log_softmax(randn((3, 4)), -3)


def test_layer_norm_shape_errors():
    x = randn((2, 3, 4))
    with pytest.raises(tfm_rs.ShapeError, match="layer_norm"):
        F.layer_norm(x, 3)
    with pytest.raises(tfm_rs.ShapeError, match="layer_norm"):
        F.layer_norm(x, (4, 3))
    with pytest.raises(tfm_rs.ShapeError, match="layer_norm"):
        F.layer_norm(x, (1, 2, 3, 4))
    with pytest.raises(tfm_rs.ShapeError, match="layer_norm"):
        F.layer_norm(x, 4, weight=randn((3,)))
    with pytest.raises(tfm_rs.ShapeError, match="layer_norm"):
        F.layer_norm(x, 4, bias=randn((5,)))
    with pytest.raises(tfm_rs.ShapeError, match="layer_norm"):
        F.layer_norm(x, (3, 4), weight=randn((4,)))


def test_rms_norm_bad_input():
    x = randn((2, 4))
    with pytest.raises(tfm_rs.ShapeError, match="rms_norm"):
        F.rms_norm(x, 3)
    with pytest.raises(tfm_rs.ShapeError, match="rms_norm"):
        F.rms_norm(x, 4, weight=randn((3,)))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="rms_norm"):
        F.rms_norm(x, 4, eps=-1.0)


def test_add_layer_norm_shape_errors():
    x = randn((2, 4))
    with pytest.raises(tfm_rs.ShapeError, match="layer_norm"):
        F.add_layer_norm(x, randn((2, 5)), 4)
    with pytest.raises(tfm_rs.ShapeError, match="layer_norm"):
        F.add_layer_norm(x, randn((3, 4)), 4)
    with pytest.raises(tfm_rs.ShapeError, match="layer_norm"):
        F.add_layer_norm(x, randn((2, 4)), 4, weight=randn((2,)))


def test_embedding_weight_must_be_2d():
    with pytest.raises(tfm_rs.ShapeError, match="embedding"):
        F.embedding([0, 1], randn((5,)))
    with pytest.raises(tfm_rs.ShapeError, match="embedding"):
        F.embedding([0, 1], randn((2, 5, 3)))


def test_cross_entropy_shape_errors():
    with pytest.raises(tfm_rs.ShapeError, match="cross_entropy"):
        F.cross_entropy(randn((4, 5)), np.zeros(3, np.int64))
    with pytest.raises(tfm_rs.ShapeError, match="cross_entropy"):
        F.cross_entropy(randn((2, 5, 3)), np.zeros((2, 4), np.int64))
    with pytest.raises(tfm_rs.ShapeError, match="cross_entropy"):
        F.cross_entropy(randn((2, 5, 3)), np.zeros((2,), np.int64))
    with pytest.raises(tfm_rs.ShapeError, match="cross_entropy"):
        F.cross_entropy(randn((4, 5)), np.zeros((4, 1), np.int64))
    with pytest.raises(tfm_rs.ShapeError, match="cross_entropy"):
        F.cross_entropy(randn(()), np.array(0))


@pytest.mark.parametrize("fn", [F.scaled_dot_product_attention, F.attention_with_weights])
def test_attention_shape_errors(fn):
    q, k, v = randn((2, 3, 5, 8)), randn((2, 3, 6, 8)), randn((2, 3, 6, 4))
    with pytest.raises(tfm_rs.ShapeError, match="attention"):
        fn(q, randn((2, 3, 6, 7)), v)  # E differs
    with pytest.raises(tfm_rs.ShapeError, match="attention"):
        fn(q, k, randn((2, 3, 7, 4)))  # S differs between key and value
    with pytest.raises(tfm_rs.ShapeError, match="attention"):
        fn(q, randn((3, 3, 6, 8)), randn((3, 3, 6, 4)))  # batch differs
    with pytest.raises(tfm_rs.ShapeError, match="attention"):
        fn(q, k, v, attn_mask=np.ones((5, 7), bool))
    with pytest.raises(tfm_rs.ShapeError, match="attention"):
        fn(q, k, v, attn_mask=np.zeros((3, 1, 1, 6), np.float32))  # batch 3 against 2
    with pytest.raises(tfm_rs.ShapeError, match="attention"):
        fn(randn((8,)), randn((8,)), randn((8,)))


def test_linear_and_matmul_shape_errors():
    with pytest.raises(tfm_rs.ShapeError, match="linear"):
        F.linear(randn((2, 3)), randn((4, 5)))
    with pytest.raises(tfm_rs.ShapeError, match="matmul"):
        F.matmul(randn((2, 3)), randn((4, 5)))


# ----------------------------------------------------------------------------------------------
# dtypes, index ranges, non-finite values, invalid arguments
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids", [np.array([0.0, 1.0]), np.array([[1.5]], np.float32), [0.5, 1.0],
                                 np.array([True, False])])
def test_float_ids_to_embedding_are_a_dtype_error(ids):
    with pytest.raises(tfm_rs.DTypeError, match="embedding"):
        F.embedding(ids, randn((4, 3)))


def test_tensor_ids_are_a_dtype_error():
    with pytest.raises(tfm_rs.DTypeError, match="embedding"):
        F.embedding(tfm_rs.tensor(np.array([0.0, 1.0], np.float32)), randn((4, 3)))


@pytest.mark.parametrize("target", [np.array([0.0, 1.0]), np.array([1.0, 2.0], np.float32), [0.0, 1.0]])
def test_float_targets_to_cross_entropy_are_a_dtype_error(target):
    with pytest.raises(tfm_rs.DTypeError, match="cross_entropy"):
        F.cross_entropy(randn((2, 3)), target)


def test_integer_logits_are_a_dtype_error():
    with pytest.raises(tfm_rs.DTypeError, match="cross_entropy"):
        F.cross_entropy(np.zeros((2, 3), np.int64), [0, 1])
    with pytest.raises(tfm_rs.DTypeError, match="softmax"):
        F.softmax(np.zeros((2, 3), np.int32))


def test_token_id_past_the_vocabulary():
    w = randn((10, 3))
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="12345"):
        F.embedding([1, 12345, 2], w)
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="embedding"):
        F.embedding(np.array([[0, 10]]), w)
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match=r"\b10\b"):
        F.embedding(np.array([[0, 10]]), w)


def test_negative_token_id():
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="-7"):
        F.embedding([0, -7], randn((10, 3)))
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="embedding"):
        F.embedding(np.array([-1], np.int32), randn((10, 3)))


def test_padding_idx_out_of_range():
    with pytest.raises((tfm_rs.IndexOutOfRangeError, tfm_rs.InvalidArgumentError), match="padding_idx"):
        F.embedding([0, 1], randn((4, 3)), padding_idx=4)
    with pytest.raises((tfm_rs.IndexOutOfRangeError, tfm_rs.InvalidArgumentError), match="padding_idx"):
        F.embedding([0, 1], randn((4, 3)), padding_idx=-5)


def test_cross_entropy_target_out_of_range():
    x = randn((3, 5))
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="77"):
        F.cross_entropy(x, [0, 77, 1])
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="cross_entropy"):
        F.cross_entropy(x, [0, 5, 1])
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="-5"):
        F.cross_entropy(x, [0, -5, 1])
    with pytest.raises(IndexError, match="cross_entropy"):
        F.cross_entropy(randn((2, 5, 3)), np.array([[0, 1, 2], [3, 4, 5]]))
    with pytest.raises(IndexError, match="cross_entropy"):
        F.cross_entropy(randn((5,)), np.array(5))


def test_cross_entropy_nan_logits():
    x = randn((3, 4))
    x[1, 2] = np.nan
    with pytest.raises(tfm_rs.NonFiniteError, match="cross_entropy"):
        F.cross_entropy(x, [0, 1, 2])
    with pytest.raises(tfm_rs.NonFiniteError, match="cross_entropy"):
        F.cross_entropy(x, [0, 1, 2], reduction="none")


def test_nan_in_softmax_float_masks():
    x = randn((3, 4))
    mask = np.zeros((3, 4), np.float32)
    mask[2, 1] = np.nan
    with pytest.raises(tfm_rs.NonFiniteError, match="softmax"):
        F.softmax(x, -1, mask=mask)
    with pytest.raises(tfm_rs.NonFiniteError, match="softmax"):
        F.log_softmax(x, -1, mask=mask)


def test_nan_in_attention_float_masks():
    mask = np.zeros((3, 4), np.float32)
    mask[2, 1] = np.nan
    q = randn((1, 1, 3, 2))
    with pytest.raises(tfm_rs.NonFiniteError, match="attention"):
        F.scaled_dot_product_attention(q, randn((1, 1, 4, 2)), randn((1, 1, 4, 2)), attn_mask=mask)
    with pytest.raises(tfm_rs.NonFiniteError, match="attention"):
        F.attention_with_weights(q, randn((1, 1, 4, 2)), randn((1, 1, 4, 2)), attn_mask=mask)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_dropout_p_outside_unit_interval(p):
    with pytest.raises(tfm_rs.InvalidArgumentError, match="dropout"):
        F.dropout(randn((4,)), p)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_attention_dropout_p_outside_unit_interval(p):
    with pytest.raises(tfm_rs.InvalidArgumentError, match="dropout"):
        F.scaled_dot_product_attention(randn((2, 3)), randn((4, 3)), randn((4, 3)), dropout_p=p)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="dropout"):
        F.attention_with_weights(randn((2, 3)), randn((4, 3)), randn((4, 3)), dropout_p=p)


def test_gelu_bogus_approximation():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="gelu"):
        F.gelu(randn((3,)), approximate="bogus")


def test_label_smoothing_outside_unit_interval():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="cross_entropy"):
        F.cross_entropy(randn((2, 3)), [0, 1], label_smoothing=1.5)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="cross_entropy"):
        F.cross_entropy(randn((2, 3)), [0, 1], label_smoothing=-0.1)


# ----------------------------------------------------------------------------------------------
# empty batches give empty results
# ----------------------------------------------------------------------------------------------

def test_empty_linear():
    x = leaf(np.zeros((0, 4), np.float32))
    w = leaf(randn((3, 4)))
    b = leaf(randn((3,)))
    y = F.linear(x, w, b)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 4)
    np.testing.assert_array_equal(w.grad.numpy(), 0.0)
    np.testing.assert_array_equal(b.grad.numpy(), 0.0)


def test_empty_softmax():
    x = leaf(np.zeros((0, 5), np.float32))
    y = F.softmax(x, -1)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert x.grad.shape == (0, 5)
    assert F.log_softmax(np.zeros((2, 0, 3), np.float32), 1).shape == (2, 0, 3)
    assert F.softmax(np.zeros((3, 0), np.float32), -1).shape == (3, 0)
    assert F.softmax(np.zeros((0, 5), np.float32), -1, mask=np.ones(5, bool)).shape == (0, 5)


def test_empty_layer_norm():
    x = leaf(np.zeros((0, 8), np.float32))
    w, b = leaf(randn((8,))), leaf(randn((8,)))
    y = F.layer_norm(x, 8, w, b)
    assert y.shape == (0, 8)
    y.sum().backward()
    assert x.grad.shape == (0, 8)
    np.testing.assert_array_equal(w.grad.numpy(), 0.0)
    np.testing.assert_array_equal(b.grad.numpy(), 0.0)
    assert F.add_layer_norm(np.zeros((2, 0, 8), np.float32), np.zeros((2, 0, 8), np.float32), 8).shape == (2, 0, 8)


def test_empty_activations():
    e = np.zeros((0, 3), np.float32)
    assert F.gelu(e).shape == (0, 3)
    assert F.gelu(e, "tanh").shape == (0, 3)
    assert F.relu(e).shape == (0, 3)
    assert F.dropout(e, 0.5).shape == (0, 3)


def test_empty_embedding():
    w = leaf(randn((5, 3)))
    y = F.embedding(np.zeros((0,), np.int64), w)
    assert y.shape == (0, 3)
    assert F.embedding(np.zeros((2, 0), np.int64), w).shape == (2, 0, 3)
    y.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros((5, 3)))


@pytest.mark.parametrize("qs,ks,vs", [
    ((0, 2, 3, 4), (0, 2, 5, 4), (0, 2, 5, 6)),  # B = 0
    ((0, 3, 4), (0, 5, 4), (0, 5, 6)),           # B = 0, rank 3
    ((2, 0, 3, 4), (2, 0, 5, 4), (2, 0, 5, 6)),  # H = 0
    ((2, 2, 0, 4), (2, 2, 5, 4), (2, 2, 5, 6)),  # no queries
], ids=["B=0", "B=0-rank3", "H=0", "L=0"])
@pytest.mark.parametrize("fn", ["scaled_dot_product_attention", "attention_with_weights"])
def test_empty_attention(fn, qs, ks, vs):
    q, k, v = (leaf(np.zeros(s, np.float32)) for s in (qs, ks, vs))
    out_shape = qs[:-1] + vs[-1:]
    for causal in (False, True):
        y = getattr(F, fn)(q, k, v, is_causal=causal)
        if fn == "attention_with_weights":
            y, w = y
            assert w.shape == qs[:-1] + ks[-2:-1]
        assert y.shape == out_shape
    y.sum().backward()
    assert q.grad.shape == qs and k.grad.shape == ks and v.grad.shape == vs


def test_attention_with_no_keys_gives_zeros():
    # S = 0: every row is "fully masked", so the output is zeros (never NaN).
    q, k, v = randn((2, 2, 3, 4), 1), np.zeros((2, 2, 0, 4), np.float32), np.zeros((2, 2, 0, 6), np.float32)
    np.testing.assert_array_equal(F.scaled_dot_product_attention(q, k, v).numpy(), np.zeros((2, 2, 3, 6)))
    out, w = F.attention_with_weights(q, k, v)
    np.testing.assert_array_equal(out.numpy(), np.zeros((2, 2, 3, 6)))
    assert w.shape == (2, 2, 3, 0)


def test_empty_cross_entropy():
    x = np.zeros((0, 4), np.float32)
    t = np.zeros((0,), np.int64)
    assert F.cross_entropy(x, t, reduction="none").shape == (0,)
    assert F.cross_entropy(x, t, reduction="sum").item() == 0.0


# ----------------------------------------------------------------------------------------------
# array layouts: Fortran order, strided views, read-only and negative strides
# ----------------------------------------------------------------------------------------------

def layouts(a: np.ndarray) -> dict:
    """Arrays equal to ``a`` in value but not C-contiguous and writable."""
    out = {"fortran": np.asfortranarray(a)}
    if a.ndim >= 1 and a.size:
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        out["strided"] = wide[..., ::2]
        out["negative"] = np.ascontiguousarray(a[::-1])[::-1]
        if a.ndim >= 2:
            out["transposed"] = np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)
    ro = a.copy()
    ro.setflags(write=False)
    out["readonly"] = ro
    for name, b in out.items():
        np.testing.assert_array_equal(b, a, err_msg=name)
    assert not out["strided"].flags.c_contiguous and out["negative"].strides[0] < 0
    return out


def _same_for_every_layout(fn, args: list, what: str) -> None:
    expected = fn(*args)
    expected = [e.numpy() for e in expected] if isinstance(expected, tuple) else [expected.numpy()]
    for i, a in enumerate(args):
        if not isinstance(a, np.ndarray) or a.ndim < 2:
            continue
        for name, variant in layouts(a).items():
            got = fn(*(args[:i] + [variant] + args[i + 1:]))
            got = [g.numpy() for g in got] if isinstance(got, tuple) else [got.numpy()]
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e, err_msg=f"{what}: argument {i} as {name}")


def test_layouts_linear_matmul():
    _same_for_every_layout(F.linear, [randn((5, 7), 1), randn((3, 7), 2), randn((3,), 3)], "linear")
    _same_for_every_layout(F.matmul, [randn((4, 5, 7), 1), randn((7, 6), 2)], "matmul")


def test_layouts_softmax_and_masks():
    mask = np.random.default_rng(0).random((6, 9)) < 0.7
    mask[:, 0] = True
    _same_for_every_layout(lambda x, m: F.softmax(x, -1, mask=m), [randn((6, 9), 1), mask], "softmax")
    _same_for_every_layout(lambda x, m: F.log_softmax(x, 0, mask=m), [randn((6, 9), 1), randn((6, 9), 2)],
                           "log_softmax")


def test_layouts_layer_norm_and_activations():
    _same_for_every_layout(lambda x, w, b: F.layer_norm(x, (3, 4), w, b),
                           [randn((5, 3, 4), 1), randn((3, 4), 2), randn((3, 4), 3)], "layer_norm")
    _same_for_every_layout(lambda x, r: F.add_layer_norm(x, r, 4), [randn((5, 4), 1), randn((5, 4), 2)],
                           "add_layer_norm")
    _same_for_every_layout(F.gelu, [randn((7, 5), 4)], "gelu")
    _same_for_every_layout(F.relu, [randn((7, 5), 4)], "relu")

    def seeded_dropout(x):
        tfm_rs.manual_seed(8)
        return F.dropout(x, 0.5)

    _same_for_every_layout(seeded_dropout, [randn((7, 5), 4)], "dropout")


def test_layouts_embedding_and_cross_entropy():
    ids = np.random.default_rng(1).integers(0, 10, size=(4, 6))
    _same_for_every_layout(F.embedding, [ids, randn((10, 5), 1)], "embedding")
    target = np.random.default_rng(2).integers(0, 5, size=(3, 4))
    _same_for_every_layout(lambda x, t: F.cross_entropy(x, t, reduction="none"), [randn((3, 5, 4), 1), target],
                           "cross_entropy")
    _same_for_every_layout(lambda x, t: F.cross_entropy(x, t[:, 0]), [randn((3, 5), 1), target], "cross_entropy")


def test_layouts_attention():
    q, k, v = randn((2, 2, 5, 4), 1), randn((2, 2, 6, 4), 2), randn((2, 2, 6, 3), 3)
    mask = np.random.default_rng(3).random((5, 6)) < 0.7
    _same_for_every_layout(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                           [q, k, v, mask], "scaled_dot_product_attention")
    _same_for_every_layout(lambda q, k, v: F.attention_with_weights(q, k, v, is_causal=True), [q, k, v],
                           "attention_with_weights")


def test_layouts_of_the_upstream_gradient():
    x = randn((4, 6), 1)
    g = randn((4, 6), 2)
    t = leaf(x)
    F.softmax(t, -1).backward(g)
    expected = t.grad.numpy()
    for name, variant in layouts(g).items():
        t = leaf(x)
        F.softmax(t, -1).backward(variant)
        np.testing.assert_array_equal(t.grad.numpy(), expected, err_msg=name)
    assert_close(expected.sum(-1), np.zeros(4), atol=1e-6)


def test_inputs_are_not_modified():
    x = randn((4, 6), 1)
    before = x.copy()
    t = leaf(x)
    F.dropout(t, 0.5).backward(np.ones_like(x))
    F.softmax(x, -1)
    F.layer_norm(x, 6)
    np.testing.assert_array_equal(x, before)
