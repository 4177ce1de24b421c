"""tfm_rs: the Transformer of "Attention Is All You Need" on a Rust core.

Tensors record operations for autograd; the kernels (packed SIMD GEMM, fused attention,
softmax, LayerNorm, …) run in Rust without the GIL. Names and semantics follow PyTorch.
"""

from tfm_rs._core import (
    AutogradError,
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
    is_grad_enabled,
    set_isa,
    set_num_threads,
    set_rng_state,
    tensor,
)
from tfm_rs._core import manual_seed as _core_manual_seed
from tfm_rs import functional
from tfm_rs import nn  # after functional, which it builds on
from tfm_rs import optim
from tfm_rs.autograd import enable_grad, no_grad, set_grad_enabled


def manual_seed(seed: int) -> None:
    """Seeds dropout masks and ``nn.init``'s generator, like ``torch.manual_seed``."""
    _core_manual_seed(seed)
    nn.init.manual_seed(seed)

__all__ = [
    "AutogradError",
    "DTypeError",
    "IndexOutOfRangeError",
    "InternalError",
    "InvalidArgumentError",
    "NonFiniteError",
    "ShapeError",
    "Tensor",
    "TfmError",
    "__version__",
    "cat",
    "cpu_features",
    "enable_grad",
    "from_numpy",
    "functional",
    "get_num_threads",
    "get_rng_state",
    "is_grad_enabled",
    "manual_seed",
    "nn",
    "no_grad",
    "optim",
    "set_grad_enabled",
    "set_isa",
    "set_num_threads",
    "set_rng_state",
    "tensor",
]
