"""Int8 dynamic quantization for inference, after ``torch.ao.quantization.quantize_dynamic``.

:func:`quantize_dynamic` replaces a model's :class:`~tfm_rs.nn.Linear` layers — including the
attention projections (q/k/v and out), which PyTorch's dynamic quantization leaves in float, and
the output projection — by :class:`QuantizedLinear` / :class:`QuantizedMultiheadAttention`:
int8 weights with one symmetric scale per output feature, activations quantized per row at run
time (asymmetric u8), products in the integer GEMM (AVX-512 VNNI ``vpdpbusd`` where the CPU has
it), dequantization and bias fused into its store. Everything else (embeddings, LayerNorm,
softmax, biases) stays float32. The result runs ``forward``, ``generate`` and ``translate``;
the native decoder multiplies by the same int8 weights. It is inference only.

:func:`save_quantized` / :func:`load_quantized` store the int8 weights and scales with the float
rest in one safetensors file (about a quarter of the float32 size; nothing is unpickled).
See docs/quantization.md.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Iterable, Optional, Set, Tuple, Type, Union

import numpy as np

from tfm_rs import nn
from tfm_rs._core import (
    AutogradError,
    DeviceError,
    InvalidArgumentError,
    QuantizedWeight,
    Tensor,
    quantized_linear,
)
from tfm_rs.nn.module import Module

__all__ = [
    "QuantizedLinear",
    "QuantizedMultiheadAttention",
    "QuantizedWeight",
    "is_quantized",
    "load_quantized",
    "quantize_dynamic",
    "quantized_state_dict",
    "save_quantized",
]

FORMAT = "tfm_rs.int8"
INT8 = ".int8"
SCALE = ".scale"


def _inference_only(module: Module, mode: bool) -> None:
    if mode:
        raise AutogradError(f"{type(module).__name__} is inference only (int8 weights have no gradient): "
                            "train the float model and quantize it afterwards")


def _frozen_bias(bias: Optional[Tensor]) -> Optional[nn.Parameter]:
    if bias is None:
        return None
    return nn.Parameter(bias.numpy().astype(np.float32), requires_grad=False)


class QuantizedLinear(Module):
    """``y = x·Wᵀ + b`` with ``weight`` an int8 :class:`QuantizedWeight` ``(out, in)`` (one scale
    per output feature) and a float32 ``bias``; ``x`` is quantized per row on each call.
    Inference only: ``train()`` raises."""

    def __init__(self, weight: QuantizedWeight, bias: Optional[Tensor] = None) -> None:
        super().__init__()
        if not isinstance(weight, QuantizedWeight):
            raise InvalidArgumentError(f"QuantizedLinear: weight must be a QuantizedWeight, "
                                       f"got {type(weight).__name__}")
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = _frozen_bias(bias)
        if self.bias is not None and tuple(self.bias.shape) != (self.out_features,):
            raise InvalidArgumentError(f"QuantizedLinear: bias has shape {tuple(self.bias.shape)}, expected "
                                       f"({self.out_features},)")
        self.training = False

    @classmethod
    def from_float(cls, mod: nn.Linear) -> "QuantizedLinear":
        """The int8 twin of a float ``Linear`` (as ``torch.ao.nn.quantized.dynamic.Linear``)."""
        return cls(QuantizedWeight.quantize(mod.weight), mod.bias)

    def forward(self, input: Any) -> Tensor:
        return quantized_linear(input, self.weight, self.bias)

    def train(self, mode: bool = True) -> "QuantizedLinear":
        _inference_only(self, mode)
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype=int8, " \
               f"bias={self.bias is not None}"


class QuantizedMultiheadAttention(nn.MultiheadAttention):
    """:class:`~tfm_rs.nn.MultiheadAttention` whose stacked q/k/v projection ``in_proj_weight`` is
    a :class:`QuantizedWeight` and whose ``out_proj`` is a :class:`QuantizedLinear`; attention
    itself (scores, softmax, weighted sum) stays float32. Inference only."""

    @classmethod
    def from_float(cls, mod: nn.MultiheadAttention) -> "QuantizedMultiheadAttention":
        if mod.in_proj_weight is None:
            raise InvalidArgumentError("quantize_dynamic: MultiheadAttention with kdim/vdim different from "
                                       "embed_dim (separate q/k/v weights) is not supported")
        if mod.__dict__.get("head_gate") is not None:
            raise InvalidArgumentError("quantize_dynamic: remove the head gate (head importance) first")
        q = cls.__new__(cls)
        Module.__init__(q)
        for key, value in mod.__dict__.items():
            if key not in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
                           "_forward_pre_hooks"):
                object.__setattr__(q, key, value)
        weight = QuantizedWeight.quantize(mod.in_proj_weight)
        q.register_parameter("in_proj_bias", _frozen_bias(mod.in_proj_bias))
        q.out_proj = QuantizedLinear.from_float(mod.out_proj)
        for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            q.register_parameter(name, None)
        object.__setattr__(q, "in_proj_weight", weight)
        q.training = False
        return q

    def _in_projection(self, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        E, w = self.inner_dim, self.in_proj_weight

        def project(x: Tensor, i: int, j: int) -> Tensor:
            return quantized_linear(x, w, self._bias(i, j), i * E, j * E)

        if query is key and key is value:
            qkv = self._heads(project(query, 0, 3), 3)
            return qkv[0], qkv[1], qkv[2]
        q = self._heads(project(query, 0, 1), 1)[0]
        if key is value:
            kv = self._heads(project(key, 1, 3), 2)
            return q, kv[0], kv[1]
        return q, self._heads(project(key, 1, 2), 1)[0], self._heads(project(value, 2, 3), 1)[0]

    def prune_heads(self, heads: Iterable[int]) -> None:
        raise InvalidArgumentError("prune_heads: prune the float model, then quantize it")

    def train(self, mode: bool = True) -> "QuantizedMultiheadAttention":
        _inference_only(self, mode)
        return super().train(mode)


_QUANTIZED = (QuantizedLinear, QuantizedMultiheadAttention)
_DEFAULT_SPEC: Set[Type[Module]] = {nn.Linear, nn.MultiheadAttention}


def is_quantized(model: Module) -> bool:
    """Whether ``model`` holds int8 layers (it went through :func:`quantize_dynamic`)."""
    return any(isinstance(m, _QUANTIZED) for m in model.modules())


def _check_dtype(dtype: Any) -> None:
    name = getattr(dtype, "__name__", None) or str(dtype)
    if name.replace("torch.", "") not in ("int8", "qint8"):
        raise InvalidArgumentError(f"quantize_dynamic: dtype must be 'int8' (or 'qint8'), got {dtype!r}")


def quantize_dynamic(model: Module, qconfig_spec: Optional[Iterable[Type[Module]]] = None,
                     dtype: Any = "int8", inplace: bool = False) -> Module:
    """The model with its ``Linear`` and ``MultiheadAttention`` layers (or only the types in
    ``qconfig_spec``) replaced by int8 ones, in eval mode, as
    ``torch.ao.quantization.quantize_dynamic(model, qconfig_spec, dtype)``; a copy unless
    ``inplace``. Its remaining float parameters no longer require gradients.

    Raises :class:`tfm_rs.InvalidArgumentError` for a model already quantized or an unknown
    ``dtype``, :class:`tfm_rs.DeviceError` for a model on the GPU (int8 runs on the CPU).
    """
    _check_dtype(dtype)
    if not isinstance(model, Module):
        raise InvalidArgumentError(f"quantize_dynamic: expected a tfm_rs.nn.Module, got {type(model).__name__}")
    if is_quantized(model):
        raise InvalidArgumentError("quantize_dynamic: this model is already quantized")
    if any(p.device != "cpu" for p in model.parameters()):
        raise DeviceError("quantize_dynamic: int8 inference runs on the CPU; move the model with .to('cpu') first")
    spec = set(_DEFAULT_SPEC if qconfig_spec is None else qconfig_spec)
    unknown = spec - _DEFAULT_SPEC
    if unknown:
        raise InvalidArgumentError(f"quantize_dynamic: can quantize nn.Linear and nn.MultiheadAttention, not "
                                   f"{sorted(t.__name__ for t in unknown)}")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()

    def swap(parent: Module) -> None:
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if type(child) is nn.Linear and nn.Linear in spec:
                setattr(parent, name, QuantizedLinear.from_float(child))
            elif type(child) is nn.MultiheadAttention and nn.MultiheadAttention in spec:
                setattr(parent, name, QuantizedMultiheadAttention.from_float(child))
            else:
                swap(child)

    swap(model)
    model.requires_grad_(False)
    return model


def _quantized_weights(model: Module) -> Dict[str, QuantizedWeight]:
    """``prefix + weight name → QuantizedWeight`` of every int8 layer."""
    out = {}
    for prefix, m in model.named_modules():
        dot = prefix + ("." if prefix else "")
        if isinstance(m, QuantizedLinear):
            out[dot + "weight"] = m.weight
        elif isinstance(m, QuantizedMultiheadAttention):
            out[dot + "in_proj_weight"] = m.in_proj_weight
    return out


def quantized_state_dict(model: Module) -> Dict[str, np.ndarray]:
    """The float ``state_dict`` plus, per int8 weight ``name``, ``name.int8`` (int8) and
    ``name.scale`` (float32, one per output feature)."""
    weights = _quantized_weights(model)
    if not weights:
        raise InvalidArgumentError("quantized_state_dict: the model has no int8 layers (use quantize_dynamic)")
    state: Dict[str, np.ndarray] = dict(model.state_dict())
    for name, w in weights.items():
        state[name + INT8] = np.ascontiguousarray(w.int8())
        state[name + SCALE] = np.ascontiguousarray(w.scales())
    return state


def save_quantized(model: Module, path: Union[str, os.PathLike]) -> None:
    """Writes :func:`quantized_state_dict` to one safetensors file."""
    from safetensors.numpy import save_file

    save_file(quantized_state_dict(model), str(path), metadata={"format": FORMAT})


def _apply_state(model: Module, state: Dict[str, np.ndarray], where: str) -> None:
    weights = _quantized_weights(model)
    missing = [n for n in weights if n + INT8 not in state or n + SCALE not in state]
    if missing:
        raise InvalidArgumentError(f"{where}: no int8 weights for {missing[:5]}")
    for name, old in weights.items():
        q, s = state.pop(name + INT8), state.pop(name + SCALE)
        if q.dtype != np.int8 or tuple(q.shape) != tuple(old.shape):
            raise InvalidArgumentError(f"{where}: {name}.int8 is {q.dtype} {tuple(q.shape)}, expected int8 "
                                       f"{tuple(old.shape)}")
        new = QuantizedWeight(q, s.astype(np.float32))
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        object.__setattr__(module, attr, new)
    model.load_state_dict(state)


def load_quantized(model: Module, path: Union[str, os.PathLike]) -> Module:
    """A float ``model`` of the saved one's configuration, quantized and given the saved int8
    weights and float rest (returned; ``model`` is modified in place). Raises
    :class:`tfm_rs.InvalidArgumentError` for a file that is not an int8 checkpoint."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), framework="np") as f:
        fmt = (f.metadata() or {}).get("format")
    if fmt != FORMAT:
        raise InvalidArgumentError(f"load_quantized: {path} is not an int8 checkpoint (format {fmt!r}, "
                                   f"expected {FORMAT!r})")
    if not is_quantized(model):
        model = quantize_dynamic(model, inplace=True)
    _apply_state(model, dict(load_file(str(path))), "load_quantized")
    return model
