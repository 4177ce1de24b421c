"""Parameter initialization with ``torch.nn.init``'s names and formulas.

Values are drawn in float64 from one NumPy ``Generator`` and written into the tensor in place
with ``copy_`` (not recorded by autograd). :func:`manual_seed` re-seeds that generator;
``tfm_rs.manual_seed(seed)`` is meant to call it, so one seed fixes both the initial weights
and the dropout masks.
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import numpy as np

from tfm_rs._core import InvalidArgumentError, Tensor

__all__ = [
    "calculate_gain",
    "constant_",
    "generator",
    "get_rng_state",
    "kaiming_uniform_",
    "manual_seed",
    "normal_",
    "ones_",
    "set_rng_state",
    "uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]

# Deterministic default, like torch's fixed initial seed: two fresh processes build equal models.
_DEFAULT_SEED = 67280421310721
_generator = np.random.default_rng(_DEFAULT_SEED)


def manual_seed(seed: int) -> np.random.Generator:
    """Re-seeds the generator used by every ``*_`` function here (and so by every module's
    ``reset_parameters``); returns it."""
    global _generator
    _generator = np.random.default_rng(int(seed))
    return _generator


def generator() -> np.random.Generator:
    """The NumPy generator that initialization draws from."""
    return _generator


def get_rng_state() -> dict:
    """A copy of the initialization generator's state (a dict), for :func:`set_rng_state`."""
    return copy.deepcopy(_generator.bit_generator.state)


def set_rng_state(state: dict) -> None:
    """Restores a state from :func:`get_rng_state`: the next draws repeat."""
    _generator.bit_generator.state = copy.deepcopy(state)


def _fill(tensor: Tensor, values: np.ndarray) -> Tensor:
    tensor.copy_(np.asarray(values, dtype=np.float32).reshape(tensor.shape))
    return tensor


def _calculate_fan_in_and_fan_out(tensor: Tensor) -> Tuple[int, int]:
    shape = tuple(tensor.shape)
    if len(shape) < 2:
        raise InvalidArgumentError(
            f"fan in and fan out can not be computed for a tensor with fewer than 2 dimensions (shape {shape})")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: Optional[float] = None) -> float:
    """The recommended gain for a nonlinearity, as ``torch.nn.init.calculate_gain``."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise InvalidArgumentError(f"unsupported nonlinearity {nonlinearity!r}")


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fills ``tensor`` with values from U(a, b)."""
    return _fill(tensor, _generator.uniform(a, b, tensor.shape))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fills ``tensor`` with values from N(mean, std²)."""
    return _fill(tensor, _generator.normal(mean, std, tensor.shape))


def constant_(tensor: Tensor, val: float) -> Tensor:
    return _fill(tensor, np.full(tensor.shape, val))


def zeros_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 0.0)


def ones_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """U(−a, a) with ``a = gain·√(6 / (fan_in + fan_out))`` (Glorot & Bengio)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -a, a)


def xavier_normal_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """N(0, std²) with ``std = gain·√(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)))


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> Tensor:
    """U(−b, b) with ``b = gain·√(3 / fan)`` (He et al.); ``a`` is the leaky-ReLU slope.
    ``nn.Linear`` uses ``a=√5``, which gives ``b = 1/√fan_in``."""
    if mode not in ("fan_in", "fan_out"):
        raise InvalidArgumentError(f"mode {mode!r} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan) if fan > 0 else 0.0
    return uniform_(tensor, -bound, bound)
