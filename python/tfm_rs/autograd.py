"""Grad-mode context managers, as in ``torch.no_grad`` / ``torch.enable_grad``."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from tfm_rs import _core

F = TypeVar("F", bound=Callable[..., Any])


class set_grad_enabled:
    """Turns graph recording on or off for this thread inside a ``with`` block or a decorated
    function, restoring the previous mode afterwards."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self._previous: list[bool] = []

    def __enter__(self) -> None:
        self._previous.append(_core.set_grad_enabled(self.mode))

    def __exit__(self, *exc: object) -> None:
        _core.set_grad_enabled(self._previous.pop())

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.__class__(self.mode):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class no_grad(set_grad_enabled):
    """Operations inside do not record the graph (inference, optimizer updates)."""

    def __init__(self) -> None:
        super().__init__(False)

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class enable_grad(set_grad_enabled):
    """Re-enables graph recording inside a ``no_grad`` block."""

    def __init__(self) -> None:
        super().__init__(True)

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with enable_grad():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
