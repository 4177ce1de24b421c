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

from tfm_rs import _core, amp
from tfm_rs import masks as _masks
from tfm_rs._core import Tensor

ArrayLike = Union[Tensor, np.ndarray, float]
IdsLike = Union[np.ndarray, Sequence[int]]

__all__ = [
    "add_layer_norm",
    "attention_with_weights",
    "cross_entropy",
    "dropout",
    "embedding",
    "gelu",
    "layer_norm",
    "linear",
    "log_softmax",
    "matmul",
    "relu",
    "rms_norm",
    "scaled_dot_product_attention",
    "softmax",
]


def linear(input: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None) -> Tensor:
    """``input @ weight.T + bias``. input ``(*, in_features)``, weight ``(out_features,
    in_features)``, bias ``(out_features,)`` → ``(*, out_features)``. The bias is added inside
    the GEMM."""
    return _core.linear(input, weight, bias, amp.current())


def rms_norm(input: ArrayLike, normalized_shape: Union[int, Sequence[int]], weight: Optional[ArrayLike] = None,
             eps: Optional[float] = None) -> Tensor:
    """RMS normalization over the trailing ``normalized_shape`` dimensions:
    ``input / sqrt(mean(input²) + eps) * weight`` (``eps=None``: float32's machine epsilon, as
    PyTorch)."""
    return _core.rms_norm(input, _shape(normalized_shape), weight, eps)


def matmul(input: ArrayLike, other: ArrayLike) -> Tensor:
    """Matrix product with ``torch.matmul`` semantics (1-D promotion, broadcast batch dims)."""
    return _core.matmul(input, other, amp.current())


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
    ``i`` see keys ``j ≤ i``. See the module docstring for masks.

    ``attn_mask`` may also be a structured :class:`tfm_rs.masks.Mask` (causal, sliding window,
    global tokens, key padding, BigBird block-sparse, and their ``&``/``|``): a block-skipping
    kernel then skips the key blocks the mask empties, forward and backward (CPU tensors only; a
    GPU tensor with a structured mask is a ``DeviceError``). Fold causality into the mask
    (``& masks.causal()``): ``is_causal=True`` with a structured mask is an error."""
    if isinstance(attn_mask, _masks.Mask):
        if is_causal:
            raise _core.InvalidArgumentError(
                "scaled_dot_product_attention: is_causal=True with a structured mask; "
                "use attn_mask=mask & masks.causal()")
        L, S = _lengths(query, key)
        return _core.scaled_dot_product_attention_structured(query, key, value, attn_mask._spec(L, S), dropout_p,
                                                             scale)
    return _core.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                              amp.current())


def attention_with_weights(query: ArrayLike, key: ArrayLike, value: ArrayLike, attn_mask: Optional[ArrayLike] = None,
                           dropout_p: float = 0.0, is_causal: bool = False,
                           scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """Like :func:`scaled_dot_product_attention`, but materializes and also returns the
    attention weights ``(..., L, S)`` (after masking, before dropout) for inspection. A
    structured mask is applied as its ``to_dense(L, S)`` (the weights are ``L × S`` anyway)."""
    if isinstance(attn_mask, _masks.Mask):
        attn_mask = attn_mask.to_dense(*_lengths(query, key))
    return _core.attention_with_weights(query, key, value, attn_mask, dropout_p, is_causal, scale)


def _lengths(query: ArrayLike, key: ArrayLike) -> Tuple[int, int]:
    """(L, S): the query and key lengths of attention inputs."""
    qs, ks = np.shape(query) if not isinstance(query, Tensor) else query.shape, (
        np.shape(key) if not isinstance(key, Tensor) else key.shape)
    if len(qs) < 2 or len(ks) < 2:
        raise _core.ShapeError(f"scaled_dot_product_attention: query and key need (..., L, E), (..., S, E); "
                               f"got {tuple(qs)}, {tuple(ks)}")
    return int(qs[-2]), int(ks[-2])


def _shape(normalized_shape: Union[int, Sequence[int]]) -> list:
    if isinstance(normalized_shape, (int, np.integer)):
        return [int(normalized_shape)]
    return [int(d) for d in normalized_shape]
