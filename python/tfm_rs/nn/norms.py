"""The normalization a Transformer layer uses, chosen by name: ``"layer"`` (LayerNorm, the
paper's), ``"rms"`` (RMSNorm: no centring, no bias) or ``"batch"`` (batch norm over the real
positions of the batch, :class:`~tfm_rs.nn.MaskedBatchNorm1d`).

Layers and models build every norm through :func:`make_norm` and apply it through
:func:`apply_norm` / :func:`add_norm`, which hand batch norm the padding mask (``True`` =
padding) so that padded positions do not move its statistics, and keep LayerNorm's fused
residual kernel.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.nn.batch_norm import MaskedBatchNorm1d
from tfm_rs.nn.module import Module
from tfm_rs.nn.normalization import LayerNorm, RMSNorm

__all__ = ["NORMS", "add_norm", "apply_norm", "make_norm"]

NORMS = ("layer", "rms", "batch")


def check_norm(norm: str, owner: str) -> str:
    if norm not in NORMS:
        raise InvalidArgumentError(f"{owner}: norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    return norm


def make_norm(norm: str, d_model: int, eps: float = 1e-5, bias: bool = True) -> Module:
    """A normalization over the last axis of width ``d_model``: LayerNorm (``eps``, ``bias``),
    RMSNorm (``eps``; it has no bias) or MaskedBatchNorm1d (``eps``; momentum 0.1)."""
    check_norm(norm, "make_norm")
    if norm == "layer":
        return LayerNorm(d_model, eps=eps, bias=bias)
    if norm == "rms":
        return RMSNorm(d_model, eps=eps)
    return MaskedBatchNorm1d(d_model, eps=eps)


def _bool_mask(padding_mask: Any) -> Optional[np.ndarray]:
    """A key-padding mask as the boolean ``(N, T)`` batch norm takes; a float mask (added to
    scores) marks padding with ``-inf``."""
    if padding_mask is None:
        return None
    m = padding_mask.numpy() if isinstance(padding_mask, Tensor) else np.asarray(padding_mask)
    return m if m.dtype == np.bool_ else np.isneginf(m)


def apply_norm(norm: Module, x: Tensor, padding_mask: Any = None) -> Tensor:
    """``norm(x)``; batch norm gets the padding mask ``(N, T)`` of ``x (N, T, C)``."""
    if isinstance(norm, MaskedBatchNorm1d):
        return norm(x, padding_mask=_bool_mask(padding_mask))
    return norm(x)


def add_norm(norm: Module, x: Tensor, residual: Tensor, padding_mask: Any = None) -> Tensor:
    """``norm(x + residual)``: LayerNorm's fused kernel, else the sum then :func:`apply_norm`."""
    if isinstance(norm, LayerNorm):
        return norm.add_forward(x, residual)
    return apply_norm(norm, x + residual, padding_mask)
