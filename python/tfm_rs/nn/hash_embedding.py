"""``HashEmbedding`` (Svenstrup, Hansson and Winther, "Hash Embeddings for Efficient Word
Representations", 2017): a vocabulary of ``V`` ids shares a pool of ``B < V`` bucket vectors.

Each id is hashed by ``k`` fixed hash functions into the pool and takes the sum of those
buckets weighted by ``k`` learned importance weights of its own. Parameters: ``B·D + V·k``
instead of ``V·D``; two ids collide in every bucket only with probability about ``1/B^k``, and
their importance weights still tell them apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter

__all__ = ["HashEmbedding"]


def _positive(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidArgumentError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


class HashEmbedding(Module):
    """Hashed lookup: ids ``(*)`` in ``[0, num_embeddings)`` → ``(*, embedding_dim)``.

    Args:
        num_embeddings: vocabulary size ``V``.
        embedding_dim: ``D``.
        num_buckets: pool size ``B`` (the ``weight (B, D)`` parameter, N(0, 1) at the start, as
            ``nn.Embedding``'s, scaled by ``1/√num_hashes`` so that a sum of ``k`` buckets
            starts with unit variance).
        num_hashes: ``k`` hash functions per id.
        importance: learn ``importance (V, k)`` (starts at ones); ``False`` sums the buckets
            with unit weights.
        seed: an integer selecting the hash functions. The hashes are a fixed integer mix
            (splitmix64) computed in Rust: the same buckets on every run and platform.
            ``seed=None`` is the identity hash ``id mod B`` (with ``k = 1`` and ``B ≥ V``, an
            ordinary embedding table).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, num_buckets: int, num_hashes: int = 2,
                 importance: bool = True, seed: Any = 0) -> None:
        super().__init__()
        owner = "HashEmbedding"
        self.num_embeddings = _positive(owner, "num_embeddings", num_embeddings)
        self.embedding_dim = _positive(owner, "embedding_dim", embedding_dim)
        self.num_buckets = _positive(owner, "num_buckets", num_buckets)
        self.num_hashes = _positive(owner, "num_hashes", num_hashes)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise InvalidArgumentError(f"{owner}: seed must be an integer (or None for the identity hash), "
                                       f"got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.weight = Parameter(np.zeros((self.num_buckets, self.embedding_dim), np.float32))
        if importance:
            self.importance = Parameter(np.ones((self.num_embeddings, self.num_hashes), np.float32))
        else:
            self.register_parameter("importance", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.normal_(self.weight, 0.0, self.num_hashes ** -0.5)
        if self.importance is not None:
            init.ones_(self.importance)

    def forward(self, input: Any) -> Tensor:
        return F.hash_embedding(input, self.weight, self.importance, self.num_embeddings, self.num_hashes, self.seed)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, num_buckets={self.num_buckets}, "
                f"num_hashes={self.num_hashes}, importance={self.importance is not None}, seed={self.seed}")
