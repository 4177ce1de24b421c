"""Parameter reduction for the models, from their configuration: the token embedding as a plain
table, an ALBERT factorization (``embedding_dim``) or a hash embedding (``hash_buckets``,
``num_hashes``); one set of layer weights shared by every layer of a stack (``share_layers``);
and low-rank feed-forward layers (``ffn_rank``), also made from a trained model by
:func:`factorize_ffn`."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from tfm_rs import nn
from tfm_rs._core import InvalidArgumentError, Tensor

__all__ = ["embedding_table", "factorize_ffn", "init_token_embedding", "make_token_embedding", "set_ffn_rank",
           "share_stack"]

FfnRank = Union[None, int, Sequence[int]]


def make_token_embedding(owner: str, vocab_size: int, d_model: int, padding_idx: Optional[int],
                         embedding_dim: Optional[int] = None, hash_buckets: Optional[int] = None,
                         num_hashes: int = 2) -> nn.Module:
    """An ``nn.Embedding(vocab_size, d_model)``, an ``nn.FactorizedEmbedding`` through
    ``embedding_dim``, or an ``nn.HashEmbedding`` of ``hash_buckets`` buckets; the models then
    give it their initialization with :func:`init_token_embedding` (separately, so that a plain
    table draws its random numbers in the order it always did)."""
    if embedding_dim is not None and hash_buckets is not None:
        raise InvalidArgumentError(f"{owner}: embedding_dim (factorized) and hash_buckets (hashed) exclude each other")
    if hash_buckets is not None:
        return nn.HashEmbedding(vocab_size, d_model, hash_buckets, num_hashes, seed=0)
    if embedding_dim is not None:
        return nn.FactorizedEmbedding(vocab_size, embedding_dim, d_model, padding_idx=padding_idx)
    return nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)


def init_token_embedding(emb: nn.Module, std: float) -> None:
    """Looked-up vectors ~ N(0, std²) at the start, whatever the kind, and a zero padding row."""
    if isinstance(emb, nn.HashEmbedding):
        # A sum of k buckets: each ~ N(0, std²/k).
        nn.init.normal_(emb.weight, 0.0, std * emb.num_hashes ** -0.5)
        return
    if isinstance(emb, nn.FactorizedEmbedding):
        # Product entries then have variance E·std²·(1/E) = std², as the plain table's.
        nn.init.normal_(emb.embed.weight, 0.0, std)
        nn.init.normal_(emb.proj.weight, 0.0, emb.embedding_dim ** -0.5)
        emb = emb.embed
    else:
        nn.init.normal_(emb.weight, 0.0, std)
    _zero_row(emb)


def _zero_row(emb: nn.Embedding) -> None:
    if emb.padding_idx is not None:
        w = emb.weight.numpy()
        w[emb.padding_idx] = 0.0
        emb.weight.copy_(w)


def embedding_table(emb: nn.Module) -> Tensor:
    """The ``(V, d_model)`` table an embedding module looks up (the native decoder reads ids
    from a table): a plain table itself, else every id's vector."""
    if isinstance(emb, nn.Embedding):
        return emb.weight
    if isinstance(emb, nn.FactorizedEmbedding):
        return emb.table
    return emb(np.arange(emb.num_embeddings))


def share_stack(layers: nn.ModuleList) -> nn.ModuleList:
    """ALBERT's cross-layer sharing: the first layer, ``len(layers)`` times. The state dict keeps
    PyTorch's ``layers.{i}.…`` keys (each naming the one set of weights); ``parameters()`` lists
    them once, and the gradient of each is the sum over its uses."""
    return nn.ModuleList([layers[0]] * len(layers))


def _ffn_linears(model: Any) -> List[tuple]:
    return [(layer, name) for layer in model._ffn_layers().values() for name in ("linear1", "linear2")]


def set_ffn_rank(model: Any, ffn_rank: FfnRank, from_trained: bool) -> Optional[Union[int, List[int]]]:
    """Replaces every feed-forward ``linear1``/``linear2`` by an ``nn.LowRankLinear``: one rank
    for all, or one per linear in ``_ffn_layers()`` order (``linear1``, ``linear2`` of each).
    ``from_trained`` converts the current weights (truncated SVD), else the new layers start
    fresh. Returns the rank(s) for the configuration."""
    if ffn_rank is None:
        return None
    linears = _ffn_linears(model)
    ranks = [ffn_rank] * len(linears) if isinstance(ffn_rank, (int, np.integer)) else list(ffn_rank)
    if len(ranks) != len(linears):
        raise InvalidArgumentError(f"ffn_rank: {len(linears)} feed-forward linears, got {len(ranks)} ranks")
    seen = set()
    for (layer, name), r in zip(linears, ranks):
        if id(layer) in seen and name == "linear1":
            continue  # a shared layer is converted once
        lin = getattr(layer, name)
        low = nn.LowRankLinear.from_dense(lin, rank=int(r)) if from_trained else \
            nn.LowRankLinear(lin.in_features, lin.out_features, int(r), bias=lin.bias is not None)
        setattr(layer, name, low)
        if name == "linear2":
            seen.add(id(layer))
    return ranks[0] if len(set(ranks)) == 1 else [int(r) for r in ranks]


def factorize_ffn(model: Any, rank: Optional[int] = None, energy: float = 0.95) -> Union[int, List[int]]:
    """Factorizes the feed-forward layers of a (trained) model in place by truncated SVD
    (:meth:`nn.LowRankLinear.from_dense`): ``rank`` for every linear, or per linear the smallest
    rank holding ``energy`` of its squared Frobenius norm. The model's ``config`` records the
    ranks (``ffn_rank``), so checkpoints saved afterwards rebuild the factorized model. Returns
    them."""
    linears = _ffn_linears(model)
    if any(isinstance(getattr(layer, name), nn.LowRankLinear) for layer, name in linears):
        raise InvalidArgumentError("factorize_ffn: the feed-forward layers are already low-rank")
    if rank is None:
        ranks: Any = [nn.LowRankLinear.from_dense(getattr(layer, name), energy=energy).rank
                      for layer, name in linears]
    else:
        ranks = int(rank)
    got = set_ffn_rank(model, ranks, from_trained=True)
    model._config["ffn_rank"] = got
    return got


def reduction_config(embedding_dim: Optional[int], hash_buckets: Optional[int], num_hashes: int,
                     share_layers: bool, ffn_rank: FfnRank) -> Dict[str, Any]:
    """The configuration entries of the options above, JSON-serializable."""
    return dict(embedding_dim=None if embedding_dim is None else int(embedding_dim),
                hash_buckets=None if hash_buckets is None else int(hash_buckets), num_hashes=int(num_hashes),
                share_layers=bool(share_layers),
                ffn_rank=_rank_config(ffn_rank))


def _rank_config(ffn_rank: FfnRank) -> Optional[Union[int, List[int]]]:
    if ffn_rank is None:
        return None
    if isinstance(ffn_rank, (int, np.integer)):
        return int(ffn_rank)
    return [int(r) for r in ffn_rank]
