"""Tensor creation with ``torch``'s names and signatures: ``zeros``, ``ones``, ``full``,
``empty``, their ``*_like`` forms, ``arange``, ``linspace``, ``eye``, ``rand``, ``randn``, and
``stack`` (a new tensor joined from others).

Tensors are float32, so ``dtype`` may only name float32 (``None``, ``"float32"``,
``np.float32``), and ``arange`` gives float32 values where PyTorch's integer arguments give int64.
``empty`` returns zeros: tfm_rs never hands out uninitialized memory. ``rand`` and ``randn`` draw
from the generator :func:`tfm_rs.manual_seed` seeds (the one ``nn.init`` uses), in float64, then
round to float32, so a seed gives the same values on every machine.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from tfm_rs import _core
from tfm_rs._core import DTypeError, InvalidArgumentError, ShapeError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.parameter import as_tensor

__all__ = [
    "arange",
    "empty",
    "empty_like",
    "eye",
    "full",
    "full_like",
    "linspace",
    "ones",
    "ones_like",
    "rand",
    "randn",
    "stack",
    "zeros",
    "zeros_like",
]

Size = Union[int, Sequence[int]]


def _size(name: str, size: Tuple[Any, ...]) -> Tuple[int, ...]:
    """``f(2, 3)``, ``f((2, 3))`` and ``f([2, 3])`` alike, as torch's size arguments."""
    dims = size[0] if len(size) == 1 and not isinstance(size[0], numbers.Integral) else size
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"{name}: size must be ints or one sequence of ints, got {size!r}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{name}: size must be ints or one sequence of ints, got {size!r}")
        if d < 0:
            raise ShapeError(f"{name}: negative dimension {d} in size {dims}")
    return tuple(int(d) for d in dims)


def _check_dtype(name: str, dtype: Any) -> None:
    if dtype is None or dtype == "float32":
        return
    try:
        if np.dtype(dtype) == np.float32:
            return
    except TypeError:
        pass
    raise DTypeError(f"{name}: tfm_rs tensors are float32, got dtype={dtype!r}")


def _make(name: str, values: np.ndarray, dtype: Any, device: Any, requires_grad: bool) -> Tensor:
    _check_dtype(name, dtype)
    t = _core.tensor(np.asarray(values, dtype=np.float32, order="C"))
    if device is not None and str(device) != "cpu":
        t = t.to(device)
    if requires_grad:
        t.requires_grad_(True)
    return t


def zeros(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros of shape ``size``."""
    return _make("zeros", np.zeros(_size("zeros", size), np.float32), dtype, device, requires_grad)


def ones(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones of shape ``size``."""
    return _make("ones", np.ones(_size("ones", size), np.float32), dtype, device, requires_grad)


def empty(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of shape ``size``; zeros here (see the module doc)."""
    return _make("empty", np.zeros(_size("empty", size), np.float32), dtype, device, requires_grad)


def full(size: Size, fill_value: float, *, dtype: Any = None, device: Any = None,
         requires_grad: bool = False) -> Tensor:
    """A tensor of shape ``size`` filled with ``fill_value``."""
    return _make("full", np.full(_size("full", (size,)), float(fill_value), np.float32), dtype, device,
                 requires_grad)


def _like(name: str, input: Any) -> Tuple[int, ...]:
    if not isinstance(input, (Tensor, np.ndarray)):
        raise TypeError(f"{name}: expected a Tensor, got {type(input).__name__}")
    return tuple(input.shape)


def zeros_like(input: Tensor, *, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """Zeros of ``input``'s shape."""
    return zeros(_like("zeros_like", input), dtype=dtype, device=device, requires_grad=requires_grad)


def ones_like(input: Tensor, *, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """Ones of ``input``'s shape."""
    return ones(_like("ones_like", input), dtype=dtype, device=device, requires_grad=requires_grad)


def empty_like(input: Tensor, *, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of ``input``'s shape; zeros here (see the module doc)."""
    return empty(_like("empty_like", input), dtype=dtype, device=device, requires_grad=requires_grad)


def full_like(input: Tensor, fill_value: float, *, dtype: Any = None, device: Any = None,
              requires_grad: bool = False) -> Tensor:
    """``fill_value`` in ``input``'s shape."""
    return full(_like("full_like", input), fill_value, dtype=dtype, device=device, requires_grad=requires_grad)


def _finite(name: str, **values: float) -> None:
    for k, v in values.items():
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
            raise InvalidArgumentError(f"{name}: {k} must be a finite number, got {v!r}")


def arange(start: float, end: Optional[float] = None, step: float = 1, *, dtype: Any = None,
           device: Any = None, requires_grad: bool = False) -> Tensor:
    """``start, start + step, …`` below ``end`` (``arange(n)``: ``0 … n−1``), computed in
    float64 as ``start + i·step`` and rounded to float32."""
    if end is None:
        start, end = 0, start
    _finite("arange", start=start, end=end, step=step)
    if step == 0:
        raise InvalidArgumentError("arange: step must be nonzero")
    if (end - start) * step < 0:
        raise InvalidArgumentError(
            f"arange: the range from {start} to {end} is inconsistent with the sign of step {step}")
    n = max(0, math.ceil((end - start) / step))
    return _make("arange", start + np.arange(n, dtype=np.float64) * step, dtype, device, requires_grad)


def linspace(start: float, end: float, steps: int, *, dtype: Any = None, device: Any = None,
             requires_grad: bool = False) -> Tensor:
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive."""
    _finite("linspace", start=start, end=end)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise InvalidArgumentError(f"linspace: steps must be a non-negative int, got {steps!r}")
    return _make("linspace", np.linspace(start, end, int(steps), dtype=np.float64), dtype, device,
                 requires_grad)


def eye(n: int, m: Optional[int] = None, *, dtype: Any = None, device: Any = None,
        requires_grad: bool = False) -> Tensor:
    """The ``n × m`` identity (``m`` defaults to ``n``)."""
    rows, cols = _size("eye", (n, n if m is None else m))
    return _make("eye", np.eye(rows, cols, dtype=np.float32), dtype, device, requires_grad)


def rand(*size: Any, generator: Optional[np.random.Generator] = None, dtype: Any = None,
         device: Any = None, requires_grad: bool = False) -> Tensor:
    """Uniform on ``[0, 1)`` of shape ``size``, from ``generator`` (a NumPy ``Generator``) or
    the seeded default (see the module doc)."""
    gen = generator if generator is not None else init.generator()
    return _make("rand", gen.random(_size("rand", size)), dtype, device, requires_grad)


def randn(*size: Any, generator: Optional[np.random.Generator] = None, dtype: Any = None,
          device: Any = None, requires_grad: bool = False) -> Tensor:
    """Standard normal of shape ``size``, from ``generator`` or the seeded default."""
    gen = generator if generator is not None else init.generator()
    return _make("randn", gen.standard_normal(_size("randn", size)), dtype, device, requires_grad)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Joins tensors of one shape along a new dimension ``dim`` (``-ndim − 1 ≤ dim ≤ ndim``);
    the gradient flows back to each."""
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise InvalidArgumentError("stack: expects a non-empty sequence of tensors")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ShapeError(f"stack: every tensor must have the same shape, got {sorted(shapes)}")
    ndim = len(tensors[0].shape) + 1
    if not -ndim <= dim < ndim:
        raise IndexError(f"stack: dim {dim} is out of range for {ndim - 1}-D tensors")
    dim %= ndim
    return _core.cat([t.unsqueeze(dim) for t in tensors], dim)

