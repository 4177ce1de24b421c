"""Token-budget batching for sequence-to-sequence training, with a resumable position.

The paper batched "by approximate sequence length", ~25k source + ~25k target tokens a batch.
:class:`TokenBatchSampler` does the same: a batch holds as many examples as fit in ``max_tokens``
counted *with padding* (``B * S + B * T``, ``S``/``T`` the longest source/target in the batch),
and length bucketing keeps that padding small: each epoch shuffles the examples, cuts them into
large pools, sorts each pool by length, packs it greedily, then shuffles the batch order.

Lengths are the tensor lengths the model sees: ``S = len(src)`` and ``T = len(tgt) + 1`` (the
decoder input is ``[bos] + y`` and its target ``y + [eos]``, see :func:`collate`).

Which examples are used (decided once, at construction, and reported on the sampler):

* empty sentences (either side) are **skipped and counted** (``num_skipped_empty``): an all-pad
  source row would make every attention weight of that row undefined;
* sentences with ``S`` or ``T`` over ``max_len`` are **filtered and counted** (``num_filtered_long``);
* an example that alone exceeds ``max_tokens`` raises at construction (raise ``max_tokens`` or set
  ``max_len``), so every batch honours the budget.

Batches of epoch ``e`` are a pure function of ``(lengths, seed, e)``, so the position is just
``(epoch, position)``: :meth:`TokenBatchSampler.state_dict` / ``load_state_dict`` resume with
exactly the batches an uninterrupted run would have produced.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from tfm_rs import _core

__all__ = ["TokenBatchSampler", "token_batches", "pad_batch", "Seq2SeqBatch", "collate", "iterate_batches"]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0, length: Optional[int] = None) -> np.ndarray:
    """Right-pad ``seqs`` with ``pad_id`` into an ``int64`` array ``(B, T)``, ``T`` the longest
    sequence (or ``length``, which must be at least that)."""
    seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
    longest = max((len(s) for s in seqs), default=0)
    T = longest if length is None else int(length)
    if T < longest:
        raise _core.ShapeError(f"pad_batch: length {T} is shorter than the longest sequence ({longest})")
    out = np.full((len(seqs), T), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


@dataclass
class Seq2SeqBatch:
    """One training batch (all ``int64`` ids, masks ``bool`` with ``True`` at padding, i.e.
    PyTorch's ``key_padding_mask`` convention).

    ``src (B, S)``; ``tgt_in (B, T) = [bos] + y`` (decoder input); ``tgt_out (B, T) = y + [eos]``
    (what the decoder must predict); ``num_tokens`` = non-pad entries of ``tgt_out`` (normalize
    the summed loss by it); ``indices`` = the examples' positions in the dataset.
    """

    src: np.ndarray
    tgt_in: np.ndarray
    tgt_out: np.ndarray
    src_padding_mask: np.ndarray
    tgt_padding_mask: np.ndarray
    num_tokens: int
    indices: List[int] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.src.shape[0])

    @property
    def num_src_tokens(self) -> int:
        return int((~self.src_padding_mask).sum())

    @property
    def padded_tokens(self) -> int:
        """``B*S + B*T``: what the token budget counts."""
        return int(self.src.size + self.tgt_in.size)


def collate(src_seqs: Sequence[Sequence[int]], tgt_seqs: Sequence[Sequence[int]], pad_id: int = 0, bos_id: int = 1,
            eos_id: int = 2, indices: Optional[Sequence[int]] = None) -> Seq2SeqBatch:
    """Build a :class:`Seq2SeqBatch` from raw id lists (without BOS/EOS; they are added here)."""
    if len(src_seqs) != len(tgt_seqs):
        raise _core.ShapeError(f"collate: {len(src_seqs)} source but {len(tgt_seqs)} target sequences")
    src = pad_batch(src_seqs, pad_id)
    tgt_in = pad_batch([[bos_id, *t] for t in tgt_seqs], pad_id)
    tgt_out = pad_batch([[*t, eos_id] for t in tgt_seqs], pad_id)
    src_lens = np.array([len(s) for s in src_seqs], dtype=np.int64)
    tgt_lens = np.array([len(t) + 1 for t in tgt_seqs], dtype=np.int64)
    # Masks by length, not by comparing with pad_id: a pad id inside a sentence is still a token.
    src_mask = np.arange(src.shape[1])[None, :] >= src_lens[:, None]
    tgt_mask = np.arange(tgt_in.shape[1])[None, :] >= tgt_lens[:, None]
    return Seq2SeqBatch(src, tgt_in, tgt_out, src_mask, tgt_mask, int(tgt_lens.sum()),
                        list(indices) if indices is not None else list(range(len(src_seqs))))


class TokenBatchSampler:
    """Yields lists of example indices, one list per batch, each within ``max_tokens`` padded
    source+target tokens (see the module docstring for lengths, filtering and determinism).

    Iterating yields the rest of the current epoch and then advances ``epoch``; iterating again
    gives the next epoch. ``position`` counts the batches of the current epoch already yielded, so
    ``state_dict()`` taken after training on a batch resumes at the following one.

    Args:
        src_ids, tgt_ids: token ids per example, without BOS/EOS.
        max_tokens: budget per batch, padded source + padded target tokens.
        shuffle: random example order (and batch order) each epoch; else dataset order.
        seed: base seed; epoch ``e`` uses ``default_rng([seed, e])``.
        bucket: sort by length within pools of ``pool_size`` examples before packing.
        max_len: drop examples with ``S`` or ``T`` above it (counted in ``num_filtered_long``).
        max_sentences: optional cap on examples per batch.
        pool_size: examples per sorting pool; default ≈ 100 batches' worth.
    """

    def __init__(self, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], max_tokens: int,
                 shuffle: bool = True, seed: int = 0, bucket: bool = True, max_len: Optional[int] = None,
                 max_sentences: Optional[int] = None, pool_size: Optional[int] = None) -> None:
        if len(src_ids) != len(tgt_ids):
            raise _core.ShapeError(f"TokenBatchSampler: {len(src_ids)} source but {len(tgt_ids)} target examples")
        if max_tokens <= 0:
            raise _core.InvalidArgumentError(f"TokenBatchSampler: max_tokens must be > 0, got {max_tokens}")
        self.max_tokens = int(max_tokens)
        self.shuffle, self.seed, self.bucket = bool(shuffle), int(seed), bool(bucket)
        self.max_len = None if max_len is None else int(max_len)
        self.max_sentences = None if max_sentences is None else int(max_sentences)
        src_len = np.fromiter((len(s) for s in src_ids), dtype=np.int64, count=len(src_ids))
        tgt_len = np.fromiter((len(t) + 1 for t in tgt_ids), dtype=np.int64, count=len(tgt_ids))
        self.num_examples = len(src_len)

        empty = (src_len == 0) | (tgt_len == 1)
        long = (~empty & (np.maximum(src_len, tgt_len) > self.max_len) if self.max_len is not None
                else np.zeros_like(empty))
        keep = ~empty & ~long
        self.num_skipped_empty = int(empty.sum())
        self.num_filtered_long = int(long.sum())
        self.kept_indices = np.flatnonzero(keep).astype(np.int64)
        self._src_len, self._tgt_len = src_len, tgt_len
        too_big = self.kept_indices[(src_len + tgt_len)[self.kept_indices] > self.max_tokens]
        if too_big.size:
            i = int(too_big[0])
            raise _core.InvalidArgumentError(
                f"TokenBatchSampler: example {i} alone needs {src_len[i] + tgt_len[i]} tokens (S={src_len[i]}, "
                f"T={tgt_len[i]}) > max_tokens={self.max_tokens} ({too_big.size} such examples); raise max_tokens "
                "or set max_len to filter them")
        if pool_size is None:
            mean = float((src_len + tgt_len)[self.kept_indices].mean()) if self.kept_indices.size else 1.0
            pool_size = max(1, int(100 * self.max_tokens / mean))
        self.pool_size = int(pool_size)
        # Identifies the data the positions refer to: resuming on other data must fail loudly.
        h = hashlib.sha256()
        h.update(src_len.tobytes())
        h.update(tgt_len.tobytes())
        self.fingerprint = h.hexdigest()[:16]

        self.epoch = 0
        self.position = 0
        self._cache_epoch: Optional[int] = None
        self._cache: List[List[int]] = []

    # -- the batches of one epoch ----------------------------------------------------------------

    def _pack(self, order: np.ndarray) -> List[List[int]]:
        """Greedy packing of ``order`` (index array) under the padded-token budget."""
        batches: List[List[int]] = []
        cur: List[int] = []
        max_s = max_t = 0
        for i in order.tolist():
            s, t = int(self._src_len[i]), int(self._tgt_len[i])
            ns, nt = max(max_s, s), max(max_t, t)
            full = self.max_sentences is not None and len(cur) >= self.max_sentences
            if cur and (full or (len(cur) + 1) * (ns + nt) > self.max_tokens):
                batches.append(cur)
                cur, ns, nt = [], s, t
            cur.append(i)
            max_s, max_t = ns, nt
        if cur:
            batches.append(cur)
        return batches

    def batches_for_epoch(self, epoch: int) -> List[List[int]]:
        """All batches of ``epoch`` (deterministic; cached for the current epoch)."""
        if self._cache_epoch == epoch:
            return self._cache
        rng = np.random.default_rng([self.seed, int(epoch)])
        order = self.kept_indices.copy()
        if self.shuffle:
            order = rng.permutation(order)
        if self.bucket:
            batches = []
            for start in range(0, len(order), self.pool_size):
                pool = order[start: start + self.pool_size]
                # Sort by target then source length (fairseq's order); stable, so ties keep the
                # shuffled order and the batches still vary between epochs.
                key = np.lexsort((self._src_len[pool], self._tgt_len[pool]))
                batches.extend(self._pack(pool[key]))
        else:
            batches = self._pack(order)
        if self.shuffle:
            # Sorted pools would otherwise feed short batches first, long ones last within a pool.
            perm = rng.permutation(len(batches))
            batches = [batches[j] for j in perm]
        self._cache_epoch, self._cache = epoch, batches
        return batches

    def __len__(self) -> int:
        """Number of batches in the current epoch (it can differ slightly between epochs)."""
        return len(self.batches_for_epoch(self.epoch))

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.batches_for_epoch(self.epoch)
        if self.position >= len(batches) and batches:
            # A finished epoch (e.g. restored from a checkpoint taken after its last batch).
            self.epoch, self.position = self.epoch + 1, 0
            batches = self.batches_for_epoch(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1  # before yielding: a checkpoint taken while the batch is used skips it
            yield list(batch)
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (``DistributedSampler``'s name)."""
        self.epoch, self.position = int(epoch), 0

    # -- checkpointing ---------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """JSON-serializable position: epoch, position within it, and what determines the batches."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "max_tokens": self.max_tokens,
                "shuffle": self.shuffle, "bucket": self.bucket, "max_len": self.max_len,
                "max_sentences": self.max_sentences, "pool_size": self.pool_size,
                "num_examples": self.num_examples, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`. The sampler must have been built over the same data
        with the same settings (checked: otherwise the batches would silently differ)."""
        mine = self.state_dict()
        differ = [k for k in mine if k not in ("epoch", "position") and k in state and state[k] != mine[k]]
        if differ:
            detail = ", ".join(f"{k}: saved {state[k]!r} vs now {mine[k]!r}" for k in differ)
            raise _core.InvalidArgumentError(f"TokenBatchSampler.load_state_dict: built differently ({detail})")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    @property
    def stats(self) -> Dict[str, int]:
        return {"num_examples": self.num_examples, "num_used": int(self.kept_indices.size),
                "num_skipped_empty": self.num_skipped_empty, "num_filtered_long": self.num_filtered_long}


def token_batches(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], max_tokens: int,
                  shuffle: bool = True, seed: int = 0, bucket: bool = True, **kwargs: Any) -> TokenBatchSampler:
    """A :class:`TokenBatchSampler` (iterate it for index lists; it has ``state_dict``)."""
    return TokenBatchSampler(src_ids, tgt_ids, max_tokens, shuffle=shuffle, seed=seed, bucket=bucket, **kwargs)


def iterate_batches(sampler: TokenBatchSampler, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                    pad_id: int = 0, bos_id: int = 1, eos_id: int = 2) -> Iterator[Seq2SeqBatch]:
    """Collated batches for the rest of the sampler's current epoch."""
    for idx in sampler:
        yield collate([src_ids[i] for i in idx], [tgt_ids[i] for i in idx], pad_id, bos_id, eos_id, idx)
