"""``AdditiveAttention``: Bahdanau et al. (2015)'s attention, ``score(q, k) = vᵀ·tanh(W·q + U·k)``.

The projections ``W·q`` and ``U·k`` are linear layers (GEMMs); the scores of every (query, key)
pair come from one Rust op (:func:`tfm_rs._core.additive_attention_scores`) that never stores the
``(B, Tq, Tk, hidden_dim)`` tensor of ``tanh`` values, forward or backward; then a masked
softmax over the keys and the weighted sum of the values.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

import tfm_rs.functional as F
from tfm_rs import _core
from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.linear import Linear
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter

__all__ = ["AdditiveAttention"]


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else _core.tensor(np.asarray(x, dtype=np.float32))


class AdditiveAttention(Module):
    """Additive attention of queries ``(B, Tq, query_dim)`` (or one query per sample,
    ``(B, query_dim)``) over keys ``(B, Tk, key_dim)``.

    Parameters: ``query_proj`` (``W``, no bias), ``key_proj`` (``U`` with the bias) and ``v``
    ``(hidden_dim,)`` from U(−1/√hidden_dim, 1/√hidden_dim).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim), ("hidden_dim", hidden_dim)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"AdditiveAttention: {name} must be a positive integer, got {value!r}")
        self.query_dim, self.key_dim, self.hidden_dim = int(query_dim), int(key_dim), int(hidden_dim)
        self.query_proj = Linear(query_dim, hidden_dim, bias=False)
        self.key_proj = Linear(key_dim, hidden_dim)
        self.v = Parameter(np.zeros((hidden_dim,), np.float32))
        bound = 1.0 / math.sqrt(hidden_dim)
        init.uniform_(self.v, -bound, bound)

    def project_keys(self, key: Any) -> Tensor:
        """``U·key``: computed once per source and passed as ``projected_key`` to every decoding step."""
        return self.key_proj(key)

    def forward(self, query: Any, key: Any, value: Any = None, key_padding_mask: Optional[np.ndarray] = None,
                projected_key: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """→ ``(context, weights)``: ``context`` ``(B, Tq, value_dim)``, ``weights`` ``(B, Tq, Tk)``
        (without the ``Tq`` axis for 2-D queries). ``value`` defaults to ``key``;
        ``key_padding_mask`` ``(B, Tk)``, True at padded keys (as ``nn.MultiheadAttention``),
        gives them weight 0 (a sample whose keys are all padded gets zeros)."""
        q = _as_tensor(query)
        single = q.ndim == 2
        if single:
            q = q.unsqueeze(1)
        k = _as_tensor(key)
        if q.ndim != 3 or k.ndim != 3 or q.shape[0] != k.shape[0]:
            raise _core.ShapeError(f"AdditiveAttention: query {tuple(q.shape)} and key {tuple(k.shape)} must be "
                                   "(B, Tq, query_dim) and (B, Tk, key_dim)")
        value = k if value is None else _as_tensor(value)
        pk = self.project_keys(k) if projected_key is None else projected_key
        scores = _core.additive_attention_scores(self.query_proj(q), pk, self.v)
        mask = None
        if key_padding_mask is not None:
            pad = np.asarray(key_padding_mask, dtype=bool)
            if pad.shape != (k.shape[0], k.shape[1]):
                raise _core.ShapeError(f"AdditiveAttention: key_padding_mask must be {(k.shape[0], k.shape[1])}, "
                                       f"got {pad.shape}")
            mask = ~pad[:, None, :]
        weights = F.softmax(scores, -1, mask=mask)
        context = F.matmul(weights, value)
        if single:
            context, weights = context.squeeze(1), weights.squeeze(1)
        return context, weights

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, hidden_dim={self.hidden_dim}"
