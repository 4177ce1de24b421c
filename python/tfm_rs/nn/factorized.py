"""``FactorizedEmbedding`` (ALBERT, Lan et al. 2020): a ``V×E`` table followed by an ``E×H``
projection, ``V·E + E·H`` parameters instead of ``V·H`` when ``E ≪ H``. It computes exactly the
lookup of the product table ``weight·projᵀ`` (:attr:`FactorizedEmbedding.table`)."""

from __future__ import annotations

from typing import Any, Optional

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.nn.linear import Linear
from tfm_rs.nn.module import Module
from tfm_rs.nn.sparse import Embedding

__all__ = ["FactorizedEmbedding"]


class FactorizedEmbedding(Module):
    """ids ``(*)`` → ``(*, hidden_dim)``: ``embed`` (``Embedding(num_embeddings, embedding_dim,
    padding_idx)``) then ``proj`` (``Linear(embedding_dim, hidden_dim, bias=False)``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, hidden_dim: int,
                 padding_idx: Optional[int] = None) -> None:
        super().__init__()
        if embedding_dim <= 0 or hidden_dim <= 0:
            raise InvalidArgumentError(f"FactorizedEmbedding: embedding_dim ({embedding_dim}) and hidden_dim "
                                       f"({hidden_dim}) must be positive")
        self.num_embeddings, self.embedding_dim, self.hidden_dim = int(num_embeddings), int(embedding_dim), \
            int(hidden_dim)
        self.embed = Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.proj = Linear(embedding_dim, hidden_dim, bias=False)
        self.padding_idx = self.embed.padding_idx

    @property
    def table(self) -> Tensor:
        """The equivalent ``(num_embeddings, hidden_dim)`` table ``embed.weight·projᵀ``."""
        return F.linear(self.embed.weight, self.proj.weight)

    def forward(self, input: Any) -> Tensor:
        return self.proj(self.embed(input))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, hidden_dim={self.hidden_dim}"
