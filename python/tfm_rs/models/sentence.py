"""Sentence embeddings from an encoder, as sentence-transformers computes them: tokenize, run
the encoder on batches padded to their longest sentence (sentences sorted by length, so little
padding is computed), pool — the mean of the hidden states of the non-padding tokens, or the
first (``[CLS]``) token's — and L2-normalise."""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np

from tfm_rs import tensor
from tfm_rs._core import InvalidArgumentError
from tfm_rs.autograd import no_grad

__all__ = ["sentence_embeddings"]


def sentence_embeddings(model: Any, sentences: Union[str, Sequence[str]], pooling: str = "mean",
                        normalize: bool = True, batch_size: int = 32) -> np.ndarray:
    """``(N, d_model)`` float32 embeddings of ``sentences`` (one string gives ``(d_model,)``).
    ``model``: an encoder with ``tokenizer``, ``pad_id`` and ``encode(ids, token_type_ids)``."""
    if pooling not in ("mean", "cls"):
        raise InvalidArgumentError(f"encode: pooling must be 'mean' or 'cls', got {pooling!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"encode: batch_size must be a positive integer, got {batch_size!r}")
    if getattr(model, "tokenizer", None) is None:
        raise InvalidArgumentError(f"{type(model).__name__}.encode: text needs a tokenizer (from_pretrained loads "
                                   "tokenizer.json; or set .tokenizer); pass token ids otherwise")
    single = isinstance(sentences, str)
    texts = [sentences] if single else list(sentences)
    encodings = model.tokenizer.encode_batch(texts)
    order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
    out = np.zeros((len(texts), model.d_model), np.float32)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(encodings[i].ids) for i in rows)
                ids = np.full((len(rows), width), model.pad_id, np.int64)
                types = np.zeros_like(ids)
                keep = np.zeros((len(rows), width, 1), np.float32)
                for r, i in enumerate(rows):
                    n = len(encodings[i].ids)
                    ids[r, :n], types[r, :n], keep[r, :n] = encodings[i].ids, encodings[i].type_ids, 1.0
                hidden = model.encode(ids, types)  # (B, T, d)
                if pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    pooled = (hidden * tensor(keep)).sum(1) / tensor(keep.sum(1))
                out[rows] = pooled.numpy()
    finally:
        model.train(was_training)
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out[0] if single else out
