"""``Conv1d``, as ``torch.nn.Conv1d`` (zero padding), plus ``causal=True``: all the padding on
the left, so output ``t`` sees inputs ``≤ t`` only (WaveNet / ConvS2S decoders). The kernel is
im2col + GEMM in Rust (:func:`tfm_rs.functional.conv1d`)."""

from __future__ import annotations

import math
from typing import Any, Tuple, Union

import numpy as np

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter

__all__ = ["Conv1d"]


def _positive(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgumentError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Conv1d(Module):
    """1-D convolution: input ``(N, in_channels, L)`` (or unbatched ``(in_channels, L)``) →
    ``(N, out_channels, L_out)``. ``weight`` ``(out_channels, in_channels / groups,
    kernel_size)`` and ``bias`` from U(−1/√fan_in, 1/√fan_in), fan_in = in_channels / groups ·
    kernel_size, as PyTorch. ``padding``: an int (both sides), ``"valid"`` (0) or ``"same"``
    (stride 1; an odd total puts the extra zero on the right, as PyTorch). ``causal=True`` pads
    ``dilation·(kernel_size − 1)`` zeros on the left only (``padding`` must then be 0), so the
    output keeps the input's length with stride 1. Only ``padding_mode="zeros"``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: Union[int, str] = 0, dilation: int = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, causal: bool = False) -> None:
        super().__init__()
        name = "Conv1d"
        self.in_channels = _positive(name, "in_channels", in_channels)
        self.out_channels = _positive(name, "out_channels", out_channels)
        self.kernel_size = _positive(name, "kernel_size", kernel_size)
        self.stride = _positive(name, "stride", stride)
        self.dilation = _positive(name, "dilation", dilation)
        self.groups = _positive(name, "groups", groups)
        if in_channels % groups or out_channels % groups:
            raise InvalidArgumentError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                                       f"must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise InvalidArgumentError(f"{name}: only padding_mode='zeros' is supported, got {padding_mode!r}")
        self.padding_mode, self.causal = padding_mode, bool(causal)
        span = self.dilation * (self.kernel_size - 1)
        if causal:
            if padding not in (0, "valid"):
                raise InvalidArgumentError(f"{name}: causal=True sets the padding itself; got padding={padding!r}")
            self._pad: Tuple[int, int] = (span, 0)
        elif padding == "same":
            if self.stride != 1:
                raise InvalidArgumentError(f"{name}: padding='same' needs stride 1, got {stride}")
            self._pad = (span // 2, span - span // 2)
        elif padding == "valid":
            self._pad = (0, 0)
        else:
            p = _positive(name, "padding", padding, 0)
            self._pad = (p, p)
        self.padding = padding
        self.weight = Parameter(np.zeros((out_channels, in_channels // groups, kernel_size), np.float32))
        if bias:
            self.bias = Parameter(np.zeros((out_channels,), np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels // self.groups * self.kernel_size)
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Any) -> Tensor:
        x = input if isinstance(input, Tensor) else Tensor(np.asarray(input, dtype=np.float32))
        if x.ndim == 2:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.ndim != 3:
            raise ShapeError(f"Conv1d: input must be (N, C, L) or (C, L), got {tuple(x.shape)}")
        return F.conv1d(x, self.weight, self.bias, self.stride, self._pad, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.causal:
            s += ", causal=True"
        elif self.padding != 0:
            s += f", padding={self.padding!r}"
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
