"""Pruning by masks, as ``torch.nn.utils.prune``: same functions, arguments, masks and
``state_dict`` keys.

Pruning ``module.<name>`` moves the parameter to ``<name>_orig`` and adds a buffer
``<name>_mask`` (1 = kept, 0 = pruned); ``module.<name>`` becomes the plain tensor
``<name>_orig * <name>_mask``, recomputed by a forward pre-hook before every call, so the forward
uses the masked weight and the gradient reaching ``<name>_orig`` is zero where the mask is —
during training too. Pruning the same tensor again composes the masks: the new method only
sees the entries (unstructured) or channels (structured) that are still kept, and a fractional
``amount`` is a fraction of those. :func:`remove` makes the pruning permanent (``<name>`` is a
parameter again, with the zeros in it).

Like PyTorch's, these masks save neither time nor memory: the dense matrix is still multiplied.
For a smaller, faster model remove whole heads or feed-forward channels with the models'
``prune_heads`` / ``prune_ffn``.

Ties in importance (equal magnitudes or norms), which PyTorch leaves to ``topk``, are broken
by position here: among equals the earlier entry (or channel) is pruned first.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from tfm_rs._core import IndexOutOfRangeError, InvalidArgumentError, Tensor
from tfm_rs.nn.module import Module

__all__ = ["BasePruningMethod", "CustomFromMask", "Identity", "L1Unstructured", "LnStructured",
           "PruningContainer", "RandomStructured", "RandomUnstructured", "custom_from_mask",
           "global_unstructured", "identity", "is_pruned", "l1_unstructured", "ln_structured",
           "random_structured", "random_unstructured", "remove"]

Amount = Union[int, float]


# ---------------------------------------------------------------------------------------- amounts

def _validate_amount(amount: Any) -> None:
    """A fraction in [0, 1] or a non-negative count (checked when the method is made)."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise InvalidArgumentError(f"prune: amount must be a float in [0, 1] or a non-negative int, got {amount!r}")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise InvalidArgumentError(f"prune: amount={amount} should be a non-negative integer (a count) or a "
                                       "float in [0, 1] (a fraction)")
    elif not 0.0 <= float(amount) <= 1.0:
        raise InvalidArgumentError(f"prune: amount={amount} should be a float in the range [0, 1] (a fraction) "
                                   "or a non-negative integer (a count)")


def _count_to_prune(amount: Amount, size: int) -> int:
    """How many of ``size`` units ``amount`` prunes; Python's ``round`` (half to even), as PyTorch."""
    if isinstance(amount, numbers.Integral):
        if amount > size:
            raise InvalidArgumentError(f"prune: amount={amount} should be smaller than the number of parameters "
                                       f"to prune={size}")
        return int(amount)
    return int(round(float(amount) * size))


def _smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest scores, the earlier index first among equals."""
    return np.argsort(scores, kind="stable")[:k]


# ---------------------------------------------------------------------------------------- methods

class BasePruningMethod(ABC):
    """A way of computing a mask; an instance is also the forward pre-hook that applies it."""

    PRUNING_TYPE: str = ""
    _tensor_name: Optional[str] = None

    @abstractmethod
    def compute_mask(self, t: np.ndarray, default_mask: np.ndarray) -> np.ndarray:
        """The new mask (float32, ``t``'s shape) from importance scores ``t`` and the mask so far."""

    def __call__(self, module: Module, inputs: Tuple[Any, ...]) -> None:
        object.__setattr__(module, self._tensor_name, self.apply_mask(module))

    def apply_mask(self, module: Module) -> Tensor:
        """``<name>_orig * <name>_mask``, on the autograd graph of ``<name>_orig``."""
        orig = module._parameters[self._tensor_name + "_orig"]
        return orig * module._buffers[self._tensor_name + "_mask"]

    @classmethod
    def apply(cls, module: Module, name: str, *args: Any, importance_scores: Any = None,
              **kwargs: Any) -> "BasePruningMethod":
        """Prunes ``module.<name>`` with ``cls(*args, **kwargs)``, composing with an earlier pruning."""
        return _apply(module, name, cls(*args, **kwargs), importance_scores)

    def prune(self, t: Any, default_mask: Any = None, importance_scores: Any = None) -> np.ndarray:
        """``t`` with this method's mask applied (NumPy)."""
        values = _numpy(t)
        scores = values if importance_scores is None else _numpy(importance_scores)
        mask = np.ones_like(values) if default_mask is None else _numpy(default_mask)
        return values * self.compute_mask(scores, mask)

    def remove(self, module: Module) -> None:
        """Makes the pruning permanent: ``<name>`` becomes a parameter holding the masked values."""
        name = self._tensor_name
        weight = self.apply_mask(module).numpy()
        module.__dict__.pop(name, None)
        orig = module._parameters.pop(name + "_orig")
        del module._buffers[name + "_mask"]
        orig.copy_(weight)
        module.register_parameter(name, orig)


class PruningContainer(BasePruningMethod):
    """Successive prunings of one tensor; each later method sees only what is still kept."""

    def __init__(self, *methods: BasePruningMethod) -> None:
        self._pruning_methods: Tuple[BasePruningMethod, ...] = ()
        for method in methods:
            self.add_pruning_method(method)

    def add_pruning_method(self, method: BasePruningMethod) -> None:
        if not isinstance(method, BasePruningMethod):
            raise InvalidArgumentError(f"{type(method).__name__} is not a BasePruningMethod subclass")
        if self._tensor_name is None:
            self._tensor_name = method._tensor_name
        elif method._tensor_name != self._tensor_name:
            raise InvalidArgumentError(f"can only add pruning methods acting on the parameter {self._tensor_name!r} "
                                       f"to this PruningContainer, not {method._tensor_name!r}")
        self._pruning_methods += (method,)

    def __len__(self) -> int:
        return len(self._pruning_methods)

    def __iter__(self):
        return iter(self._pruning_methods)

    def __getitem__(self, idx: int) -> BasePruningMethod:
        return self._pruning_methods[idx]

    def compute_mask(self, t: np.ndarray, default_mask: np.ndarray) -> np.ndarray:
        method = self._pruning_methods[-1]
        new_mask = default_mask.astype(np.float32, copy=True)
        if method.PRUNING_TYPE == "unstructured":
            keep = default_mask == 1
            new_mask[keep] = method.compute_mask(t[keep], default_mask[keep])
            return new_mask
        if method.PRUNING_TYPE == "structured":
            dim = _dim(method.dim, t.ndim)  # type: ignore[attr-defined]
            other = tuple(d for d in range(t.ndim) if d != dim)
            channels = np.flatnonzero(default_mask.sum(axis=other) != 0)
            sub = np.take(t, channels, axis=dim), np.take(default_mask, channels, axis=dim)
            index: List[Any] = [slice(None)] * t.ndim
            index[dim] = channels
            new_mask[tuple(index)] = method.compute_mask(*sub)
            return new_mask
        if method.PRUNING_TYPE == "global":
            return method.compute_mask(t, default_mask)
        raise InvalidArgumentError(f"unrecognized PRUNING_TYPE {method.PRUNING_TYPE!r}")


class Identity(BasePruningMethod):
    """Keeps everything (a mask of ones): sets up ``<name>_orig``/``<name>_mask``."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t: np.ndarray, default_mask: np.ndarray) -> np.ndarray:
        return default_mask.astype(np.float32, copy=True)


class RandomUnstructured(BasePruningMethod):
    """Prunes ``amount`` entries chosen uniformly at random (NumPy's global RNG)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount: Amount) -> None:
        _validate_amount(amount)
        self.amount = amount

    def compute_mask(self, t: np.ndarray, default_mask: np.ndarray) -> np.ndarray:
        k = _count_to_prune(self.amount, t.size)
        mask = default_mask.astype(np.float32, copy=True)
        mask.reshape(-1)[np.random.permutation(t.size)[:k]] = 0.0
        return mask


class L1Unstructured(BasePruningMethod):
    """Prunes the ``amount`` entries of smallest absolute value."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount: Amount) -> None:
        _validate_amount(amount)
        self.amount = amount

    def compute_mask(self, t: np.ndarray, default_mask: np.ndarray) -> np.ndarray:
        k = _count_to_prune(self.amount, t.size)
        mask = default_mask.astype(np.float32, copy=True)
        mask.reshape(-1)[_smallest(np.abs(t).reshape(-1), k)] = 0.0
        return mask


def _dim(dim: int, ndim: int) -> int:
    if ndim < 2:
        raise InvalidArgumentError(f"structured pruning needs a tensor of at least 2 dimensions, got {ndim}")
    if not -ndim <= dim < ndim:
        raise IndexOutOfRangeError(f"prune: dim {dim} is out of range for a {ndim}-dimensional tensor")
    return dim % ndim


def _structured_mask(t: np.ndarray, default_mask: np.ndarray, dim: int, prune: np.ndarray) -> np.ndarray:
    """``default_mask`` with the channels ``prune`` along ``dim`` zeroed."""
    mask = default_mask.astype(np.float32, copy=True)
    index: List[Any] = [slice(None)] * t.ndim
    index[dim] = prune
    mask[tuple(index)] = 0.0
    return mask


class LnStructured(BasePruningMethod):
    """Prunes the ``amount`` channels along ``dim`` of smallest L``n`` norm (``n``: a number,
    ``inf``, ``-inf`` or ``"fro"``)."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount: Amount, n: Union[int, float, str], dim: int = -1) -> None:
        _validate_amount(amount)
        if n == "fro":
            n = 2
        if isinstance(n, str) or not isinstance(n, numbers.Real):
            raise InvalidArgumentError(f"ln_structured: n must be a number, inf, -inf or 'fro', got {n!r}")
        self.amount, self.n, self.dim = amount, float(n), int(dim)

    def compute_mask(self, t: np.ndarray, default_mask: np.ndarray) -> np.ndarray:
        dim = _dim(self.dim, t.ndim)
        k = _count_to_prune(self.amount, t.shape[dim])
        if k == 0:
            return default_mask.astype(np.float32, copy=True)
        a = np.moveaxis(np.abs(t.astype(np.float64)), dim, 0).reshape(t.shape[dim], -1)
        if self.n == np.inf:
            norms = a.max(axis=1)
        elif self.n == -np.inf:
            norms = a.min(axis=1)
        elif self.n == 0:
            norms = (a != 0).sum(axis=1).astype(np.float64)
        else:
            norms = (a ** self.n).sum(axis=1) ** (1.0 / self.n)
        return _structured_mask(t, default_mask, dim, _smallest(norms, k))


class RandomStructured(BasePruningMethod):
    """Prunes ``amount`` channels along ``dim`` chosen at random (NumPy's global RNG)."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount: Amount, dim: int = -1) -> None:
        _validate_amount(amount)
        self.amount, self.dim = amount, int(dim)

    def compute_mask(self, t: np.ndarray, default_mask: np.ndarray) -> np.ndarray:
        dim = _dim(self.dim, t.ndim)
        k = _count_to_prune(self.amount, t.shape[dim])
        return _structured_mask(t, default_mask, dim, np.random.permutation(t.shape[dim])[:k])


class CustomFromMask(BasePruningMethod):
    """Applies a given mask (composed with any earlier one)."""

    PRUNING_TYPE = "global"

    def __init__(self, mask: Any) -> None:
        self.mask = _numpy(mask)

    def compute_mask(self, t: np.ndarray, default_mask: np.ndarray) -> np.ndarray:
        if self.mask.shape != default_mask.shape:
            raise InvalidArgumentError(f"custom_from_mask: the mask has shape {self.mask.shape}, the tensor "
                                       f"{default_mask.shape}")
        return (default_mask * self.mask).astype(np.float32)


# ---------------------------------------------------------------------------------------- applying

def _numpy(x: Any) -> np.ndarray:
    return (x.numpy() if isinstance(x, Tensor) else np.asarray(x)).astype(np.float32)


def _hook_for(module: Module, name: str) -> Optional[Tuple[int, BasePruningMethod]]:
    for key, hook in module.__dict__.get("_forward_pre_hooks", {}).items():
        if isinstance(hook, BasePruningMethod) and hook._tensor_name == name:
            return key, hook
    return None


def _apply(module: Module, name: str, method: BasePruningMethod, importance_scores: Any) -> BasePruningMethod:
    if not isinstance(module, Module):
        raise InvalidArgumentError(f"prune: expected a tfm_rs.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise InvalidArgumentError(f"prune: name must be a string, got {name!r}")
    method._tensor_name = name
    found = _hook_for(module, name)
    if found is None:
        param = module._parameters.get(name)
        if param is None:
            raise InvalidArgumentError(f"prune: {type(module).__name__} has no parameter named {name!r} (its "
                                       f"parameters: {[k for k, v in module._parameters.items() if v is not None]})")
        default_mask = np.ones(param.shape, np.float32)
    else:
        key, old = found
        container = old if isinstance(old, PruningContainer) else PruningContainer(old)
        container.add_pruning_method(method)
        method = container
        param = module._parameters[name + "_orig"]
        default_mask = module._buffers[name + "_mask"].numpy().astype(np.float32, copy=True)
    current = param if found is None else found[1].apply_mask(module)
    scores = _numpy(current if importance_scores is None else importance_scores)
    if scores.shape != tuple(param.shape):
        raise InvalidArgumentError(f"prune: importance_scores has shape {scores.shape}, the parameter {name!r} "
                                   f"{tuple(param.shape)}")
    mask = method.compute_mask(scores, default_mask)  # may raise: nothing has changed yet
    if found is None:
        del module._parameters[name]
        module.register_parameter(name + "_orig", param)
        module.register_buffer(name + "_mask", None)
    else:
        del module._forward_pre_hooks[found[0]]
    mask_tensor = Tensor.__new__(Tensor, mask, False)
    mask_tensor._move_(param.device)
    module._buffers[name + "_mask"] = mask_tensor
    method(module, ())
    module.register_forward_pre_hook(method)
    return method


def identity(module: Module, name: str) -> Module:
    """Sets up pruning of ``module.<name>`` with a mask of ones."""
    Identity.apply(module, name)
    return module


def random_unstructured(module: Module, name: str, amount: Amount) -> Module:
    """Prunes ``amount`` (a fraction in [0, 1] or a count) random entries of ``module.<name>``."""
    RandomUnstructured.apply(module, name, amount)
    return module


def l1_unstructured(module: Module, name: str, amount: Amount, importance_scores: Any = None) -> Module:
    """Prunes the ``amount`` (a fraction in [0, 1] or a count) entries of ``module.<name>`` of
    smallest absolute value (of ``importance_scores`` if given)."""
    L1Unstructured.apply(module, name, amount, importance_scores=importance_scores)
    return module


def random_structured(module: Module, name: str, amount: Amount, dim: int) -> Module:
    """Prunes ``amount`` random channels of ``module.<name>`` along ``dim``."""
    RandomStructured.apply(module, name, amount, dim)
    return module


def ln_structured(module: Module, name: str, amount: Amount, n: Union[int, float, str], dim: int,
                  importance_scores: Any = None) -> Module:
    """Prunes the ``amount`` channels of ``module.<name>`` along ``dim`` with the smallest L``n`` norm."""
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module: Module, name: str, mask: Any) -> Module:
    """Prunes ``module.<name>`` where ``mask`` is 0."""
    CustomFromMask.apply(module, name, mask)
    return module


def global_unstructured(parameters: Iterable[Tuple[Module, str]], pruning_method: type,
                        importance_scores: Optional[Dict[Tuple[Module, str], Any]] = None, **kwargs: Any) -> None:
    """Prunes the ``(module, name)`` tensors together: ``pruning_method(**kwargs)`` (an
    unstructured method such as :class:`L1Unstructured`) ranks all their entries as one vector,
    so layers lose different fractions."""
    if isinstance(parameters, (str, bytes)) or not isinstance(parameters, Iterable):
        raise InvalidArgumentError("global_unstructured: parameters must be an iterable of (module, name) pairs")
    parameters = list(parameters)
    scores = importance_scores or {}
    method = pruning_method(**kwargs)
    if method.PRUNING_TYPE != "unstructured":
        raise InvalidArgumentError(f"global_unstructured only supports unstructured methods, got "
                                   f"{pruning_method.__name__} ({method.PRUNING_TYPE})")
    tensors: List[np.ndarray] = []
    masks: List[np.ndarray] = []
    for module, name in parameters:
        current = getattr(module, name, None)
        if not isinstance(current, Tensor):
            raise InvalidArgumentError(f"global_unstructured: {type(module).__name__} has no tensor {name!r}")
        tensors.append(_numpy(scores.get((module, name), current)).reshape(-1))
        mask = module._buffers.get(name + "_mask")
        masks.append(np.ones(current.shape, np.float32).reshape(-1) if mask is None else _numpy(mask).reshape(-1))
    container = PruningContainer(method)
    final = container.compute_mask(np.concatenate(tensors), np.concatenate(masks))
    offset = 0
    for (module, name), t in zip(parameters, tensors):
        shape = getattr(module, name).shape
        custom_from_mask(module, name, final[offset:offset + t.size].reshape(shape))
        offset += t.size


def remove(module: Module, name: str) -> Module:
    """Makes the pruning of ``module.<name>`` permanent: ``<name>_orig`` and ``<name>_mask`` go,
    ``<name>`` is a parameter holding the pruned values."""
    found = _hook_for(module, name)
    if found is None:
        raise InvalidArgumentError(f"Parameter {name!r} of module {type(module).__name__} has to be pruned before "
                                   "pruning can be removed")
    key, method = found
    method.remove(module)
    del module._forward_pre_hooks[key]
    return module


def is_pruned(module: Module) -> bool:
    """Whether ``module`` or any submodule has a pruned tensor."""
    return any(isinstance(hook, BasePruningMethod)
               for m in module.modules() for hook in m.__dict__.get("_forward_pre_hooks", {}).values())

