"""``torch``'s elementwise functions that are Tensor methods here: ``exp``, ``log``, ``sqrt``,
``abs``, ``sin``, ``cos`` (``sigmoid``, ``tanh``, ``relu`` and the softmaxes come from ``tfm_rs.functional``).
Inputs may be Tensors or NumPy arrays (copied as float32)."""

from __future__ import annotations

from typing import Any

from tfm_rs._core import Tensor
from tfm_rs.nn.parameter import as_tensor

__all__ = ["abs", "cos", "exp", "log", "sin", "sqrt"]


def exp(input: Any) -> Tensor:
    """``eˣ`` elementwise (``Tensor.exp``)."""
    return as_tensor(input).exp()


def log(input: Any) -> Tensor:
    """The natural logarithm elementwise (``Tensor.log``)."""
    return as_tensor(input).log()


def sqrt(input: Any) -> Tensor:
    """``√x`` elementwise (``Tensor.sqrt``)."""
    return as_tensor(input).sqrt()


def abs(input: Any) -> Tensor:  # noqa: A001 (torch.abs)
    """``|x|`` elementwise (``Tensor.abs``)."""
    return as_tensor(input).abs()


def sin(input: Any) -> Tensor:
    """``sin x`` elementwise (``Tensor.sin``)."""
    return as_tensor(input).sin()


def cos(input: Any) -> Tensor:
    """``cos x`` elementwise (``Tensor.cos``)."""
    return as_tensor(input).cos()
