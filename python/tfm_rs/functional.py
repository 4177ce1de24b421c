"""Functional ops with ``torch.nn.functional``'s names, argument names and semantics.

Inputs may be :class:`tfm_rs.Tensor` or NumPy arrays (copied; float64 converted to float32).
Token ids and class targets are integer arrays (NumPy or lists).

Mask conventions (one place for all ops):

* Boolean masks follow ``torch.nn.functional.scaled_dot_product_attention``: ``True`` means
  *take part*; ``False`` entries are excluded (their score becomes −∞).
* Float masks are *added* to the scores (use ``-inf`` or a large negative number to exclude).
* Masks broadcast against the scores ``(..., L, S)``: e.g. ``(L, S)`` for one mask shared by the
  batch, ``(N, 1, 1, S)`` for key padding, ``(N, H, L, S)`` for one mask per head.
* A row whose every entry is excluded yields zeros (never NaN) and zero gradients.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from tfm_rs import _core
from tfm_rs._core import Tensor

ArrayLike = Union[Tensor, np.ndarray, float]
IdsLike = Union[np.ndarray, Sequence[int]]

__all__ = [
    "add_layer_norm",
    "attention_with_weights",
    "conv1d",
    "cross_entropy",
    "dropout",
    "embedding",
    "gelu",
    "layer_norm",
    "linear",
    "log_softmax",
    "matmul",
    "relu",
    "scaled_dot_product_attention",
    "softmax",
]


def linear(input: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None) -> Tensor:
    """``input @ weight.T + bias``. input ``(*, in_features)``, weight ``(out_features,
    in_features)``, bias ``(out_features,)`` → ``(*, out_features)``. The bias is added inside
    the GEMM."""
    return _core.linear(input, weight, bias)


def matmul(input: ArrayLike, other: ArrayLike) -> Tensor:
    """Matrix product with ``torch.matmul`` semantics (1-D promotion, broadcast batch dims)."""
    return _core.matmul(input, other)


def softmax(input: ArrayLike, dim: int = -1, *, mask: Optional[ArrayLike] = None) -> Tensor:
    """Softmax along ``dim`` (max-subtracted). ``mask`` (tfm_rs extension) follows the module's
    mask conventions; a fully masked row gives zeros."""
    return _core.softmax(input, dim, mask)


def log_softmax(input: ArrayLike, dim: int = -1, *, mask: Optional[ArrayLike] = None) -> Tensor:
    """Log-softmax along ``dim``. Masked entries give −∞ (their gradient is zero)."""
    return _core.log_softmax(input, dim, mask)


def layer_norm(input: ArrayLike, normalized_shape: Union[int, Sequence[int]], weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5) -> Tensor:
    """Layer normalization over the trailing ``normalized_shape`` dimensions (biased variance,
    as in PyTorch)."""
    return _core.layer_norm(input, _shape(normalized_shape), weight, bias, eps)


def add_layer_norm(input: ArrayLike, residual: ArrayLike, normalized_shape: Union[int, Sequence[int]],
                   weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, eps: float = 1e-5) -> Tensor:
    """``layer_norm(input + residual, …)`` in one pass (the post-LN residual connection)."""
    return _core.add_layer_norm(input, residual, _shape(normalized_shape), weight, bias, eps)


def relu(input: ArrayLike) -> Tensor:
    """``max(x, 0)``."""
    return _core.relu(input)


def gelu(input: ArrayLike, approximate: str = "none") -> Tensor:
    """GELU, ``x·Φ(x)``; ``approximate="tanh"`` uses the tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise _core.InvalidArgumentError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _core.gelu(input, approximate == "tanh")


def dropout(input: ArrayLike, p: float = 0.5, training: bool = True) -> Tensor:
    """Zeroes each element with probability ``p`` and scales the rest by ``1/(1-p)``. The mask
    is a function of a seed (see :func:`tfm_rs.manual_seed`) and the element index, so it does
    not depend on the thread count."""
    return _core.dropout(input, p, training)


def embedding(input: IdsLike, weight: ArrayLike, padding_idx: Optional[int] = None) -> Tensor:
    """Rows of ``weight (num_embeddings, embedding_dim)`` for integer ``input`` of any shape →
    ``input.shape + (embedding_dim,)``. The ``padding_idx`` row receives no gradient."""
    return _core.embedding(input, weight, padding_idx)


def cross_entropy(input: ArrayLike, target: IdsLike, weight: None = None, size_average: None = None,
                  ignore_index: int = -100, reduce: None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between logits ``input`` — ``(C,)``, ``(N, C)`` or ``(N, C, d1, …)`` — and
    class indices ``target`` — ``()``, ``(N,)`` or ``(N, d1, …)``, fused with log-softmax.

    ``label_smoothing`` mixes the target with the uniform distribution; positions whose target
    is ``ignore_index`` count neither in the loss nor in the mean. Unlike PyTorch, a ``"mean"``
    over a batch where every position is ignored is 0 (with zero gradients), not NaN. Class
    weights and the deprecated ``size_average``/``reduce`` are not supported.
    """
    if weight is not None or size_average is not None or reduce is not None:
        raise _core.InvalidArgumentError(
            "cross_entropy: weight, size_average and reduce are not supported; use reduction=")
    if reduction not in ("none", "mean", "sum"):
        raise _core.InvalidArgumentError(f"cross_entropy: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return _core.cross_entropy(input, target, ignore_index, reduction, label_smoothing)


def scaled_dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                                 attn_mask: Optional[ArrayLike] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None) -> Tensor:
    """``softmax(Q·Kᵀ·scale + mask)·V``, fused: query ``(..., L, E)``, key ``(..., S, E)``, value
    ``(..., S, Ev)`` → ``(..., L, Ev)``; ``scale`` defaults to ``1/√E``. The probabilities are
    never stored: the forward keeps the per-row log-sum-exp and the backward recomputes them
    block by block, so memory grows linearly in the sequence length. ``is_causal`` lets query
    ``i`` see keys ``j ≤ i``. See the module docstring for masks."""
    return _core.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale)


def attention_with_weights(query: ArrayLike, key: ArrayLike, value: ArrayLike, attn_mask: Optional[ArrayLike] = None,
                           dropout_p: float = 0.0, is_causal: bool = False,
                           scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """Like :func:`scaled_dot_product_attention`, but materializes and also returns the
    attention weights ``(..., L, S)`` (after masking, before dropout) for inspection."""
    return _core.attention_with_weights(query, key, value, attn_mask, dropout_p, is_causal, scale)


def _shape(normalized_shape: Union[int, Sequence[int]]) -> list:
    if isinstance(normalized_shape, (int, np.integer)):
        return [int(normalized_shape)]
    return [int(d) for d in normalized_shape]


def conv1d(input: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None, stride: int = 1,
           padding: Union[int, Tuple[int, int]] = 0, dilation: int = 1, groups: int = 1) -> Tensor:
    """1-D cross-correlation as ``torch.nn.functional.conv1d``: input ``(N, C_in, L)``, weight
    ``(C_out, C_in / groups, K)``, bias ``(C_out,)`` → ``(N, C_out, L_out)``, zero padding.
    ``padding`` (tfm_rs extension): an int for both sides or a ``(left, right)`` pair (causal
    convolutions pad the left only)."""
    pad = (padding, padding) if isinstance(padding, (int, np.integer)) else tuple(padding)
    if len(pad) != 2 or any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in pad):
        raise _core.InvalidArgumentError(f"conv1d: padding must be an int ≥ 0 or (left, right), got {padding!r}")
    return _core.conv1d(input, weight, bias, int(stride), (int(pad[0]), int(pad[1])), int(dilation), int(groups))
