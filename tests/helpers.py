"""Shared test tools: float64 references, central finite differences, tolerances.

Tolerances used across the suite (float32 kernels against float64 references):
  FWD_RTOL/FWD_ATOL  forward values: ~1e-5 relative
  GRAD_RTOL/GRAD_ATOL gradients: ~1e-4 relative (they chain several float32 products)
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

import tfm_rs

FWD_RTOL, FWD_ATOL = 1e-5, 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-4

# Sizes that are not multiples of any SIMD width or tile.
AWKWARD = (1, 3, 17, 127)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(shape: Sequence[int], seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


def leaf(a: np.ndarray) -> tfm_rs.Tensor:
    return tfm_rs.tensor(a, requires_grad=True)


def assert_close(actual, expected, rtol: float = FWD_RTOL, atol: float = FWD_ATOL, what: str = "") -> None:
    actual = actual.numpy() if isinstance(actual, tfm_rs.Tensor) else np.asarray(actual)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def numeric_grad(f: Callable[..., np.ndarray], inputs: Sequence[np.ndarray], upstream: np.ndarray,
                 eps: float = 1e-6) -> list[np.ndarray]:
    """Central differences of ``sum(f(*inputs) * upstream)`` in float64 with respect to each input."""
    xs = [np.array(x, dtype=np.float64) for x in inputs]
    grads = []
    for x in xs:
        g = np.zeros_like(x)
        flat, gflat = x.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            hi = np.sum(f(*xs) * upstream)
            flat[i] = old - eps
            lo = np.sum(f(*xs) * upstream)
            flat[i] = old
            gflat[i] = (hi - lo) / (2 * eps)
        grads.append(g)
    return grads


def check_op(tfm_fn: Callable[..., tfm_rs.Tensor], ref_fn: Callable[..., np.ndarray], inputs: Sequence[np.ndarray],
             seed: int = 1, fd: bool = True, grad_rtol: float = GRAD_RTOL, grad_atol: float = GRAD_ATOL) -> None:
    """Forward against the float64 reference; backward against the reference's finite differences."""
    leaves = [leaf(x) for x in inputs]
    out = tfm_fn(*leaves)
    expected = ref_fn(*[x.astype(np.float64) for x in inputs])
    assert out.shape == tuple(np.shape(expected)), (out.shape, np.shape(expected))
    assert_close(out, expected, what="forward")
    upstream = randn(np.shape(expected), seed=seed)
    out.backward(upstream)
    if fd:
        for x, t, g in zip(inputs, leaves, numeric_grad(ref_fn, inputs, upstream.astype(np.float64))):
            assert t.grad is not None
            assert_close(t.grad, g, rtol=grad_rtol, atol=grad_atol, what="gradient")


def require_gpu() -> None:
    """Skips the calling test, with the reason, when there is no GPU adapter; fails it instead
    under TFM_RS_REQUIRE_GPU=1 (set by scripts/test.sh where a Vulkan driver is present)."""
    import pytest

    if tfm_rs.gpu_available():
        return
    reason = f"no GPU adapter: {tfm_rs.gpu_info(reason=True)}"
    if os.environ.get("TFM_RS_REQUIRE_GPU") == "1":
        pytest.fail(f"TFM_RS_REQUIRE_GPU=1 but {reason}")
    pytest.skip(reason)
