"""tfm_rs: the Transformer of "Attention Is All You Need" on a Rust core.

Tensors record operations for autograd; the kernels (packed SIMD GEMM, fused attention,
softmax, LayerNorm, …) run in Rust without the GIL. Names and semantics follow PyTorch.
"""

from tfm_rs._core import (
    AutogradError,
    DeviceError,
    DTypeError,
    IndexOutOfRangeError,
    InternalError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
    Tensor,
    TfmError,
    __version__,
    cat,
    cpu_features,
    from_numpy,
    get_num_threads,
    get_rng_state,
    gpu_available,
    gpu_info,
    is_grad_enabled,
    set_isa,
    set_num_threads,
    set_rng_state,
    tensor,
)
from tfm_rs._core import manual_seed as _core_manual_seed
from tfm_rs import functional
from tfm_rs import masks  # noqa: F401 (tfm_rs.masks, used as such)
from tfm_rs import nn  # after functional, which it builds on
from tfm_rs import optim
from tfm_rs import models
from tfm_rs.autograd import enable_grad, no_grad, set_grad_enabled
from tfm_rs.amp import autocast
from tfm_rs.creation import (
    arange,
    empty,
    empty_like,
    eye,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    rand,
    randn,
    stack,
    zeros,
    zeros_like,
)
from tfm_rs.functional import log_softmax, matmul, relu, sigmoid, softmax, tanh
from tfm_rs.pointwise import abs, cos, exp, log, sin, sqrt
from tfm_rs.reduction import amax, amin, argmax, argmin, max, mean, min, std, sum, var
from tfm_rs.selection import clamp, clip, eq, ge, gt, le, lt, maximum, minimum, ne, where


# Submodules with heavier third-party imports (tokenizers, safetensors, sacrebleu) load on
# first use, so `import tfm_rs` stays quick.
_LAZY = ("checkpoint", "data", "metrics", "train", "quantization")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"tfm_rs.{name}")
    raise AttributeError(f"module 'tfm_rs' has no attribute {name!r}")


def manual_seed(seed: int) -> None:
    """Seeds dropout masks and ``nn.init``'s generator, like ``torch.manual_seed``."""
    _core_manual_seed(seed)
    nn.init.manual_seed(seed)

__all__ = [
    "AutogradError",
    "DTypeError",
    "DeviceError",
    "IndexOutOfRangeError",
    "InternalError",
    "InvalidArgumentError",
    "NonFiniteError",
    "ShapeError",
    "Tensor",
    "TfmError",
    "__version__",
    "abs",
    "amax",
    "amin",
    "arange",
    "argmax",
    "argmin",
    "autocast",
    "cat",
    "clamp",
    "clip",
    "cos",
    "cpu_features",
    "empty",
    "empty_like",
    "enable_grad",
    "eq",
    "exp",
    "eye",
    "from_numpy",
    "full",
    "full_like",
    "functional",
    "ge",
    "get_num_threads",
    "get_rng_state",
    "gpu_available",
    "gpu_info",
    "gt",
    "is_grad_enabled",
    "le",
    "linspace",
    "log",
    "log_softmax",
    "lt",
    "manual_seed",
    "matmul",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "models",
    "ne",
    "nn",
    "no_grad",
    "ones",
    "ones_like",
    "optim",
    "rand",
    "randn",
    "relu",
    "set_grad_enabled",
    "set_isa",
    "set_num_threads",
    "set_rng_state",
    "sigmoid",
    "sin",
    "softmax",
    "sqrt",
    "stack",
    "std",
    "sum",
    "tanh",
    "tensor",
    "var",
    "where",
    "zeros",
    "zeros_like",
]
