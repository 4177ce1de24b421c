"""Positional information for token embeddings (not in torch.nn; the paper's section 3.5).

Both modules take embeddings ``x (N, T, d_model)`` and return ``x`` plus a position vector per
time step; a sequence longer than the table raises :class:`tfm_rs.ShapeError` before any work.
"""

from __future__ import annotations

import numpy as np

from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter, as_tensor

__all__ = ["LearnedPositionalEmbedding", "SinusoidalPositionalEncoding", "sinusoidal_table"]


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """``PE[pos, 2i] = sin(pos / 10000^(2i/d_model))``, ``PE[pos, 2i+1] = cos(…)``:
    float32 ``(max_len, d_model)`` (computed in float64)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-np.log(10000.0) / d_model))
    pe = np.zeros((max_len, d_model), np.float64)
    pe[:, 0::2] = np.sin(pos * div)
    pe[:, 1::2] = np.cos(pos * div[: d_model // 2])
    return pe.astype(np.float32)


def _check_input(module: Module, x: Tensor, max_len: int, d_model: int) -> int:
    if x.ndim != 3 or x.shape[-1] != d_model:
        raise ShapeError(f"{type(module).__name__}: expected input (batch, seq, {d_model}), got shape {tuple(x.shape)}")
    t = x.shape[1]
    if t > max_len:
        raise ShapeError(f"{type(module).__name__}: sequence length T={t} exceeds max_len={max_len}; "
                         f"build the module with max_len >= {t}")
    return t


class SinusoidalPositionalEncoding(Module):
    """Adds the paper's fixed sinusoidal table: ``x (N, T, d_model)`` → ``x + pe[:T]``.

    The table ``pe (max_len, d_model)`` is a non-persistent buffer (recomputed, so it is not part
    of ``state_dict``). Scaling embeddings by ``√d_model`` and dropout are the caller's.
    """

    def __init__(self, d_model: int, max_len: int = 5000) -> None:
        super().__init__()
        if d_model <= 0 or max_len <= 0:
            raise InvalidArgumentError(
                f"SinusoidalPositionalEncoding: d_model ({d_model}) and max_len ({max_len}) must be positive")
        self.d_model, self.max_len = int(d_model), int(max_len)
        self.register_buffer("pe", sinusoidal_table(self.max_len, self.d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        t = _check_input(self, x, self.max_len, self.d_model)
        return as_tensor(x) + self.pe[:t]

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


class LearnedPositionalEmbedding(Module):
    """Adds a trained vector per position: ``x (N, T, d_model)`` → ``x + weight[:T]``.

    ``weight (max_len, d_model)`` starts from N(0, 1) like ``nn.Embedding``'s (so an
    ``nn.Embedding(max_len, d_model)`` state dict loads into it).
    """

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        if d_model <= 0 or max_len <= 0:
            raise InvalidArgumentError(
                f"LearnedPositionalEmbedding: max_len ({max_len}) and d_model ({d_model}) must be positive")
        self.max_len, self.d_model = int(max_len), int(d_model)
        self.weight = Parameter(np.zeros((self.max_len, self.d_model), np.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.normal_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        t = _check_input(self, x, self.max_len, self.d_model)
        return as_tensor(x) + self.weight[:t]

    def extra_repr(self) -> str:
        return f"{self.max_len}, {self.d_model}"
