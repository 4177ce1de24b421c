"""The GPU kernels (tfm_rs.gpu, NumPy in and out) against the CPU ops of tfm_rs.functional.

Runs on whatever adapter wgpu finds; in CI that is Mesa's lavapipe (software Vulkan), which
scripts/test.sh installs. Without an adapter the comparisons skip with the reason, unless
TFM_RS_REQUIRE_GPU=1 (set by scripts/test.sh where a Vulkan driver is present), where they fail.
Sizes stay small: lavapipe runs the shaders on the CPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from helpers import AWKWARD, randn, require_gpu

GPU_RTOL, GPU_ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def gpu(request):
    if "no_gpu_needed" not in request.keywords:
        require_gpu()


def close(actual, expected, what: str = "", rtol: float = GPU_RTOL) -> None:
    expected = expected.numpy() if isinstance(expected, tfm_rs.Tensor) else np.asarray(expected)
    finite = expected[np.isfinite(expected)]
    scale = float(np.sqrt(np.mean(finite**2))) if finite.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale + GPU_ATOL, err_msg=what)


def grads_of(y: tfm_rs.Tensor, upstream: np.ndarray, *leaves: tfm_rs.Tensor) -> list:
    y.backward(tfm_rs.tensor(upstream))
    return [leaf.grad.numpy() for leaf in leaves]


def test_gpu_info_describes_the_adapter():
    info = tfm_rs.gpu_info()
    assert set(info) == {"name", "backend", "device_type", "driver"}
    assert info["name"]


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 17, 5), (17, 127, 3), (127, 3, 17), (130, 20, 129)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False)])
def test_matmul(m, k, n, trans_a, trans_b):
    a, b = randn((m, k), 1), randn((k, n), 2)
    got = tfm_rs.gpu.matmul(a.T.copy() if trans_a else a, b.T.copy() if trans_b else b,
                            trans_a=trans_a, trans_b=trans_b)
    close(got, F.matmul(a, b), f"{m}x{k}x{n}")


def test_matmul_batched_and_broadcast():
    a, b, w = randn((4, 3, 17, 9), 1), randn((4, 3, 9, 5), 2), randn((9, 5), 3)
    close(tfm_rs.gpu.matmul(a, b), F.matmul(a, b))
    close(tfm_rs.gpu.matmul(a, w), F.matmul(a, w))
    with pytest.raises(tfm_rs.ShapeError):
        tfm_rs.gpu.matmul(a, randn((8, 5), 4))


@pytest.mark.parametrize("cols", AWKWARD + (300,))
@pytest.mark.parametrize("log", [False, True])
def test_softmax_forward_backward_with_mask(cols, log):
    x, g = randn((5, cols), 1, scale=3.0), randn((5, cols), 2)
    mask = np.ones((5, cols), dtype=bool)
    mask[:, ::3] = False
    mask[1] = False  # a fully masked row
    gpu_f = tfm_rs.gpu.log_softmax if log else tfm_rs.gpu.softmax
    cpu_f = F.log_softmax if log else F.softmax
    for m in (None, mask):
        xt = tfm_rs.tensor(x, requires_grad=True)
        want = cpu_f(xt, -1, mask=m)
        got = gpu_f(x, mask=m)
        close(got, want, f"forward mask={m is not None}")
        (want_dx,) = grads_of(want, g, xt)
        close(tfm_rs.gpu.softmax_backward(g, want.numpy(), log=log), want_dx, "backward")


@pytest.mark.parametrize("d", AWKWARD + (1030,))
def test_layer_norm_forward_backward(d):
    x, g = randn((6, d), 1) + 3.0, randn((6, d), 2)
    w, b = randn((d,), 3) + 1.0, randn((d,), 4)
    xt, wt, bt = (tfm_rs.tensor(a, requires_grad=True) for a in (x, w, b))
    want = F.layer_norm(xt, d, wt, bt, 1e-5)
    y, mean, rstd = tfm_rs.gpu.layer_norm(x, w, b, 1e-5)
    close(y, want, "y")
    close(mean, x.mean(-1), "mean", rtol=1e-5)
    want_dx, want_dw, want_db = grads_of(want, g, xt, wt, bt)
    dx, dw, db = tfm_rs.gpu.layer_norm_backward(g, x, mean, rstd, w)
    close(dx, want_dx, "dx")
    close(dw, want_dw, "dweight")
    close(db, want_db, "dbias")


@pytest.mark.parametrize("kind", ["relu", "gelu", "gelu_tanh"])
def test_activations(kind):
    x, g = randn((7, 129), 1, scale=3.0), randn((7, 129), 2)
    xt = tfm_rs.tensor(x, requires_grad=True)
    want = F.relu(xt) if kind == "relu" else F.gelu(xt, approximate="tanh" if kind == "gelu_tanh" else "none")
    close(tfm_rs.gpu.activation(x, kind), want)
    (want_dx,) = grads_of(want, g, xt)
    close(tfm_rs.gpu.activation_backward(g, x, kind), want_dx)
    with pytest.raises(tfm_rs.InvalidArgumentError):
        tfm_rs.gpu.activation(x, "swish")


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _keep_mask(n: int, seed: int, p: float) -> np.ndarray:
    """rust/random.rs's keep(seed, i, p), written again in NumPy."""
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64)
        h = _splitmix(np.uint64(seed) + (i // np.uint64(4)) * np.uint64(0x9E3779B97F4A7C15))
        bits = (h >> (np.uint64(16) * (i % np.uint64(4)))) & np.uint64(0xFFFF)
    return bits >= np.uint64(round(p * 65536))


@pytest.mark.parametrize("n,seed,p", [(1, 1, 0.5), (4099, 0x123456789ABCDEF0, 0.1), (1000, 2**64 - 1, 0.9)])
def test_dropout_masks_follow_the_cpu_generator(n, seed, p):
    x = randn((n,), 1) + 5.0
    got = tfm_rs.gpu.dropout(x, p, seed)
    keep = _keep_mask(n, seed, p)
    np.testing.assert_array_equal(got != 0, keep)
    close(got[keep], x[keep] * np.float32(1.0 / (1.0 - p)))


def test_embedding_forward_backward():
    v, d = 50, 17
    ids = np.random.default_rng(0).integers(0, v, size=(4, 9))
    w, g = randn((v, d), 1), randn((4, 9, d), 2)
    wt = tfm_rs.tensor(w, requires_grad=True)
    want = F.embedding(ids, wt, padding_idx=3)
    np.testing.assert_array_equal(tfm_rs.gpu.embedding(ids, w), want.numpy())
    (want_dw,) = grads_of(want, g, wt)
    np.testing.assert_array_equal(tfm_rs.gpu.embedding_backward(g, ids, v, padding_idx=3), want_dw)
    with pytest.raises(tfm_rs.IndexOutOfRangeError):
        tfm_rs.gpu.embedding(np.array([v]), w)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_loss_and_grad(reduction, label_smoothing):
    n, c = 11, 37
    x = randn((n, c), 1, scale=3.0)
    t = np.random.default_rng(2).integers(0, c, size=n)
    t[::4] = -100
    xt = tfm_rs.tensor(x, requires_grad=True)
    want = F.cross_entropy(xt, t, ignore_index=-100, reduction=reduction, label_smoothing=label_smoothing)
    loss, dlogits = tfm_rs.gpu.cross_entropy(x, t, -100, label_smoothing, reduction, with_grad=True)
    close(loss, want, "loss")
    (want_dx,) = grads_of(want, np.ones(want.shape, np.float32), xt)
    close(dlogits, want_dx, "dlogits")


@pytest.mark.parametrize("b,h,tq,tk,e,ev", [(1, 1, 1, 1, 1, 1), (2, 3, 17, 33, 8, 5), (1, 2, 70, 70, 16, 16)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_attention_forward_backward(b, h, tq, tk, e, ev, is_causal, padding):
    q, k, v = randn((b, h, tq, e), 1), randn((b, h, tk, e), 2), randn((b, h, tk, ev), 3)
    g = randn((b, h, tq, ev), 4)
    mask = None
    if padding:  # key padding: (B, 1, 1, Tk) boolean, True = attend; the last batch entry sees 1 key
        mask = np.ones((b, 1, 1, tk), dtype=bool)
        mask[-1, ..., 1:] = False
    qt, kt, vt = (tfm_rs.tensor(a, requires_grad=True) for a in (q, k, v))
    if is_causal and padding:  # the CPU op takes one or the other (as PyTorch); the GPU kernel both
        cpu_mask, cpu_causal = mask & np.tril(np.ones((tq, tk), dtype=bool)), False
    else:
        cpu_mask, cpu_causal = mask, is_causal
    want = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=cpu_mask, is_causal=cpu_causal)
    out, lse = tfm_rs.gpu.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    close(out, want, "out")
    assert lse.shape == (b, h, tq)
    want_grads = grads_of(want, g, qt, kt, vt)
    got = tfm_rs.gpu.attention_backward(g, q, k, v, out, lse, attn_mask=mask, is_causal=is_causal)
    for name, x, y in zip(("dq", "dk", "dv"), got, want_grads):
        close(x, y, name)


@pytest.mark.parametrize("decoupled,amsgrad,weight_decay",
                         [(False, False, 0.0), (True, False, 0.01), (False, True, 0.1)])
def test_adam_step(decoupled, amsgrad, weight_decay):
    p0 = randn((33, 7), 1)
    param = tfm_rs.tensor(p0, requires_grad=True)
    cls = tfm_rs.optim.AdamW if decoupled else tfm_rs.optim.Adam
    opt = cls([param], lr=1e-2, betas=(0.9, 0.98), weight_decay=weight_decay, amsgrad=amsgrad)
    state = (p0, np.zeros_like(p0), np.zeros_like(p0), None)
    for step in (1, 2, 3):
        g = randn((33, 7), 10 + step)
        param.grad = None
        (param * tfm_rs.tensor(g)).sum().backward()
        opt.step()
        state = tfm_rs.gpu.adam_step(state[0], g, state[1], state[2], step, lr=1e-2, betas=(0.9, 0.98),
                                     weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad,
                                     max_exp_avg_sq=state[3])
    close(state[0], param.numpy(), rtol=1e-5)


@pytest.mark.no_gpu_needed
def test_gpu_calls_raise_device_error_without_an_adapter(tmp_path):
    """A subprocess with TFM_RS_GPU=0 sees no adapter: every call raises DeviceError, nothing panics."""
    import subprocess
    import sys

    code = (
        "import numpy as np, tfm_rs\n"
        "assert tfm_rs.gpu_available() is False and tfm_rs.gpu_info() is None\n"
        "x = np.ones((2, 3), np.float32)\n"
        "for call in (lambda: tfm_rs.gpu.matmul(x, x.T), lambda: tfm_rs.gpu.softmax(x),\n"
        "             lambda: tfm_rs.gpu.scaled_dot_product_attention(x[None], x[None], x[None])):\n"
        "    try:\n"
        "        call()\n"
        "    except tfm_rs.DeviceError as e:\n"
        "        assert isinstance(e, tfm_rs.TfmError) and isinstance(e, RuntimeError), e\n"
        "    else:\n"
        "        raise AssertionError('no DeviceError')\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TFM_RS_GPU="0")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
