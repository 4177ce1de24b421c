"""Every SIMD path the CPU supports gives the reference results; thread count does not change
results (beyond rounding for the GEMM, and not at all for dropout masks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from helpers import GRAD_ATOL, GRAD_RTOL, assert_close, leaf, randn

PATHS = ["avx512", "avx2", "generic"]
SIZES = (1, 3, 17, 127, 300)


@pytest.fixture
def restore_isa():
    original = tfm_rs.cpu_features()["isa"]
    yield
    tfm_rs.set_isa(original)
    assert tfm_rs.cpu_features()["isa"] == original


@pytest.fixture
def restore_threads():
    n = tfm_rs.get_num_threads()
    yield
    tfm_rs.set_num_threads(n)


def _use(path: str) -> None:
    """Switches to ``path`` or skips, saying why, when this CPU cannot run it."""
    if path not in tfm_rs.cpu_features()["supported"]:
        with pytest.raises(tfm_rs.InvalidArgumentError, match=path):
            tfm_rs.set_isa(path)
        pytest.skip(f"the {path} path is not supported by this CPU ({tfm_rs.cpu_features()['arch']})")
    tfm_rs.set_isa(path)
    assert tfm_rs.cpu_features()["isa"] == path


def _gemm_tol(k: int) -> float:
    # float32 accumulation of k products of unit-variance numbers.
    return 1e-5 * max(1.0, math.sqrt(k))


@pytest.mark.parametrize("path", PATHS)
def test_matmul_on_each_path(path, restore_isa):
    _use(path)
    for m in SIZES:
        for k in SIZES:
            for n in SIZES:
                if m * k * n > 300 * 300 * 17:  # keep the triple loop quick
                    continue
                a, b = randn((m, k), seed=m + 7 * k), randn((k, n), seed=n + 11 * k)
                tol = _gemm_tol(k)
                assert_close(F.matmul(a, b), a.astype(np.float64) @ b.astype(np.float64), rtol=tol, atol=tol,
                             what=f"{path} matmul {m}x{k} @ {k}x{n}")


@pytest.mark.parametrize("path", PATHS)
def test_big_matmul_and_gradients_on_each_path(path, restore_isa):
    _use(path)
    for m, k, n in [(300, 300, 300), (127, 300, 17), (1, 300, 127), (300, 1, 300)]:
        a, b = randn((m, k), seed=1), randn((k, n), seed=2)
        ta, tb = leaf(a), leaf(b)
        out = ta @ tb
        g = randn((m, n), seed=3)
        out.backward(g)
        a64, b64, g64 = a.astype(np.float64), b.astype(np.float64), g.astype(np.float64)
        assert_close(out, a64 @ b64, rtol=_gemm_tol(k), atol=_gemm_tol(k), what=f"{path} {m}x{k}x{n}")
        assert_close(ta.grad, g64 @ b64.T, rtol=_gemm_tol(n), atol=_gemm_tol(n), what=f"{path} dA")
        assert_close(tb.grad, a64.T @ g64, rtol=_gemm_tol(m), atol=_gemm_tol(m), what=f"{path} dB")


@pytest.mark.parametrize("path", PATHS)
def test_batched_matmul_on_each_path(path, restore_isa):
    _use(path)
    a, b = randn((3, 17, 127), seed=4), randn((3, 127, 3), seed=5)
    assert_close(F.matmul(a, b), a.astype(np.float64) @ b.astype(np.float64), rtol=_gemm_tol(127), atol=_gemm_tol(127))


@pytest.mark.parametrize("path", PATHS)
def test_linear_on_each_path(path, restore_isa):
    _use(path)
    for rows, inp, out in [(1, 1, 1), (3, 17, 127), (127, 3, 17), (17, 300, 3), (300, 127, 300)]:
        x, w, b = randn((rows, inp), seed=6), randn((out, inp), seed=7), randn((out,), seed=8)
        tx, tw, tb = leaf(x), leaf(w), leaf(b)
        y = F.linear(tx, tw, tb)
        x64, w64 = x.astype(np.float64), w.astype(np.float64)
        tol = _gemm_tol(inp)
        assert_close(y, x64 @ w64.T + b, rtol=tol, atol=tol, what=f"{path} linear {rows}x{inp}->{out}")
        g = randn((rows, out), seed=9)
        y.backward(g)
        g64 = g.astype(np.float64)
        assert_close(tx.grad, g64 @ w64, rtol=_gemm_tol(out), atol=_gemm_tol(out), what="dx")
        assert_close(tw.grad, g64.T @ x64, rtol=_gemm_tol(rows), atol=_gemm_tol(rows), what="dw")
        assert_close(tb.grad, g64.sum(0), rtol=_gemm_tol(rows), atol=_gemm_tol(rows), what="db")


def _attn_ref(q, k, v, is_causal):
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if is_causal:
        L, S = s.shape[-2:]
        s = np.where(np.tril(np.ones((L, S), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p, p @ v


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_on_each_path(path, causal, restore_isa):
    _use(path)
    for L, S, E, Ev in [(1, 1, 1, 1), (3, 17, 17, 3), (127, 127, 64, 64), (17, 300, 3, 17), (300, 17, 64, 1)]:
        q, k, v = randn((2, 2, L, E), seed=10), randn((2, 2, S, E), seed=11), randn((2, 2, S, Ev), seed=12)
        tq, tk, tv = leaf(q), leaf(k), leaf(v)
        out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        p, ref = _attn_ref(q, k, v, causal)
        assert_close(out, ref, what=f"{path} sdpa L={L} S={S} E={E} Ev={Ev}")
        do = randn((2, 2, L, Ev), seed=13)
        out.backward(do)
        do64, v64 = do.astype(np.float64), v.astype(np.float64)
        dp = do64 @ np.swapaxes(v64, -1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / math.sqrt(E)
        assert_close(tv.grad, np.swapaxes(p, -1, -2) @ do64, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"{path} dv")
        assert_close(tq.grad, ds @ k.astype(np.float64), rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"{path} dq")
        assert_close(tk.grad, np.swapaxes(ds, -1, -2) @ q.astype(np.float64), rtol=GRAD_RTOL, atol=GRAD_ATOL,
                     what=f"{path} dk")


@pytest.mark.parametrize("path", PATHS)
def test_other_kernels_on_each_path(path, restore_isa):
    """Softmax, LayerNorm and GELU on awkward lengths (vector tails) agree across paths."""
    _use(path)
    for n in SIZES:
        x = randn((3, n), seed=n, scale=2.0)
        x64 = x.astype(np.float64)
        e = np.exp(x64 - x64.max(-1, keepdims=True))
        assert_close(F.softmax(x, -1), e / e.sum(-1, keepdims=True), what=f"{path} softmax n={n}")
        mu, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
        assert_close(F.layer_norm(x, n), (x64 - mu) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-4,
                     what=f"{path} layer_norm n={n}")
        tanh_ref = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
        assert_close(F.gelu(x, "tanh"), tanh_ref, what=f"{path} gelu n={n}")


def test_isa_paths_agree_with_each_other(restore_isa):
    supported = tfm_rs.cpu_features()["supported"]
    assert "generic" in supported, "the portable path must always be available"
    a, b = randn((127, 300), seed=20), randn((300, 17), seed=21)
    q, k, v = randn((1, 2, 33, 16), seed=22), randn((1, 2, 33, 16), seed=23), randn((1, 2, 33, 8), seed=24)
    results = {}
    for path in supported:
        tfm_rs.set_isa(path)
        results[path] = ((F.matmul(a, b)).numpy(), F.scaled_dot_product_attention(q, k, v, is_causal=True).numpy())
    base = results["generic"]
    for path, (mm, att) in results.items():
        assert_close(mm, base[0], rtol=1e-5, atol=_gemm_tol(300), what=f"{path} vs generic matmul")
        assert_close(att, base[1], rtol=1e-5, atol=1e-6, what=f"{path} vs generic attention")


def test_set_isa_rejects_unknown_names(restore_isa):
    with pytest.raises(tfm_rs.InvalidArgumentError, match="set_isa"):
        tfm_rs.set_isa("neon9000")


# ----------------------------------------------------------------------------------------------
# thread counts
# ----------------------------------------------------------------------------------------------

def test_matmul_one_vs_two_threads(restore_threads):
    a, b = randn((300, 300), seed=30), randn((300, 127), seed=31)
    x, w = randn((129, 300), seed=32), randn((300, 300), seed=33)
    tfm_rs.set_num_threads(1)
    one = (F.matmul(a, b).numpy(), F.linear(x, w).numpy())
    tfm_rs.set_num_threads(2)
    assert tfm_rs.get_num_threads() == 2
    two = (F.matmul(a, b).numpy(), F.linear(x, w).numpy())
    for o, t in zip(one, two):
        np.testing.assert_allclose(t, o, rtol=1e-6, atol=1e-6 * math.sqrt(300))


def test_dropout_masks_one_vs_two_threads(restore_threads):
    x = randn((300, 301), seed=34)
    x[x == 0] = 1.0
    masks = []
    for threads in (1, 2):
        tfm_rs.set_num_threads(threads)
        tfm_rs.manual_seed(2024)
        masks.append(F.dropout(x, 0.5).numpy())
    np.testing.assert_array_equal(masks[0], masks[1])
    assert 0.45 < (masks[0] != 0).mean() < 0.55


def test_attention_dropout_one_vs_two_threads(restore_threads):
    q, k, v = randn((2, 3, 65, 16), seed=35), randn((2, 3, 70, 16), seed=36), randn((2, 3, 70, 8), seed=37)
    outs = []
    for threads in (1, 2):
        tfm_rs.set_num_threads(threads)
        tfm_rs.manual_seed(77)
        outs.append(F.scaled_dot_product_attention(q, k, v, dropout_p=0.25).numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)
