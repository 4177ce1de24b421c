"""Gradient clipping with ``torch.nn.utils``'s names and semantics.

For CPU gradients the norms are computed in NumPy (float64, from ``p.grad.numpy()``) and the
scaled gradient is written back with ``p.grad = g * coef``. That costs a copy of every gradient
each step; a fused Rust kernel (one pass for the norm, one in-place scale) is the obvious
replacement once training speed matters. GPU gradients stay on the GPU: the 2-norm is
``sqrt((g * g).sum())`` there (one float comes back per parameter) and the scaling is a GPU
multiply; other norm types download the gradients for NumPy.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Union

import numpy as np

from tfm_rs import _core
from tfm_rs._core import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(parameters: Union[Tensor, Iterable[Tensor]]):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters: Union[Tensor, Iterable[Tensor]], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach=None) -> Tensor:
    """Scale the gradients of ``parameters`` in place so that their total ``norm_type``-norm (the norm
    of all gradients concatenated into one vector) is at most ``max_norm``; return that total norm,
    measured before clipping, as a 0-d Tensor.

    As in torch: parameters without a gradient are skipped (no gradient at all → norm 0);
    ``norm_type`` may be ``inf`` (max absolute value); the coefficient is
    ``max_norm / (total_norm + 1e-6)`` clamped to at most 1, so gradients under the limit are left
    as they are; a non-finite total norm raises :class:`tfm_rs.NonFiniteError` when
    ``error_if_nonfinite`` (otherwise the gradients are scaled by the non-finite coefficient, as
    torch does). ``foreach`` is accepted for signature compatibility and ignored.
    """
    params = _grads(parameters)
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not params:
        return _core.tensor(np.float32(0.0))
    on_gpu = norm_type == 2.0 and all(p.grad.device == "gpu" for p in params)
    if on_gpu:
        total = math.sqrt(sum(float((p.grad * p.grad).sum().item()) for p in params))
        grads: List[np.ndarray] = []
    elif math.isinf(norm_type):
        grads = [p.grad.numpy() for p in params]
        # max |g| over all gradients (of non-empty ones; an empty gradient contributes nothing)
        per = [float(np.max(np.abs(g))) if g.size else 0.0 for g in grads]
        total = max(per)
    else:
        grads = [p.grad.numpy() for p in params]
        # Per-tensor norms, then the norm of those norms: equal to the norm of the concatenation.
        per = [float(np.linalg.norm(g.astype(np.float64).ravel(), ord=norm_type)) if g.size else 0.0 for g in grads]
        total = float(np.linalg.norm(np.asarray(per, np.float64), ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise _core.NonFiniteError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is non-finite ({total}), so "
            "it cannot be clipped. Pass error_if_nonfinite=False to scale by the non-finite coefficient anyway.")
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        coef = min(max_norm / (total + 1e-6), 1.0) if math.isfinite(total) else max_norm / (total + 1e-6)
    if on_gpu and (coef < 1.0 or not math.isfinite(coef)):
        for p in params:
            p.grad = p.grad * float(np.float32(coef))
    elif coef < 1.0 or not math.isfinite(coef):
        c = np.float32(coef)
        for p, g in zip(params, grads):
            with np.errstate(invalid="ignore", over="ignore"):
                p.grad = _core.tensor((g * c).astype(np.float32, copy=False)).to(p.grad.device)
    return _core.tensor(np.float32(total))


def clip_grad_value_(parameters: Union[Tensor, Iterable[Tensor]], clip_value: float, foreach=None) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` in place (torch semantics)."""
    clip_value = float(clip_value)
    for p in _grads(parameters):
        clipped = np.clip(p.grad.numpy(), -clip_value, clip_value).astype(np.float32, copy=False)
        p.grad = _core.tensor(clipped).to(p.grad.device)
