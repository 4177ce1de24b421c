"""``BatchNorm1d``, as ``torch.nn.BatchNorm1d``, and ``MaskedBatchNorm1d``: batch norm over the
real positions of a padded ``(N, T, C)`` sequence batch.

Batch norm normalizes each channel by statistics of the *batch*: in training the output of one
example depends on the others, and padded text adds positions that are not data. The masked form
takes its statistics over the unpadded positions only, so a batch's padding does not move them;
it is what a Transformer with ``norm="batch"`` uses.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter, as_tensor

__all__ = ["BatchNorm1d", "MaskedBatchNorm1d"]


def _buffer(values: Any) -> Tensor:
    return Tensor.__new__(Tensor, np.asarray(values, np.float32), False)


class _BatchNorm(Module):
    """Parameters, buffers and the running-statistics bookkeeping of PyTorch's ``_BatchNorm``.

    ``weight``/``bias (C,)`` (ones/zeros) when ``affine``; ``running_mean``/``running_var (C,)``
    (zeros/ones) and ``num_batches_tracked`` (a float32 scalar here: the state dict holds
    float32 arrays; exact up to 2²⁴ steps) when ``track_running_stats``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features <= 0:
            raise InvalidArgumentError(f"{type(self).__name__}: num_features must be a positive integer, "
                                       f"got {num_features!r}")
        if not eps >= 0:
            raise InvalidArgumentError(f"{type(self).__name__}: eps must be non-negative, got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise InvalidArgumentError(f"{type(self).__name__}: momentum must be in [0, 1] or None, got {momentum}")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_features, np.float32))
            self.bias = Parameter(np.zeros(self.num_features, np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", _buffer(np.zeros(self.num_features)))
            self.register_buffer("running_var", _buffer(np.ones(self.num_features)))
            self.register_buffer("num_batches_tracked", _buffer(0.0))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.copy_(np.zeros(self.num_features, np.float32))
            self.running_var.copy_(np.ones(self.num_features, np.float32))
            self.num_batches_tracked.copy_(np.zeros((), np.float32))

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def _factor(self) -> Optional[float]:
        """The running-average factor of this step (PyTorch's ``exponential_average_factor``):
        ``momentum``, or ``1/num_batches_tracked`` (a cumulative mean) when it is ``None``."""
        if not (self.training and self.track_running_stats):
            return self.momentum
        n = float(self.num_batches_tracked.numpy()) + 1.0
        self.num_batches_tracked.copy_(np.asarray(n, np.float32))
        return 1.0 / n if self.momentum is None else self.momentum

    def _stats(self) -> tuple:
        """The running buffers the functional form reads and updates: none when they are not
        tracked (batch statistics then serve in eval mode too, as in PyTorch)."""
        if self.track_running_stats:
            return self.running_mean, self.running_var
        return None, None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Per-channel batch normalization of ``(N, C)`` or ``(N, C, L)`` inputs (statistics over
    ``N`` or ``N·L``), with PyTorch's semantics and ``state_dict`` keys (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``).

    Training: normalizes by the batch mean and biased variance and moves the running mean and
    the running *unbiased* variance by ``momentum`` (``None``: a cumulative average); a batch
    with one value per channel is an error. Eval: normalizes by the running statistics.
    """

    def forward(self, input: Tensor) -> Tensor:
        x = as_tensor(input)
        if x.ndim not in (2, 3) or x.shape[1] != self.num_features:
            raise ShapeError(f"BatchNorm1d: expected (N, {self.num_features}) or (N, {self.num_features}, L) input, "
                             f"got shape {tuple(x.shape)}")
        factor = self._factor()
        rm, rv = self._stats()
        return F.batch_norm(x, rm, rv, self.weight, self.bias, self.training or rm is None, factor, self.eps)


class MaskedBatchNorm1d(_BatchNorm):
    """Batch normalization of a padded sequence batch ``(N, T, C)`` (channels last, the
    Transformer's layout) whose statistics skip padded positions.

    ``forward(input (N, T, C), padding_mask (N, T) = None, lengths (N,) = None)``: ``True`` in
    ``padding_mask`` marks padding (the key-padding convention); ``lengths`` says instead that
    row ``i`` holds ``lengths[i]`` real positions followed by padding. With neither, every
    position counts and the module equals ``BatchNorm1d`` on ``input.transpose(1, 2)``. Padded
    positions are normalized with the same statistics (their outputs are defined) but do not
    move them. Parameters, buffers, ``momentum`` and modes as :class:`BatchNorm1d`.
    """

    def forward(self, input: Tensor, padding_mask: Any = None, lengths: Any = None) -> Tensor:
        x = as_tensor(input)
        if x.ndim != 3 or x.shape[2] != self.num_features:
            raise ShapeError(f"MaskedBatchNorm1d: expected (N, T, {self.num_features}) input, got shape "
                             f"{tuple(x.shape)}")
        if padding_mask is not None and lengths is not None:
            raise InvalidArgumentError("MaskedBatchNorm1d: give padding_mask or lengths, not both")
        if lengths is not None:
            padding_mask = _lengths_to_mask(lengths, x.shape[0], x.shape[1])
        factor = self._factor()
        rm, rv = self._stats()
        return F.masked_batch_norm(x, padding_mask, rm, rv, self.weight, self.bias, self.training or rm is None,
                                   factor, self.eps)


def _lengths_to_mask(lengths: Any, n: int, t: int) -> np.ndarray:
    """``(N, T)`` padding mask (``True`` = padding) of rows with ``lengths`` real positions."""
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu" or arr.shape != (n,):
        raise InvalidArgumentError(f"MaskedBatchNorm1d: lengths must be {n} integers, got {arr.dtype} {arr.shape}")
    if arr.min() < 0 or arr.max() > t:
        raise InvalidArgumentError(f"MaskedBatchNorm1d: lengths must lie in [0, {t}], got {arr.min()}..{arr.max()}")
    return np.arange(t)[None, :] >= arr[:, None]
