"""Functional ops with ``torch.nn.functional``'s names, argument names and semantics.

Inputs may be :class:`tfm_rs.Tensor` or NumPy arrays (copied; float64 converted to float32).

Mask conventions (one place for all ops):

* Boolean masks follow ``torch.nn.functional.scaled_dot_product_attention``: ``True`` means
  *take part in attention*; ``False`` entries are excluded (their score becomes −∞).
* Float masks are *added* to the scores (use ``-inf`` or a large negative number to exclude).
* Masks broadcast against the scores ``(..., L, S)``: e.g. ``(L, S)`` for one mask shared by the
  batch, ``(N, 1, 1, S)`` for key padding, ``(N, H, L, S)`` for one mask per head.
* A query row whose every key is excluded yields zeros (never NaN) and zero gradients.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from tfm_rs import _core
from tfm_rs._core import Tensor

ArrayLike = Union[Tensor, np.ndarray, float]

__all__ = ["linear", "matmul"]


def linear(input: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None) -> Tensor:
    """``input @ weight.T + bias``. input ``(*, in_features)``, weight ``(out_features,
    in_features)``, bias ``(out_features,)`` → ``(*, out_features)``. The bias is added inside
    the GEMM."""
    return _core.linear(input, weight, bias)


def matmul(input: ArrayLike, other: ArrayLike) -> Tensor:
    """Matrix product with ``torch.matmul`` semantics (1-D promotion, broadcast batch dims)."""
    return _core.matmul(input, other)
