"""``torch``'s comparison and selection functions, over the Tensor methods of the same names:
``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``where``, ``clamp`` (``clip``), ``maximum``,
``minimum``.

float32 is the only dtype, so comparisons give 0/1 float tensors, usable as conditions and
masks, and summed or averaged as they are. Inputs may be Tensors or NumPy arrays (copied as
float32)."""

from __future__ import annotations

from typing import Any, Optional

from tfm_rs._core import Tensor
from tfm_rs.nn.parameter import as_tensor

__all__ = ["clamp", "clip", "eq", "ge", "gt", "le", "lt", "maximum", "minimum", "ne", "where"]


def eq(input: Any, other: Any) -> Tensor:
    """``input == other`` elementwise, as 1.0 / 0.0 (NaN equals nothing)."""
    return as_tensor(input).eq(other)


def ne(input: Any, other: Any) -> Tensor:
    """``input != other`` elementwise, as 1.0 / 0.0."""
    return as_tensor(input).ne(other)


def lt(input: Any, other: Any) -> Tensor:
    """``input < other`` elementwise, as 1.0 / 0.0."""
    return as_tensor(input).lt(other)


def le(input: Any, other: Any) -> Tensor:
    """``input <= other`` elementwise, as 1.0 / 0.0."""
    return as_tensor(input).le(other)


def gt(input: Any, other: Any) -> Tensor:
    """``input > other`` elementwise, as 1.0 / 0.0."""
    return as_tensor(input).gt(other)


def ge(input: Any, other: Any) -> Tensor:
    """``input >= other`` elementwise, as 1.0 / 0.0."""
    return as_tensor(input).ge(other)


def where(condition: Any, input: Any, other: Any) -> Tensor:
    """``input`` where ``condition`` holds (is nonzero or True), else ``other``, with
    broadcasting; each operand's gradient comes from the positions that took it."""
    return as_tensor(input).where(condition, other)


def clamp(input: Any, min: Optional[float] = None, max: Optional[float] = None) -> Tensor:  # noqa: A002
    """``min(max(input, min), max)``; the gradient passes where ``min < input < max``
    (0 at the bounds, as PyTorch's)."""
    return as_tensor(input).clamp(min, max)


clip = clamp


def maximum(input: Any, other: Any) -> Tensor:
    """The elementwise maximum (NaN propagates; ties share the gradient in halves)."""
    return as_tensor(input).maximum(other)


def minimum(input: Any, other: Any) -> Tensor:
    """The elementwise minimum (NaN propagates; ties share the gradient in halves)."""
    return as_tensor(input).minimum(other)
