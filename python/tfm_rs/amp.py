"""Mixed precision, after ``torch.autocast``: inside ``with tfm_rs.autocast("bf16"):`` the matrix
products (``linear``, ``matmul``, the attention scores) take bfloat16 inputs and accumulate in
float32; everything else (LayerNorm, softmax, losses, reductions, the weights and the optimizer
state) stays float32. Tensors stay float32 throughout: the rounding happens inside the kernels.

The products record the precision they ran at, so their backward runs at it too, whether or not
``backward()`` is called inside the block. The state is per thread, as PyTorch's is.

On CPUs with AMX (Sapphire Rapids and later) the bf16 products run on AMX tiles; with AVX-512
BF16 alone on ``vdpbf16ps``; elsewhere they are emulated (float32 arithmetic on bf16-rounded
inputs: the same results, slower than float32). :func:`precision_info` says which.
See docs/precision.md.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Optional, Tuple, TypeVar

from tfm_rs import _core
from tfm_rs._core import InvalidArgumentError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["autocast", "get_autocast_dtype", "is_autocast_enabled", "precision_info"]

_BF16 = ("bf16", "bfloat16")
_F32 = ("float32", "fp32", "f32", "float")
_state = threading.local()


def _normalize(dtype: Any) -> Optional[str]:
    """``"bf16"`` for the bfloat16 spellings (``torch.bfloat16`` too), ``None`` for float32;
    :class:`tfm_rs.InvalidArgumentError` for anything else."""
    name = str(dtype).strip().lower()
    if name.startswith("torch."):
        name = name[len("torch."):]
    if name in _BF16:
        return "bf16"
    if name in _F32:
        return None
    raise InvalidArgumentError(f"autocast: unknown precision {dtype!r}; expected one of bf16 (bfloat16), float32")


def current() -> Optional[str]:
    """The precision the products of this thread run at now: ``"bf16"``, or ``None`` (float32)."""
    return getattr(_state, "precision", None)


def is_autocast_enabled() -> bool:
    """Whether an :class:`autocast` block is active on this thread."""
    return current() is not None


def get_autocast_dtype() -> str:
    """The precision of the active block (``"bf16"``), else ``"float32"``."""
    return current() or "float32"


def precision_info(precision: str = "bf16") -> Tuple[str, Optional[str]]:
    """``(path, note)``: how ``precision``'s products run on this machine (``"amx_bf16"``,
    ``"avx512_bf16"``, ``"emulated on avx2"``, ``"float32"``), and for an emulated bf16 a sentence
    saying it is slower than float32 (else ``None``)."""
    name = _normalize(precision) or "float32"
    return _core.precision_info(name)


class autocast:
    """``torch.autocast``'s shape: ``autocast(device_type="cpu", dtype="bf16", enabled=True)``,
    as a ``with`` block or a decorator. The first argument may also be the precision itself,
    ``autocast("bf16")``; ``dtype`` accepts ``"bf16"``/``"bfloat16"``/``torch.bfloat16`` and
    ``"float32"`` (products in float32). Only ``device_type="cpu"`` exists: bf16 runs on the CPU.
    ``cache_enabled`` is accepted for compatibility and ignored (there is no cast cache)."""

    def __init__(self, device_type: Any = "cpu", dtype: Any = None, enabled: bool = True,
                 cache_enabled: Optional[bool] = None) -> None:
        device = str(device_type).strip().lower()
        if dtype is None and (device.removeprefix("torch.") in _BF16 + _F32):
            device, dtype = "cpu", device_type
        if device != "cpu":
            raise InvalidArgumentError(f"autocast: device_type must be 'cpu' (bf16 mixed precision runs on the "
                                       f"CPU only), got {device_type!r}")
        self.precision = _normalize("bf16" if dtype is None else dtype) if enabled else None
        self._previous: list = []

    def __enter__(self) -> "autocast":
        self._previous.append(current())
        _state.precision = self.precision
        return self

    def __exit__(self, *exc: object) -> None:
        _state.precision = self._previous.pop()

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
