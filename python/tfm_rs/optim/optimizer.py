"""Optimizers with ``torch.optim``'s names, arguments, update rules and state layout.

The update itself runs in Rust over each parameter's storage, in place; Python only walks the
parameter groups.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Union

import numpy as np

from tfm_rs import _core
from tfm_rs._core import Tensor
from tfm_rs.nn.parameter import zeros_like

ParamsT = Union[Iterable[Tensor], Iterable[Dict[str, Any]]]

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and ``state_dict``."""

    def __init__(self, params: ParamsT, defaults: Dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise _core.InvalidArgumentError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: List[Dict[str, Any]] = []
        self.state: Dict[int, Dict[str, Any]] = {}
        seen: set[int] = set()
        for group in groups:
            group = {**self.defaults, **group, "params": list(group["params"])}
            for p in group["params"]:
                if not isinstance(p, Tensor):
                    raise _core.DTypeError(f"optimizer: parameters must be tfm_rs.Tensor, got {type(p).__name__}")
                if not p.is_leaf:
                    raise _core.InvalidArgumentError("optimizer: can't optimize a non-leaf Tensor")
                if id(p) in seen:
                    raise _core.InvalidArgumentError("optimizer: some parameters appear in more than one group")
                seen.add(id(p))
            self.param_groups.append(group)

    def _params(self):
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield index, group, p
                index += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, _, p in self._params():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = zeros_like(p)

    def state_dict(self) -> Dict[str, Any]:
        """State as in PyTorch: ``state`` keyed by parameter index, ``param_groups`` with indices;
        tensors as NumPy arrays."""
        state = {i: {k: (v.numpy() if isinstance(v, Tensor) else v) for k, v in s.items()}
                 for i, s in self.state.items()}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            options = {k: v for k, v in group.items() if k != "params"}
            groups.append({**options, "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups)
        ):
            raise _core.ShapeError("load_state_dict: the saved parameter groups do not match this optimizer's")
        for g, own in zip(groups, self.param_groups):
            own.update({k: v for k, v in g.items() if k != "params"})
        params = {i: p for i, _, p in self._params()}
        shapes = {i: p.shape for i, p in params.items()}
        self.state = {}
        for key, s in state_dict["state"].items():
            i = int(key)
            if i not in shapes:
                raise _core.ShapeError(f"load_state_dict: state for parameter {i}, which this optimizer does not have")
            restored = {}
            for k, v in s.items():
                if isinstance(v, np.ndarray):
                    if v.shape != shapes[i]:
                        raise _core.ShapeError(f"load_state_dict: state '{k}' of parameter {i} has shape {v.shape}, "
                                               f"expected {shapes[i]}")
                    v = _core.tensor(v).to(params[i].device)
                restored[k] = v
            self.state[i] = restored

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov and weight decay."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise _core.InvalidArgumentError(
                f"SGD: lr, momentum and weight_decay must be ≥ 0 (got {lr}, {momentum}, {weight_decay})")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise _core.InvalidArgumentError("SGD: Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def step(self) -> None:
        for i, g, p in self._params():
            if p.grad is None:
                continue
            state = self.state.setdefault(i, {})
            buf = state.get("momentum_buffer")
            first = buf is None
            if g["momentum"] != 0 and first:
                buf = state["momentum_buffer"] = zeros_like(p)
            _core.sgd_step(p, buf if g["momentum"] != 0 else None, first, g["lr"], g["momentum"], g["dampening"],
                           g["weight_decay"], g["nesterov"], g["maximize"])


class Adam(Optimizer):
    """Adam (Kingma & Ba). The paper's Transformer used ``betas=(0.9, 0.98), eps=1e-9``."""

    _decoupled = False

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise _core.InvalidArgumentError(f"{type(self).__name__}: lr, eps and weight_decay must be ≥ 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise _core.InvalidArgumentError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def step(self) -> None:
        for i, g, p in self._params():
            if p.grad is None:
                continue
            state = self.state.setdefault(i, {})
            if not state:
                state.update(step=0, exp_avg=zeros_like(p), exp_avg_sq=zeros_like(p))
                if g["amsgrad"]:
                    state["max_exp_avg_sq"] = zeros_like(p)
            state["step"] += 1
            beta1, beta2 = g["betas"]
            _core.adam_step(p, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), state["step"],
                            g["lr"], beta1, beta2, g["eps"], g["weight_decay"], self._decoupled, g["amsgrad"],
                            g["maximize"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter); default ``weight_decay=1e-2``."""

    _decoupled = True

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
