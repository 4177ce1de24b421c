"""``torch``'s reductions, over the Tensor methods of the same names: ``sum``, ``mean``,
``var``, ``std``, ``max``, ``min``, ``amax``, ``amin``, ``argmax``, ``argmin``.

Indices (``argmax``, ``max(x, dim).indices``) are int64 NumPy arrays, the form token ids take
everywhere in this library. Inputs may be Tensors or NumPy arrays (copied as float32)."""

from __future__ import annotations

from typing import Any, Optional

from tfm_rs._core import Tensor
from tfm_rs.nn.parameter import as_tensor

__all__ = ["amax", "amin", "argmax", "argmin", "max", "mean", "min", "std", "sum", "var"]


def sum(input: Any, dim: Any = None, keepdim: bool = False) -> Tensor:  # noqa: A001
    """The sum over ``dim`` (an int, a sequence, or None for all)."""
    return as_tensor(input).sum(dim, keepdim)


def mean(input: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """The mean over ``dim`` (an int, a sequence, or None for all)."""
    return as_tensor(input).mean(dim, keepdim)


def var(input: Any, dim: Any = None, unbiased: Optional[bool] = None, keepdim: bool = False, *,
        correction: Optional[float] = None) -> Tensor:
    """The variance over ``dim``, with Bessel's ``correction`` (default 1)."""
    return as_tensor(input).var(dim, unbiased, keepdim, correction=correction)


def std(input: Any, dim: Any = None, unbiased: Optional[bool] = None, keepdim: bool = False, *,
        correction: Optional[float] = None) -> Tensor:
    """The standard deviation over ``dim``, with Bessel's ``correction`` (default 1)."""
    return as_tensor(input).std(dim, unbiased, keepdim, correction=correction)


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
