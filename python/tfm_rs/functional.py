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

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from tfm_rs import _core, amp
from tfm_rs import masks as _masks
from tfm_rs._core import Tensor

ArrayLike = Union[Tensor, np.ndarray, float]
IdsLike = Union[np.ndarray, Sequence[int]]

__all__ = [
    "add_layer_norm",
    "attention_with_weights",
    "batch_norm",
    "conv1d",
    "cross_entropy",
    "dropout",
    "embedding",
    "gelu",
    "silu",
    "hash_embedding",
    "layer_norm",
    "linear",
    "linear_attention",
    "log_softmax",
    "lsh_attention",
    "masked_batch_norm",
    "matmul",
    "relu",
    "rms_norm",
    "scaled_dot_product_attention",
    "sigmoid",
    "softmax",
    "tanh",
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


def sigmoid(input: ArrayLike) -> Tensor:
    """``1 / (1 + e^{-x})``."""
    return _tensor(input).sigmoid()


def tanh(input: ArrayLike) -> Tensor:
    """``tanh x``."""
    return _tensor(input).tanh()


def _tensor(x: ArrayLike) -> Tensor:
    return x if isinstance(x, Tensor) else _core.tensor(np.asarray(x, dtype=np.float32))


def gelu(input: ArrayLike, approximate: str = "none") -> Tensor:
    """GELU, ``x·Φ(x)``; ``approximate="tanh"`` uses the tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise _core.InvalidArgumentError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _core.gelu(input, approximate == "tanh")


def silu(input: ArrayLike, inplace: bool = False) -> Tensor:
    """SiLU ("swish"), ``x·σ(x)``. ``inplace`` is accepted for PyTorch's signature; the
    result is always a new tensor."""
    return _core.silu(input)


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
                                                             scale, amp.current())
    return _core.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                              amp.current())


def linear_attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, causal: bool = False,
                     feature_map: str = "elu", key_padding_mask: Optional[ArrayLike] = None) -> Tensor:
    """Linear attention (Katharopoulos et al. 2020, tfm_rs extension): ``φ(Q)(φ(K)ᵀV)``
    normalised by ``φ(Q)(φ(K)ᵀ1)`` with ``φ(x) = elu(x) + 1``, for q ``(..., L, E)``,
    k ``(..., S, E)``, v ``(..., S, Ev)`` → ``(..., L, Ev)``. ``causal`` (L = S) lets query ``t``
    see keys ``s ≤ t``, computed by prefix sums. ``key_padding_mask``: boolean, broadcastable to
    k's ``(..., S)``, ``True`` for keys to leave out (a query left with no key gets zeros). Time
    O(T·E·Ev), state O(E·Ev) per head; no scale. CPU only (a GPU tensor is a ``DeviceError``)."""
    return _core.linear_attention(q, k, v, causal, feature_map,
                                  _key_padding("linear_attention", key_padding_mask, k))


def _key_padding(op: str, mask: Optional[ArrayLike], keys: ArrayLike) -> Optional[List[bool]]:
    """A boolean ``key_padding_mask`` broadcast to the keys' ``(..., S)`` and flattened, as the
    Rust ops take it; ``None`` stays ``None``."""
    if mask is None:
        return None
    m = np.asarray(mask.numpy() if isinstance(mask, Tensor) else mask)
    if m.dtype != np.bool_:
        raise _core.InvalidArgumentError(f"{op}: key_padding_mask must be boolean (True = leave the key out), "
                                         f"got dtype {m.dtype}")
    shape = tuple(keys.shape[:-1]) if isinstance(keys, Tensor) else np.shape(keys)[:-1]
    try:
        return np.broadcast_to(m, shape).ravel().tolist()
    except ValueError:
        raise _core.ShapeError(f"{op}: key_padding_mask of shape {m.shape} does not broadcast to the keys' "
                               f"{shape}") from None


def lsh_attention(qk: ArrayLike, v: ArrayLike, n_hashes: int = 4, bucket_size: int = 64, causal: bool = False,
                  seed: int = 0, key_padding_mask: Optional[ArrayLike] = None) -> Tensor:
    """Reformer LSH self-attention (Kitaev et al. 2020, tfm_rs extension) with shared queries
    and keys: qk ``(..., T, E)``, v ``(..., T, Ev)`` → ``(..., T, Ev)``. Keys are qk's rows
    normalised; ``n_hashes`` rounds of random rotations (drawn from ``seed``) sort the tokens
    into ``T / bucket_size`` buckets (1 or even; T a multiple of ``bucket_size``), and each chunk
    of ``bucket_size`` sorted tokens attends to itself and the previous chunk. A token attends to
    itself only when nothing else is visible. ``causal``: keys at positions ``≤`` the query's.
    ``key_padding_mask``: boolean, broadcastable to qk's ``(..., T)``, ``True`` for keys no query
    attends to (they are still hashed and take chunk places, as in the Reformer). CPU only."""
    return _core.lsh_attention(qk, v, n_hashes, bucket_size, causal, seed,
                               _key_padding("lsh_attention", key_padding_mask, qk))


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
def batch_norm(input: ArrayLike, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization of ``input (N, C)`` or ``(N, C, L)`` per channel, as PyTorch's: with
    ``training`` (or no running statistics) the batch's mean and biased variance normalize, and
    ``running_mean``/``running_var`` (when given) move towards the batch's mean and *unbiased*
    variance by ``momentum``, in place; otherwise the running statistics normalize. A training
    batch needs more than one value per channel."""
    return _batch_norm(input, None, running_mean, running_var, weight, bias, training, momentum, eps, False)


def masked_batch_norm(input: ArrayLike, padding_mask: Optional[IdsLike], running_mean: Optional[Tensor],
                      running_var: Optional[Tensor], weight: Optional[ArrayLike] = None,
                      bias: Optional[ArrayLike] = None, training: bool = False, momentum: float = 0.1,
                      eps: float = 1e-5) -> Tensor:
    """Batch normalization of a padded sequence batch ``input (N, T, C)`` (channels last) whose
    statistics skip the positions where ``padding_mask (N, T)`` is ``True`` (tfm_rs extension;
    the key-padding convention of :class:`tfm_rs.nn.MultiheadAttention`). Padded positions are
    normalized with the same statistics but do not move them; otherwise as :func:`batch_norm`."""
    keep = None
    if padding_mask is not None:
        mask = np.asarray(padding_mask)
        if mask.dtype != np.bool_:
            raise _core.InvalidArgumentError(f"masked_batch_norm: padding_mask must be boolean, got {mask.dtype}")
        shape = tuple(input.shape)
        if len(shape) != 3 or mask.shape != shape[:2]:
            raise _core.ShapeError(f"masked_batch_norm: padding_mask {mask.shape} must be (N, T) of an (N, T, C) "
                                   f"input, got input {shape}")
        keep = (~mask).astype(np.int64)
    return _batch_norm(input, keep, running_mean, running_var, weight, bias, training, momentum, eps, True)


def _batch_norm(input: ArrayLike, keep: Optional[np.ndarray], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], weight: Optional[ArrayLike], bias: Optional[ArrayLike],
                training: bool, momentum: Optional[float], eps: float, channels_last: bool) -> Tensor:
    if (running_mean is None) != (running_var is None):
        raise _core.InvalidArgumentError("batch_norm: give both running_mean and running_var, or neither")
    use_batch = bool(training) or running_mean is None
    y, mean, var = _core.batch_norm(input, keep, weight, bias, running_mean, running_var, use_batch, eps,
                                    channels_last)
    if training and running_mean is not None:
        m = 0.0 if momentum is None else float(momentum)
        # In place, as PyTorch: the (C,) buffers are tiny, so NumPy arithmetic costs nothing here.
        running_mean.copy_((1.0 - m) * running_mean.numpy() + m * mean.numpy())
        running_var.copy_((1.0 - m) * running_var.numpy() + m * var.numpy())
    return y


def hash_embedding(input: IdsLike, weight: ArrayLike, importance: Optional[ArrayLike], num_embeddings: int,
                   num_hashes: int = 2, seed: Optional[int] = 0) -> Tensor:
    """Hash embedding (Svenstrup et al. 2017; tfm_rs extension): each id of ``input`` (any shape,
    in ``[0, num_embeddings)``) sums ``num_hashes`` rows of the bucket pool ``weight
    (num_buckets, D)``, chosen by fixed integer hashes keyed by ``seed``, weighted by its row of
    ``importance (num_embeddings, num_hashes)`` (unit weights when ``None``) →
    ``input.shape + (D,)``. ``seed=None`` is the identity hash ``id mod num_buckets``."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise _core.InvalidArgumentError(f"hash_embedding: seed must be an integer, got {seed!r}")
    s = None if seed is None else int(seed) % (1 << 64)
    return _core.hash_embedding(input, weight, importance, int(num_embeddings), int(num_hashes), s)


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
