"""``LowRankLinear``: a linear layer whose ``(out, in)`` weight is a product ``U·V`` of rank
``r``, i.e. two linear layers ``in → r → out`` with ``r·(in + out)`` weights instead of
``in·out``; and its construction from a trained ``Linear`` by truncated SVD.

By Eckart–Young, keeping the ``r`` largest singular values gives the best rank-``r``
approximation in the Frobenius norm, with error ``√(Σ_{i>r} σ_i²)``.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.linear import Linear
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter

__all__ = ["LowRankLinear"]


class LowRankLinear(Module):
    """``y = (x·Vᵀ)·Uᵀ + b``: input ``(*, in_features)`` → ``(*, out_features)``.

    Parameters: ``weight_v (rank, in_features)``, ``weight_u (out_features, rank)``, ``bias
    (out_features,)``. Initialized so that the product has ``nn.Linear``'s scale; usually built
    with :meth:`from_dense`. Needs ``1 ≤ rank ≤ min(in_features, out_features)`` (a larger rank
    only adds parameters).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise InvalidArgumentError(f"LowRankLinear: sizes must be positive, got ({in_features}, {out_features})")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(in_features,
                                                                                                    out_features):
            raise InvalidArgumentError(f"LowRankLinear: rank must be an integer in [1, min(in_features, out_features)"
                                       f" = {min(in_features, out_features)}], got {rank!r}")
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.weight_v = Parameter(np.zeros((self.rank, self.in_features), np.float32))
        self.weight_u = Parameter(np.zeros((self.out_features, self.rank), np.float32))
        if bias:
            self.bias = Parameter(np.zeros(self.out_features, np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each factor as a Linear of its own shape would start (PyTorch's kaiming_uniform_, a=√5).
        init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        init.kaiming_uniform_(self.weight_u, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_dense(cls, linear: Linear, rank: Optional[int] = None, energy: float = 0.95) -> "LowRankLinear":
        """The truncated SVD of ``linear.weight = P·diag(σ)·Qᵀ``: ``weight_u = P_r·diag(√σ_r)``,
        ``weight_v = diag(√σ_r)·Q_rᵀ``, the bias copied. ``rank=None`` keeps the fewest singular
        values whose squares hold at least ``energy`` of ``Σσ²`` (the squared Frobenius norm).
        The SVD runs once, in float64 NumPy, at conversion time."""
        if not isinstance(linear, Linear):
            raise InvalidArgumentError(f"LowRankLinear.from_dense: expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.numpy().astype(np.float64)
        p, s, qt = np.linalg.svd(w, full_matrices=False)
        if rank is None:
            if not 0.0 < energy <= 1.0:
                raise InvalidArgumentError(f"LowRankLinear.from_dense: energy must be in (0, 1], got {energy}")
            total = float(np.sum(s ** 2))
            kept = np.cumsum(s ** 2) >= energy * total * (1 - 1e-12)
            rank = int(np.argmax(kept)) + 1 if total > 0 else 1
        out = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
        root = np.sqrt(s[:rank])
        out.weight_u.copy_((p[:, :rank] * root).astype(np.float32))
        out.weight_v.copy_((root[:, None] * qt[:rank]).astype(np.float32))
        if linear.bias is not None:
            out.bias.copy_(linear.bias.numpy())
        return out

    @property
    def weight(self) -> Tensor:
        """The dense ``(out_features, in_features)`` product ``U·V`` (computed on each access;
        what code that reads a Linear's ``weight``, such as the native decoder, sees)."""
        return F.matmul(self.weight_u, self.weight_v)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(F.linear(input, self.weight_v), self.weight_u, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")
