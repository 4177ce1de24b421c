"""Every op with a GPU kernel, through ``Tensor.to("gpu")`` and autograd, against the same op on
the CPU: forward values and the gradients of every input, on awkward shapes.

Runs on whatever adapter wgpu finds; in CI that is Mesa's lavapipe (software Vulkan), which
scripts/test.sh installs. Without an adapter each test skips with the reason, unless
TFM_RS_REQUIRE_GPU=1 (set by scripts/test.sh where a Vulkan driver is present), where it fails.
Sizes stay small: lavapipe runs the shaders on the CPU.

Error measure: ``max|gpu - cpu| / rms(cpu)`` per output (the kernels compute the CPU's formulas;
only summation orders and the exp/log implementations differ). Each tolerance is a small factor
above the largest error measured on lavapipe (Mesa 22-25, x86-64), stated beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from tfm_rs import optim
from helpers import AWKWARD, randn, require_gpu

# Largest error measured on lavapipe (llvmpipe, Mesa 22.3.6, LLVM 15, x86-64) in comments; each
# tolerance is 3-5x above it. Data movement (embedding, dropout masks, relu) is exact.
TOL_EXACT = 0.0
TOL_ELEMENTWISE = 3e-6  # one rounding per op; exp/log/tanh/erf in WGSL (measured 9.2e-7)
TOL_REDUCE = 1e-5  # sums, softmax, layer norm, cross entropy, norms: summation order (measured 2.7e-6)
TOL_MATMUL = 4e-6  # GEMM tiles sum k in another order (measured 1.1e-6)
TOL_ATTENTION = 2e-5  # online softmax over key blocks, and its backward (measured 4.6e-6)
TOL_OPTIM = 1e-6  # three Adam/SGD steps with clipping on the same gradients (measured 2.6e-7)


@pytest.fixture(autouse=True)
def gpu(request):
    if "no_gpu_needed" not in request.keywords:
        require_gpu()


def rel_err(got: np.ndarray, want: np.ndarray, floor: float = 0.0) -> float:
    """``max|got - want| / max(rms(want), floor)`` (``max|got - want|`` when that is zero); both
    must have the same shape and the same non-finite entries."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    diff = np.abs(got[finite] - want[finite])
    if diff.size == 0:
        return 0.0
    scale = max(float(np.sqrt(np.mean(want[finite] ** 2))), floor)
    return float(diff.max() / scale) if scale > 0 else float(diff.max())


def close(got, want, tol: float, what: str = "", floor: float = 0.0) -> None:
    got = got.numpy() if isinstance(got, tfm_rs.Tensor) else got
    want = want.numpy() if isinstance(want, tfm_rs.Tensor) else want
    err = rel_err(got, want, floor)
    if os.environ.get("TFM_RS_GPU_ERRORS"):  # measuring the tolerances: print each error
        print(f"\nGPU-ERR {os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]} {what}: {err:.3g}")
    assert err <= tol, f"{what}: GPU vs CPU error {err:.3g} > {tol:.3g}"


def compare(fn: Callable[..., tfm_rs.Tensor], inputs: Sequence[np.ndarray], tol: float, grad_tol: float | None = None,
            seed: int | None = None, what: str = "", grad_floor: float = 0.0) -> tfm_rs.Tensor:
    """Runs ``fn`` on leaves made from ``inputs`` on the CPU and on the GPU (with the same
    ``tfm_rs.manual_seed(seed)`` when given), checks the GPU output stays on the GPU and matches,
    then backpropagates the same random upstream gradient on both and compares every input's
    gradient (``grad_floor``: see ``rel_err``). Returns the CPU output."""
    outs, grads = [], []
    for device in ("cpu", "gpu"):
        leaves = [tfm_rs.tensor(a).to(device).requires_grad_(True) for a in inputs]
        if seed is not None:
            tfm_rs.manual_seed(seed)
        out = fn(*leaves)
        assert out.device == device, f"{what}: output on {out.device}"
        upstream = tfm_rs.tensor(randn(out.shape, 99) if out.shape else np.float32(1.0)).to(device)
        out.backward(upstream)
        for leaf in leaves:
            assert leaf.grad is not None and leaf.grad.device == device, f"{what}: gradient device"
        outs.append(out.numpy())
        grads.append([leaf.grad.numpy() for leaf in leaves])
    close(outs[1], outs[0], tol, f"{what} forward")
    for i, (g_gpu, g_cpu) in enumerate(zip(grads[1], grads[0])):
        close(g_gpu, g_cpu, tol if grad_tol is None else grad_tol, f"{what} grad of input {i}", grad_floor)
    return outs[0]


def test_gpu_info_describes_the_adapter():
    info = tfm_rs.gpu_info()
    assert set(info) == {"name", "backend", "device_type", "driver"}
    assert info["name"]


# ----------------------------------------------------------------------------------- matmul

SHAPES = [(1, 1, 1), (3, 17, 5), (17, 127, 3), (127, 3, 17), (130, 20, 129)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("layout", ["ab", "abT", "aTb"])
def test_matmul_layouts(m, k, n, layout):
    """A·B, A·Bᵀ (B stored (n, k), as Linear's weight) and Aᵀ·B (A stored (k, m))."""
    a = randn((k, m) if layout == "aTb" else (m, k), 1)
    b = randn((n, k) if layout == "abT" else (k, n), 2)

    def fn(a, b):
        return F.matmul(a.t() if layout == "aTb" else a, b.t() if layout == "abT" else b)

    compare(fn, [a, b], TOL_MATMUL, what=f"{layout} {m}x{k}x{n}")


@pytest.mark.parametrize("m,k,n", SHAPES[1:])
def test_linear_with_bias(m, k, n):
    compare(F.linear, [randn((2, m, k), 1), randn((n, k), 2), randn((n,), 3)], TOL_MATMUL, what="linear")


def test_matmul_batched_and_broadcast():
    a, b, w = randn((4, 3, 17, 9), 1), randn((4, 3, 9, 5), 2), randn((9, 5), 3)
    compare(F.matmul, [a, b], TOL_MATMUL, what="batched")
    compare(F.matmul, [a, w], TOL_MATMUL, what="broadcast weight")
    g = tfm_rs.tensor(a).to("gpu")
    with pytest.raises(tfm_rs.ShapeError):
        F.matmul(g, tfm_rs.tensor(randn((8, 5), 4)).to("gpu"))


# ---------------------------------------------------------------------- normalizations

@pytest.mark.parametrize("cols", AWKWARD + (300,))
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax_and_log_softmax(cols, log, masked):
    x = randn((5, cols), 1, scale=3.0)
    mask = None
    if masked:
        mask = np.ones((5, cols), dtype=bool)
        mask[:, ::3] = False
        mask[1] = False  # a fully masked row
    op = F.log_softmax if log else F.softmax
    compare(lambda x: op(x, -1, mask=mask), [x], TOL_REDUCE, what=f"{'log_' if log else ''}softmax")


@pytest.mark.parametrize("d", AWKWARD + (1030,))
def test_layer_norm(d):
    x, w, b = randn((6, d), 1) + 3.0, randn((d,), 3) + 1.0, randn((d,), 4)
    compare(lambda x, w, b: F.layer_norm(x, d, w, b, 1e-5), [x, w, b], TOL_REDUCE, what="layer_norm")
    compare(lambda x: F.layer_norm(x, d), [x], TOL_REDUCE, what="layer_norm without affine")


@pytest.mark.parametrize("d", (3, 17, 127))
def test_add_layer_norm(d):
    x, r, w, b = randn((2, 3, d), 1), randn((2, 3, d), 2), randn((d,), 3) + 1.0, randn((d,), 4)
    compare(lambda x, r, w, b: F.add_layer_norm(x, r, d, w, b), [x, r, w, b], TOL_REDUCE, what="add_layer_norm")


# --------------------------------------------------------------------------- activations

@pytest.mark.parametrize("kind", ["relu", "gelu", "gelu_tanh", "silu"])
def test_activations(kind):
    x = randn((7, 129), 1, scale=3.0)

    def fn(x):
        if kind in ("relu", "silu"):
            return getattr(F, kind)(x)
        return F.gelu(x, approximate="tanh" if kind == "gelu_tanh" else "none")

    compare(fn, [x], TOL_EXACT if kind == "relu" else TOL_ELEMENTWISE, what=kind)


@pytest.mark.parametrize("n,p", [(1, 0.5), (4099, 0.1), (1000, 0.9)])
def test_dropout_uses_the_cpu_masks(n, p):
    """Under the same manual_seed both devices drop the same elements (the training tests rely on it)."""
    x = randn((n,), 1) + 5.0
    want = compare(lambda x: F.dropout(x, p, training=True), [x], TOL_EXACT, seed=7, what="dropout")
    if n > 1:  # both kept and dropped elements, so equal masks say something
        assert 0 < np.count_nonzero(want) < n


# ---------------------------------------------------------------- embedding and the loss

def test_embedding_with_padding_idx():
    v, d = 50, 17
    ids = np.random.default_rng(0).integers(0, v, size=(4, 9))
    ids[0, :3] = 3
    compare(lambda w: F.embedding(ids, w, padding_idx=3), [randn((v, d), 1)], TOL_EXACT, what="embedding")
    with pytest.raises(tfm_rs.IndexOutOfRangeError):
        F.embedding(np.array([v]), tfm_rs.tensor(randn((v, d), 1)).to("gpu"))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy(reduction, label_smoothing):
    n, c = 11, 37
    t = np.random.default_rng(2).integers(0, c, size=n)
    t[::4] = -100

    def fn(x):
        return F.cross_entropy(x, t, ignore_index=-100, reduction=reduction, label_smoothing=label_smoothing)

    compare(fn, [randn((n, c), 1, scale=3.0)], TOL_REDUCE, what="cross_entropy")


# ------------------------------------------------------------------------------ attention

@pytest.mark.parametrize("b,h,tq,tk,e,ev", [(1, 1, 1, 1, 1, 1), (2, 3, 17, 33, 8, 5), (1, 2, 70, 70, 16, 16)])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding", "float"])
def test_scaled_dot_product_attention(b, h, tq, tk, e, ev, mask_kind):
    q, k, v = randn((b, h, tq, e), 1), randn((b, h, tk, e), 2), randn((b, h, tk, ev), 3)
    mask = None
    if mask_kind == "padding":  # (B, 1, 1, Tk) boolean, True = attend; the last batch entry sees 1 key
        mask = np.ones((b, 1, 1, tk), dtype=bool)
        mask[-1, ..., 1:] = False
    elif mask_kind == "float":  # an additive (Tq, Tk) mask
        mask = randn((tq, tk), 5)

    def fn(q, k, v):
        m = tfm_rs.tensor(mask).to(q.device) if mask is not None and mask.dtype != bool else mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=mask_kind == "causal")

    # A query row that sees one key has exactly zero dq and dk; the CPU leaves rounding residues
    # (~1e-6 of the unit-scale terms it sums) where the GPU gives 0, so gradients are measured
    # against unit scale (inputs and upstream gradient are standard normal) rather than their own.
    compare(fn, [q, k, v], TOL_ATTENTION, what=f"sdpa {mask_kind}", grad_floor=1.0 if mask_kind == "padding" else 0.0)


def test_scaled_dot_product_attention_dropout():
    q, k, v = randn((2, 2, 17, 8), 1), randn((2, 2, 19, 8), 2), randn((2, 2, 19, 8), 3)

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.2, is_causal=False)

    compare(fn, [q, k, v], TOL_ATTENTION, seed=11, what="sdpa dropout")


# ------------------------------------------------------------ elementwise and reductions

ELEMENTWISE = {
    "add_broadcast": (lambda a, b: a + b, [(3, 17, 5), (17, 1)]),
    "sub": (lambda a, b: a - b, [(4, 127), (4, 127)]),
    "mul_broadcast": (lambda a, b: a * b, [(2, 1, 17), (3, 1)]),
    "div": (lambda a, b: a / (b * b + 1.0), [(5, 17), (5, 17)]),
    "scalar_ops": (lambda a: (2.0 - a) * 3.0 / 4.0 + 1.0, [(17, 3)]),
    "neg_pow": (lambda a: -(a**2), [(127,)]),
    "exp_log_sqrt": (lambda a: ((a * 0.5).exp() + 1.0).log().sqrt(), [(3, 17)]),
    "tanh": (lambda a: a.tanh(), [(1, 127)]),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_and_broadcast(name):
    fn, shapes = ELEMENTWISE[name]
    compare(fn, [randn(s, i + 1) for i, s in enumerate(shapes)], TOL_ELEMENTWISE, what=name)


@pytest.mark.parametrize("dim,keepdim", [(None, False), (0, False), (-1, True), ((0, 2), False)])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_reductions(dim, keepdim, op):
    def fn(x):
        return getattr(x, op)(dim, keepdim) if dim is not None else getattr(x, op)()

    compare(fn, [randn((3, 17, 127), 1)], TOL_REDUCE, what=f"{op} dim={dim}")


# ------------------------------------------------------------------ optimizers and clipping

@pytest.mark.parametrize("make", [
    lambda ps: optim.Adam(ps, lr=1e-2, betas=(0.9, 0.98)),
    lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.1, amsgrad=True),
    lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.01),
    lambda ps: optim.SGD(ps, lr=1e-1, momentum=0.9, nesterov=True, weight_decay=0.01),
], ids=["adam", "adam_l2_amsgrad", "adamw", "sgd_nesterov"])
def test_optimizer_steps(make):
    """Three steps on the same gradients, with clipping: parameters agree on both devices."""
    w0 = [randn((33, 7), 1), randn((7,), 2)]
    result = []
    for device in ("cpu", "gpu"):
        params = [tfm_rs.tensor(w).to(device).requires_grad_(True) for w in w0]
        opt = make(params)
        for step in range(3):
            opt.zero_grad()
            loss = sum((p * tfm_rs.tensor(randn(p.shape, 10 + step, scale=3.0)).to(device)).sum() for p in params)
            loss.backward()
            optim.clip_grad_norm_(params, 5.0)
            opt.step()
        assert all(p.device == device for p in params)
        result.append([p.numpy() for p in params])
    for got, want in zip(*result[::-1]):
        close(got, want, TOL_OPTIM, "parameters after three steps")


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm(norm_type):
    grads = [randn((3, 17), 1, scale=5.0), randn((127,), 2, scale=5.0)]
    out = []
    for device in ("cpu", "gpu"):
        params = [tfm_rs.tensor(np.zeros_like(g)).to(device).requires_grad_(True) for g in grads]
        for p, g in zip(params, grads):
            p.grad = tfm_rs.tensor(g).to(device)
        total = optim.clip_grad_norm_(params, 1.0, norm_type=norm_type)
        out.append((total.numpy(), [p.grad.numpy() for p in params]))
    close(out[1][0], out[0][0], TOL_REDUCE, "total norm")
    for got, want in zip(out[1][1], out[0][1]):
        close(got, want, TOL_REDUCE, "clipped gradient")


# -------------------------------------------------------------------- without an adapter

@pytest.mark.no_gpu_needed
def test_without_an_adapter_moving_to_the_gpu_raises_device_error(tmp_path):
    """With TFM_RS_GPU=0 no adapter is visible: ``.to("gpu")`` raises DeviceError, nothing panics."""
    code = (
        "import numpy as np, tfm_rs\n"
        "assert tfm_rs.gpu_available() is False and tfm_rs.gpu_info() is None\n"
        "assert tfm_rs.gpu_info(reason=True)\n"
        "try:\n"
        "    tfm_rs.tensor(np.ones((2, 3), np.float32)).to('gpu')\n"
        "except tfm_rs.DeviceError as e:\n"
        "    assert isinstance(e, tfm_rs.TfmError) and isinstance(e, RuntimeError), e\n"
        "else:\n"
        "    raise AssertionError('no DeviceError')\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, env=dict(os.environ, TFM_RS_GPU="0"),
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.no_gpu_needed
@pytest.mark.parametrize("require,outcome", [("0", "1 skipped"), ("1", "1 error")])
def test_a_gpu_test_without_an_adapter_skips_or_fails(require, outcome):
    """A GPU test never passes without an adapter: skipped with the reason, or failed under
    TFM_RS_REQUIRE_GPU=1 (an error in the test's GPU fixture)."""
    env = dict(os.environ, TFM_RS_GPU="0", TFM_RS_REQUIRE_GPU=require)
    test = f"{Path(__file__)}::test_gpu_info_describes_the_adapter"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", test],
                       check=False, env=env, capture_output=True, text=True, cwd=Path(__file__).parent)
    assert outcome in r.stdout and "passed" not in r.stdout, r.stdout + r.stderr
    assert r.returncode == (0 if require == "0" else 1), r.stdout
    assert "no GPU adapter" in r.stdout, r.stdout
