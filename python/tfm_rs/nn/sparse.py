"""``Embedding``: a lookup table of vectors, as ``torch.nn.Embedding``."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter

__all__ = ["Embedding"]


class Embedding(Module):
    """Rows of ``weight (num_embeddings, embedding_dim)`` for integer ids of any shape:
    ids ``(*)`` (NumPy int array or list) → ``(*, embedding_dim)``.

    ``weight`` starts from N(0, 1), as in PyTorch. The ``padding_idx`` row starts at zero and
    receives no gradient (negative values count from the end).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 max_norm: Optional[float] = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight: Optional[Any] = None, _freeze: bool = False) -> None:
        super().__init__()
        if max_norm is not None or scale_grad_by_freq or sparse:
            raise InvalidArgumentError("Embedding: max_norm, scale_grad_by_freq and sparse are not supported")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise InvalidArgumentError(
                    f"Embedding: padding_idx {padding_idx} must be within num_embeddings ({num_embeddings})")
            padding_idx = padding_idx % num_embeddings
        self.padding_idx = padding_idx
        if _weight is None:
            self.weight = Parameter(np.zeros((num_embeddings, embedding_dim), np.float32), requires_grad=not _freeze)
            self.reset_parameters()
        else:
            self.weight = Parameter(_weight, requires_grad=not _freeze)
            if tuple(self.weight.shape) != (num_embeddings, embedding_dim):
                raise InvalidArgumentError(
                    f"Embedding: _weight has shape {tuple(self.weight.shape)}, "
                    f"expected {(num_embeddings, embedding_dim)}")

    def reset_parameters(self) -> None:
        init.normal_(self.weight)
        if self.padding_idx is not None:
            w = self.weight.numpy()
            w[self.padding_idx] = 0.0
            self.weight.copy_(w)

    @classmethod
    def from_pretrained(cls, embeddings: Any, freeze: bool = True, padding_idx: Optional[int] = None) -> "Embedding":
        """An Embedding holding a copy of the 2-D ``embeddings``; ``freeze`` turns off its gradient."""
        w = embeddings.numpy() if isinstance(embeddings, Tensor) else np.asarray(embeddings, np.float32)
        if w.ndim != 2:
            raise InvalidArgumentError(f"Embedding.from_pretrained: embeddings must be 2-D, got shape {w.shape}")
        return cls(w.shape[0], w.shape[1], padding_idx=padding_idx, _weight=w, _freeze=freeze)

    def forward(self, input: Any) -> Tensor:
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")
