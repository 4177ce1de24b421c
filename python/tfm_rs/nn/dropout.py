"""``Dropout``, as ``torch.nn.Dropout``."""

from __future__ import annotations

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.nn.module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """In training mode zeroes each element with probability ``p`` and scales the others by
    ``1/(1-p)``; in eval mode (``module.eval()``) returns the input. Any shape → same shape.
    The masks come from ``tfm_rs.manual_seed``'s generator."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise InvalidArgumentError(f"dropout probability has to be between 0 and 1, but got {p}")
        if inplace:
            raise InvalidArgumentError("Dropout: inplace=True is not supported")
        self.p = float(p)
        self.inplace = False

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return input
        return F.dropout(input, self.p, True)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
