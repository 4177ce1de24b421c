"""Batched greedy decoding for evaluation (BLEU during and after training).

The source is encoded once; then the decoder re-runs over the whole prefix at every step (no
key/value cache: simple and obviously correct; a cached decoder is a separate, faster path).
Only the last position is projected to the vocabulary. A sequence stops at its first EOS, the
batch stops when every sequence has, or at ``max_len``. Sentences are decoded in batches of
similar source length to limit padding, and returned in the input order.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from tfm_rs.autograd import no_grad
from tfm_rs.data.batching import pad_batch

__all__ = ["greedy_decode", "translate"]


def greedy_decode(model: Any, src_ids: Any, max_len: Optional[int] = None, max_len_a: float = 1.5,
                  max_len_b: int = 10) -> List[List[int]]:
    """Greedy outputs for one padded batch ``src_ids (B, S)`` (pad = ``model.pad_id``).

    Each output is a list of token ids without BOS and without the EOS (a sequence that never
    emits EOS is cut at the length limit: ``min(max_len_a·S_i + max_len_b, model.max_len - 1)``,
    or ``max_len`` if given). Runs under ``no_grad``; the model's train/eval mode is left
    unchanged (call ``model.eval()`` first to turn dropout off).
    """
    src = np.asarray(src_ids, dtype=np.int64)
    if src.ndim == 1:
        src = src[None]
    B = src.shape[0]
    src_lens = (src != model.pad_id).sum(axis=1)
    limit = np.minimum((max_len_a * src_lens + max_len_b).astype(np.int64), model.max_len - 1)
    if max_len is not None:
        limit = np.minimum(limit, int(max_len))
    steps = int(limit.max()) if B else 0
    with no_grad():
        memory = model.encode(src)
        src_mask = src == model.pad_id
        ys = np.full((B, 1), model.bos_id, dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        for t in range(steps):
            hidden = model.decode_hidden(ys, memory, src_mask)
            logits = model.project(hidden[:, -1]).numpy()
            nxt = logits.argmax(axis=-1).astype(np.int64)
            nxt = np.where(done, model.pad_id, nxt)  # finished rows: padding, ignored from here on
            ys = np.concatenate([ys, nxt[:, None]], axis=1)
            done |= nxt == model.eos_id
            done |= t + 1 >= limit
            if done.all():
                break
    out = []
    for row in ys[:, 1:]:
        ids = row.tolist()
        if model.eos_id in ids:
            ids = ids[: ids.index(model.eos_id)]
        out.append([i for i in ids if i != model.pad_id])
    return out


def translate(model: Any, tokenizer: Any, sentences: Sequence[str], batch_size: int = 128,
              **kwargs: Any) -> List[str]:
    """Detokenized greedy translations of ``sentences`` (eval mode during decoding; the previous
    mode is restored). Empty sentences translate to ``""``."""
    sentences = list(sentences)
    ids = tokenizer.encode_batch(sentences)
    ids = [s[: model.max_len] for s in ids]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    results: List[str] = [""] * len(ids)
    was_training = model.training
    model.eval()
    try:
        todo = [i for i in order if ids[i]]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start: start + batch_size]
            outs = greedy_decode(model, pad_batch([ids[i] for i in chunk], model.pad_id), **kwargs)
            for i, o in zip(chunk, outs):
                results[i] = tokenizer.decode(o)
    finally:
        model.train(was_training)
    return results
