"""Language-model training on one stream of token ids (GPT-style next-token prediction).

The stream is cut into non-overlapping windows of ``block_size + 1`` tokens (the model reads the
first ``block_size`` and predicts the last ``block_size``); :class:`BlockSampler` shuffles the
windows each epoch and packs ``max_tokens // block_size`` of them per batch. Everything else —
optimizer, schedules, logs, checkpoints with exact resume — is :class:`~tfm_rs.train.Trainer`'s.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.train.trainer import Trainer, TrainConfig

__all__ = ["BlockSampler", "LMTrainer", "lm_batches", "lm_forward", "windows"]


def windows(ids: Sequence[int], block_size: int) -> np.ndarray:
    """Non-overlapping windows ``(N, block_size + 1)`` of the stream ``ids`` (the tail that does not
    fill a window is dropped). Raises when the stream is shorter than one window."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(arr) // (block_size + 1)
    if block_size < 1 or n == 0:
        raise InvalidArgumentError(f"windows: {len(arr)} tokens do not fill one window of block_size + 1 = "
                                   f"{block_size + 1}; use more text or a smaller block_size")
    return arr[: n * (block_size + 1)].reshape(n, block_size + 1)


def _ignore_index(model: Any) -> int:
    pad = getattr(model, "pad_id", None)
    return -100 if pad is None else int(pad)


def lm_forward(model: Any, batch: np.ndarray) -> Tuple[Tensor, np.ndarray, int]:
    """Logits ``(B·T, V)`` predicting ``batch[:, 1:]`` from ``batch[:, :-1]`` (windows
    ``(B, T + 1)``), the targets ``(B·T,)`` and the id to ignore (the model's ``pad_id`` or -100)."""
    logits = model(batch[:, :-1])
    return logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), _ignore_index(model)


def lm_batches(wins: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """The windows ``(N, T + 1)`` in order, ``batch_size`` per batch."""
    for i in range(0, len(wins), batch_size):
        yield wins[i: i + batch_size]


class BlockSampler:
    """Batches of window indices: ``batch_size`` windows each, a fresh permutation per epoch
    (``default_rng([seed, epoch])``), resumable through :meth:`state_dict`."""

    def __init__(self, num_windows: int, batch_size: int, seed: int = 0, shuffle: bool = True) -> None:
        if num_windows < 1 or batch_size < 1:
            raise InvalidArgumentError(f"BlockSampler: need ≥ 1 window and batch_size ≥ 1, got {num_windows} and "
                                       f"{batch_size}")
        self.num_windows, self.batch_size = int(num_windows), int(batch_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.epoch = 0
        self.position = 0

    def batches_for_epoch(self, epoch: int) -> List[List[int]]:
        """The batches of ``epoch`` (the last one may be smaller)."""
        order = np.arange(self.num_windows)
        if self.shuffle:
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(order)
        return [order[i: i + self.batch_size].tolist() for i in range(0, self.num_windows, self.batch_size)]

    def __len__(self) -> int:
        return -(-self.num_windows // self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        """The rest of the current epoch, then the next epoch starts."""
        batches = self.batches_for_epoch(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> Dict[str, Any]:
        """Epoch, position within it, and the settings that determine the batches."""
        return {"epoch": self.epoch, "position": self.position, "num_windows": self.num_windows,
                "batch_size": self.batch_size, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the settings must match)."""
        mine = self.state_dict()
        differ = [k for k in mine if k not in ("epoch", "position") and state.get(k, mine[k]) != mine[k]]
        if differ:
            raise InvalidArgumentError("BlockSampler.load_state_dict: built differently (" +
                                       ", ".join(f"{k}: saved {state[k]!r} vs now {mine[k]!r}" for k in differ) + ")")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class LMTrainer(Trainer):
    """Trains a :class:`~tfm_rs.models.GPT` (or any model mapping ids ``(B, T)`` to logits
    ``(B, T, V)`` with a ``config``) on a token stream.

    Args:
        model: the language model (its ``pad_id``, if set, is ignored as a target).
        train_ids: the training stream (a flat sequence of ids).
        config: :class:`TrainConfig` (``max_tokens`` sets ``batch_size = max_tokens // block_size``).
        block_size: tokens the model reads per window (default and maximum: ``model.max_len``).
        out_dir, log_name: as :class:`~tfm_rs.train.Trainer`.
        valid_ids: an optional held-out stream for the validation loss.
    """

    def __init__(self, model: Any, train_ids: Sequence[int], config: Optional[TrainConfig] = None,
                 block_size: Optional[int] = None, out_dir: Optional[os.PathLike] = None,
                 valid_ids: Optional[Sequence[int]] = None, log_name: str = "metrics.jsonl") -> None:
        c = config or TrainConfig()
        self.block_size = int(block_size or model.max_len)
        if self.block_size > model.max_len:
            raise InvalidArgumentError(f"LMTrainer: block_size {self.block_size} exceeds the model's max_len "
                                       f"{model.max_len}")
        self.train_windows = windows(train_ids, self.block_size)
        self.valid_windows = windows(valid_ids, self.block_size) if valid_ids is not None else None
        self.sampler = BlockSampler(len(self.train_windows), max(1, c.max_tokens // self.block_size), seed=c.seed)
        self.fingerprint = hashlib.sha256(self.train_windows.tobytes()).hexdigest()[:16]
        self._iter: Optional[Iterator[List[int]]] = None
        super().__init__(model, c, out_dir, log_name)

    def next_batch(self) -> np.ndarray:
        """The next batch of windows ``(B, block_size + 1)``."""
        for _ in range(2):
            if self._iter is None:
                self._iter = iter(self.sampler)
            try:
                return self.train_windows[next(self._iter)]
            except StopIteration:
                self._iter = None
        raise InvalidArgumentError("LMTrainer: the sampler yields no batches")  # pragma: no cover

    def forward_batch(self, batch: np.ndarray) -> Tuple[Tensor, np.ndarray, int]:
        """:func:`lm_forward` of ``batch``."""
        return lm_forward(self.model, batch)

    def count_tokens(self, batch: np.ndarray) -> Tuple[int, int]:
        """Predicted (non-pad) tokens; the same count twice (inputs are the targets shifted)."""
        n = int((batch[:, 1:] != _ignore_index(self.model)).sum())
        return n, n

    def has_valid_data(self) -> bool:
        return self.valid_windows is not None

    def valid_batches(self) -> Iterator[np.ndarray]:
        """The validation windows in order, ``sampler.batch_size`` per batch."""
        if self.valid_windows is None:
            raise InvalidArgumentError("LMTrainer: no valid_ids given")
        return lm_batches(self.valid_windows, self.sampler.batch_size)

    def data_state(self) -> Dict[str, Any]:
        return {**self.sampler.state_dict(), "fingerprint": self.fingerprint}

    def load_data_state(self, state: Dict[str, Any]) -> None:
        if state.get("fingerprint", self.fingerprint) != self.fingerprint:
            raise InvalidArgumentError("LMTrainer.resume: the checkpoint was trained on other data")
        self.sampler.load_state_dict({k: v for k, v in state.items() if k != "fingerprint"})
        self._iter = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch
