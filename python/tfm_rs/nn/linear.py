"""``Linear`` and ``Identity``, as ``torch.nn``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter

__all__ = ["Identity", "Linear"]


class Identity(Module):
    """Returns its input unchanged (a placeholder layer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: Any) -> Any:
        return input


class Linear(Module):
    """``y = x·Wᵀ + b``: input ``(*, in_features)`` → output ``(*, out_features)``.

    ``weight`` is ``(out_features, in_features)``, ``bias`` ``(out_features,)``; both start from
    U(−1/√in_features, 1/√in_features), as in PyTorch (kaiming_uniform_ with a=√5).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise InvalidArgumentError(f"Linear: sizes must be non-negative, got ({in_features}, {out_features})")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(np.zeros((out_features, in_features), np.float32))
        if bias:
            self.bias = Parameter(np.zeros((out_features,), np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
