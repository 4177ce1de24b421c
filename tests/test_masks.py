"""tfm_rs.masks: structured masks through the block-skipping fused kernel against dense attention.

For every mask kind and some compositions, the fused output and gradients equal the float64
reference of ``test_attention`` run with ``mask.to_dense(L, S)`` (NumPy, computed independently
of the kernel; forward ~1e-5, gradients ~1e-4), on awkward lengths (not multiples of the 64-key
block), batched and per sample. The log-sum-exp the kernel saves is checked beside it in Rust
(``rust/ops/attention/mask_tests.rs``). Also: the dense masks themselves against hand-written
cases, BigBird's probabilities, finite differences, the layers' pass-through, and bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from helpers import GRAD_ATOL, GRAD_RTOL, assert_close, leaf, numeric_grad, randn
from test_attention import attn_probs_ref, sdpa_grad_ref, sdpa_ref
from tfm_rs import masks

# ---------------------------------------------------------------------------------- dense forms


def test_causal_alignments():
    ul = masks.causal().to_dense(2, 4)
    lr = masks.causal("lower_right").to_dense(2, 4)
    assert ul.tolist() == [[True, False, False, False], [True, True, False, False]]
    assert lr.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_window_and_global():
    w = masks.sliding_window(1, 0).to_dense(4, 4)
    assert w.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert masks.sliding_window(1).to_dense(3, 3).tolist() == [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
    g = masks.global_tokens([2]).to_dense(4, 4)
    assert g[2].all() and g[:, 2].all() and g.sum() == 7


def test_key_padding_lengths_and_bool_agree():
    by_len = masks.key_padding([3, 1]).to_dense(2, 4)
    by_bool = masks.key_padding(np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)).to_dense(2, 4)
    assert by_len.shape == (2, 1, 2, 4)
    np.testing.assert_array_equal(by_len, by_bool)
    assert by_len[0, 0, 1].tolist() == [True, True, True, False]


def test_block_sparse_layout():
    m = masks.block_sparse(4, window_blocks=1, global_blocks=1, num_random_blocks=1, seed=3)
    d = m.to_dense(24, 24)
    layout = m.block_layout(24, 24)
    assert layout.shape == (6, 6)
    assert layout[0].all() and layout[:, 0].all()
    for a in range(6):
        assert layout[a, max(a - 1, 0):a + 2].all()
        assert d[4 * a:4 * a + 4].reshape(4, 6, 4).all(axis=(0, 2)).tolist() == layout[a].tolist()
    # The same seed gives the same blocks, another seed (almost surely) others.
    assert (masks.block_sparse(4, 1, 1, 1, seed=3).to_dense(24, 24) == d).all()
    others = [masks.block_sparse(4, 0, 0, 2, seed=s).block_layout(64, 64) for s in range(3)]
    assert not (others[0] == others[1]).all() or not (others[0] == others[2]).all()


def test_composition_and_repr():
    m = (masks.sliding_window(2) | masks.global_tokens([0])) & masks.key_padding([5])
    d = m.to_dense(6, 6)
    want = (masks.sliding_window(2).to_dense(6, 6) | masks.global_tokens([0]).to_dense(6, 6)) & \
        (np.arange(6) < 5)[None, None, None, :]
    np.testing.assert_array_equal(d, want)
    text = repr(m)
    assert "sliding window: 2 keys left, 2 right" in text and "global token" in text and "key padding" in text
    assert " or " in text and " and " in text
    assert "causal" in repr(masks.causal()) and "BigBird" in repr(masks.block_sparse(64, 1, 1, 2, 0))
    dense = np.tril(np.ones((3, 3), bool))
    np.testing.assert_array_equal((dense & masks.sliding_window(0, 3)).to_dense(3, 3), np.eye(3, dtype=bool))


def test_explain_counts():
    m = masks.sliding_window(256) | masks.global_tokens(range(16))
    ex = m.explain(4096, 4096, head_dim=64)
    d = m.to_dense(4096, 4096)
    assert ex.density == pytest.approx(d.mean(), rel=1e-12)
    assert ex.full_tiles + ex.partial_tiles + ex.empty_tiles == 64 * 64
    assert ex.empty_tiles > 0.8 * 64 * 64
    assert ex.dense_flops == 4 * 64 * 4096 * 4096
    assert ex.flops == pytest.approx(4 * 64 * d.sum())
    assert ex.flops <= ex.kernel_flops < ex.dense_flops / 5
    assert "empty (skipped)" in str(ex)


# ------------------------------------------------------------------------- kernel vs dense


def _kinds(L, S, N):
    rng = np.random.default_rng(L * 31 + S)
    lengths = [max(1, S - 5 * n) if n % 3 != 2 else 0 for n in range(N)]
    dense_bool = rng.random((L, S)) < 0.7
    return {
        "causal": masks.causal(),
        "causal lower-right": masks.causal("lower_right"),
        "window 4+1": masks.sliding_window(4, 1),
        "window 70": masks.sliding_window(70),
        "global": masks.global_tokens([0, max(L, S) - 1, 66]) if max(L, S) > 66 else masks.global_tokens([0]),
        "key padding lengths": masks.key_padding(lengths),
        "key padding bool": masks.key_padding(rng.random((N, S)) < 0.6),
        "bigbird 16": masks.block_sparse(16, 1, 1, 2, seed=5),
        "bigbird 7": masks.block_sparse(7, 1, 0, 1, seed=1),
        "dense": masks.dense(dense_bool),
        "window | global": masks.sliding_window(9) | masks.global_tokens([min(1, max(L, S) - 1)]),
        "(window | global) & padding": (masks.sliding_window(64, 20) | masks.global_tokens([0]))
        & masks.key_padding(lengths),
        "causal & window": masks.causal() & masks.sliding_window(10),
        "bigbird | dense": masks.block_sparse(8, 0, 0, 1, seed=2) | dense_bool,
    }


def _check(mask, L, S, E=8, N=2, H=3, seed=0):
    q, k, v = randn((N, H, L, E), seed), randn((N, H, S, E), seed + 1), randn((N, H, S, E), seed + 2)
    do = randn((N, H, L, E), seed + 3)
    dense = mask.to_dense(L, S)
    tq, tk, tv = leaf(q), leaf(k), leaf(v)
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
    out.backward(do)
    assert_close(out, sdpa_ref(q, k, v, dense), what=f"output, {mask!r}")
    eq, ek, ev = sdpa_grad_ref(q, k, v, do, dense)
    for got, want, name in [(tq.grad, eq, "dq"), (tk.grad, ek, "dk"), (tv.grad, ev, "dv")]:
        assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"{name}, {mask!r}")


@pytest.mark.parametrize("L,S", [(1, 1), (3, 3), (17, 17), (127, 127), (17, 127), (130, 67)])
def test_every_kind_matches_dense_attention(L, S):
    for name, mask in _kinds(L, S, 2).items():
        _check(mask, L, S)


@pytest.mark.slow
def test_long_awkward_length_1000():
    for name in ["window 70", "(window | global) & padding", "bigbird 16", "causal & window"]:
        _check(_kinds(1000, 1000, 2)[name], 1000, 1000, E=16, N=2, H=1)


def test_rank3_inputs_and_per_sample_padding():
    L = S = 40
    q, k, v = randn((3, L, 4), 1), randn((3, S, 4), 2), randn((3, S, 4), 3)
    mask = masks.key_padding([40, 7, 1]) & masks.sliding_window(5)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    dense = mask.to_dense(L, S)[:, 0]  # (N, L, S) for (N, L, E) inputs
    assert_close(out, sdpa_ref(q, k, v, dense))


@pytest.mark.parametrize("mask", [masks.sliding_window(1, 0) | masks.global_tokens([0]),
                                  masks.block_sparse(2, 0, 0, 1, seed=4) & masks.key_padding([3])])
def test_finite_differences(mask):
    L = S = 5
    q, k, v = randn((1, 2, L, 3), 7), randn((1, 2, S, 3), 8), randn((1, 2, S, 2), 9)
    do = randn((1, 2, L, 2), 10)
    tq, tk, tv = leaf(q), leaf(k), leaf(v)
    F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask).backward(do)
    dense = mask.to_dense(L, S)
    fd = numeric_grad(lambda q, k, v: sdpa_ref(q, k, v, dense), [q, k, v], do.astype(np.float64))
    for got, want, name in zip((tq.grad, tk.grad, tv.grad), fd, "qkv"):
        assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"d{name}")


def test_bigbird_probabilities_equal_dense_attention():
    L = S = 100
    mask = masks.block_sparse(8, window_blocks=1, global_blocks=1, num_random_blocks=2, seed=11)
    q, k, v = randn((2, 2, L, 8), 1), randn((2, 2, S, 8), 2), randn((2, 2, S, 8), 3)
    out, weights = F.attention_with_weights(q, k, v, attn_mask=mask)
    dense = mask.to_dense(L, S)
    assert_close(weights, attn_probs_ref(q, k, dense), what="probabilities")
    assert (weights.numpy()[..., ~dense] == 0).all()
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(fused, out.numpy().astype(np.float64), what="fused vs weights @ v")


def test_multihead_attention_and_layers_take_structured_masks():
    tfm_rs.manual_seed(0)
    E, H, N, T = 16, 4, 2, 21
    x = randn((N, T, E), 5)
    mha = tfm_rs.nn.MultiheadAttention(E, H, batch_first=True)
    pad = np.zeros((N, T), bool)
    pad[1, 15:] = True  # torch.nn convention: True = padding
    win = masks.sliding_window(3)
    dense_torch = ~(win.to_dense(T, T))  # torch.nn convention: True = not allowed
    got, _ = mha(x, x, x, attn_mask=win, key_padding_mask=pad, need_weights=False)
    want, _ = mha(x, x, x, attn_mask=dense_torch, key_padding_mask=pad, need_weights=False)
    assert_close(got, want.numpy().astype(np.float64))
    got_w, w = mha(x, x, x, attn_mask=win, key_padding_mask=pad, need_weights=True)
    assert_close(got_w, want.numpy().astype(np.float64))
    assert w.shape == (N, T, T)

    layer = tfm_rs.nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    enc = tfm_rs.nn.TransformerEncoder(layer, 2)
    assert_close(enc(x, mask=win), enc(x, mask=dense_torch).numpy().astype(np.float64))
    dec_layer = tfm_rs.nn.TransformerDecoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    causal = masks.causal()
    assert_close(dec_layer(x, x, tgt_mask=causal, memory_mask=win),
                 dec_layer(x, x, tgt_mask=~causal.to_dense(T, T), memory_mask=dense_torch).numpy().astype(np.float64))


# ------------------------------------------------------------------------------- bad input


def test_bad_input():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="left"):
        masks.sliding_window(-1)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="right"):
        masks.sliding_window(2, -3)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="block_size"):
        masks.block_sparse(0)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="alignment"):
        masks.causal("middle")
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match=">= 0"):
        masks.global_tokens([-1])
    with pytest.raises(tfm_rs.InvalidArgumentError, match="lengths"):
        masks.key_padding([-2, 3])
    with pytest.raises(tfm_rs.DTypeError):
        masks.dense(np.zeros((3, 3)))
    q = randn((2, 1, 10, 4), 0)
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="index 10 is out of range"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=masks.global_tokens([10]))
    with pytest.raises(tfm_rs.IndexOutOfRangeError):
        masks.global_tokens([10]).to_dense(10, 10)
    with pytest.raises(tfm_rs.ShapeError, match="exceeds S"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=masks.key_padding([11, 2]))
    with pytest.raises(tfm_rs.ShapeError, match="samples"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=masks.key_padding([1, 2, 3]))
    with pytest.raises(tfm_rs.ShapeError, match="keys"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=masks.key_padding(np.ones((2, 9), bool)))
    with pytest.raises(tfm_rs.ShapeError, match="broadcast"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=masks.dense(np.ones((9, 10), bool)))
    with pytest.raises(tfm_rs.ShapeError, match="combined"):
        (masks.key_padding([1, 2]) & masks.key_padding([1, 2, 3])).explain(4, 4)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="is_causal"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=masks.sliding_window(2), is_causal=True)
