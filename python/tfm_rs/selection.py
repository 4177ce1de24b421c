"""``torch``'s comparison, selection and max/min functions, over the Tensor methods of the same
names: ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``where``, ``clamp`` (``clip``),
``maximum``, ``minimum``, ``max``, ``min``, ``amax``, ``amin``, ``argmax``, ``argmin``.

float32 is the only dtype, so comparisons give 0/1 float tensors (usable as conditions and
masks, and summed or averaged as they are), and indices (``argmax``, ``max(x, dim).indices``)
are int64 NumPy arrays, the form token ids take everywhere in this library. Inputs may be
Tensors or NumPy arrays (copied as float32)."""

from __future__ import annotations

from typing import Any, Optional

from tfm_rs._core import Tensor
from tfm_rs.nn.parameter import as_tensor

__all__ = [
    "amax", "amin", "argmax", "argmin", "clamp", "clip", "eq", "ge", "gt", "le", "lt", "max",
    "maximum", "min", "minimum", "ne", "where",
]


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


def max(input: Any, dim: Any = None, keepdim: bool = False) -> Any:  # noqa: A001
    """The largest value; along ``dim`` the named tuple ``(values, indices)``; with a tensor
    as the second argument, :func:`maximum`."""
    return as_tensor(input).max(dim, keepdim)


def min(input: Any, dim: Any = None, keepdim: bool = False) -> Any:  # noqa: A001
    """The smallest value; along ``dim`` the named tuple ``(values, indices)``; with a tensor
    as the second argument, :func:`minimum`."""
    return as_tensor(input).min(dim, keepdim)


def amax(input: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """The largest value over ``dim`` (an int, a sequence, or None for all)."""
    return as_tensor(input).amax(dim, keepdim)


def amin(input: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """The smallest value over ``dim`` (an int, a sequence, or None for all)."""
    return as_tensor(input).amin(dim, keepdim)


def argmax(input: Any, dim: Optional[int] = None, keepdim: bool = False) -> Any:
    """Indices of the largest values along ``dim`` (of the flattened input when None)."""
    return as_tensor(input).argmax(dim, keepdim)


def argmin(input: Any, dim: Optional[int] = None, keepdim: bool = False) -> Any:
    """Indices of the smallest values along ``dim`` (of the flattened input when None)."""
    return as_tensor(input).argmin(dim, keepdim)
