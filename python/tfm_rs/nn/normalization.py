"""``LayerNorm`` and ``RMSNorm``, as ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm``."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

import tfm_rs.functional as F
from tfm_rs._core import Tensor
from tfm_rs.nn import init
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter

__all__ = ["LayerNorm", "RMSNorm"]


def _as_shape(normalized_shape: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    return tuple(int(d) for d in normalized_shape)


class LayerNorm(Module):
    """Normalizes over the trailing ``normalized_shape`` dimensions (biased variance), then
    scales by ``weight`` and shifts by ``bias`` (ones and zeros at the start): input
    ``(*, *normalized_shape)`` → same shape.

    ``elementwise_affine=False`` drops both parameters; ``bias=False`` only the shift.
    """

    def __init__(self, normalized_shape: Union[int, Sequence[int]], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.normalized_shape: Tuple[int, ...] = _as_shape(normalized_shape)
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, np.float32))
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape, np.float32))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def add_forward(self, input: Tensor, residual: Tensor) -> Tensor:
        """``self(input + residual)`` in one fused pass (the post-LN residual connection)."""
        return F.add_layer_norm(input, residual, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class RMSNorm(Module):
    """Root-mean-square normalization (Zhang & Sennrich 2019; Llama's norm) over the trailing
    ``normalized_shape`` dimensions: ``input / sqrt(mean(input²) + eps) * weight``, no centring
    and no bias. ``eps=None`` is float32's machine epsilon, as PyTorch. Input
    ``(*, *normalized_shape)`` → same shape.
    """

    def __init__(self, normalized_shape: Union[int, Sequence[int]], eps: Optional[float] = None,
                 elementwise_affine: bool = True) -> None:
        super().__init__()
        self.normalized_shape: Tuple[int, ...] = _as_shape(normalized_shape)
        self.eps = None if eps is None else float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, np.float32))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)

    def forward(self, input: Tensor) -> Tensor:
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
