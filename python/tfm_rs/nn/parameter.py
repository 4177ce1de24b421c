"""``Parameter``: a :class:`tfm_rs.Tensor` that a :class:`~tfm_rs.nn.Module` registers as
trainable state, as ``torch.nn.Parameter``."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from tfm_rs._core import Tensor


def _as_float32(data: Any) -> np.ndarray:
    """A float32 NumPy copy of a Tensor, NumPy array, list or (CPU) torch tensor."""
    if isinstance(data, Tensor):
        return data.numpy().astype(np.float32, copy=True)
    return np.array(data, dtype=np.float32, copy=True)


class Parameter(Tensor):
    """A leaf tensor that is a module parameter (``requires_grad=True`` by default).

    ``Parameter(data)`` copies ``data`` (a Tensor, NumPy array or nested list) into a new float32
    leaf of the same shape. Assigning one to a :class:`~tfm_rs.nn.Module` attribute registers it,
    so it appears in ``parameters()`` and ``state_dict()``.
    """

    def __new__(cls, data: Any = None, requires_grad: bool = True) -> "Parameter":
        array = np.zeros((0,), np.float32) if data is None else _as_float32(data)
        return Tensor.__new__(cls, array, bool(requires_grad))

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Parameter":
        if id(self) in memo:
            return memo[id(self)]
        copy = type(self)(self.numpy(), self.requires_grad)
        copy._move_(self.device)
        memo[id(self)] = copy
        return copy

    def __reduce_ex__(self, protocol: int):
        return (type(self), (self.numpy(), self.requires_grad))

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


def copy_tensor(t: Optional[Tensor]) -> Optional[Tensor]:
    """A new leaf with ``t``'s values, ``requires_grad`` and device (deep copies of buffers)."""
    if t is None:
        return None
    if isinstance(t, Parameter):
        copy = Parameter(t.numpy(), t.requires_grad)
    else:
        copy = Tensor.__new__(Tensor, t.numpy().astype(np.float32, copy=True), t.requires_grad)
    copy._move_(t.device)
    return copy


def zeros_like(t: Tensor) -> Tensor:
    """A leaf of zeros with ``t``'s shape, on ``t``'s device (gradients, optimizer state)."""
    return Tensor.__new__(Tensor, np.zeros(t.shape, np.float32), False).to(t.device)


def as_tensor(x: Any) -> Tensor:
    """``x`` itself if it is a Tensor, else a float32 Tensor copy (NumPy inputs to modules)."""
    return x if isinstance(x, Tensor) else Tensor.__new__(Tensor, np.asarray(x, dtype=np.float32), False)
