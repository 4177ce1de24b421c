"""``Module``, ``ModuleList`` and ``Sequential`` with ``torch.nn``'s registration rules, traversal
order and ``state_dict`` keys.

A module keeps three ordered registries, as PyTorch does: ``_parameters`` (trainable
:class:`Parameter` s), ``_buffers`` (non-trainable :class:`tfm_rs.Tensor` s such as positional
tables) and ``_modules`` (children). Assigning an attribute routes it to the right registry, so
``state_dict()`` keys read exactly like ``torch.nn``'s: a module's own parameters, then its
persistent buffers, then each child's entries under ``"<child>."``.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict, namedtuple
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple, Union

import numpy as np

from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.nn.parameter import Parameter, copy_tensor, zeros_like

__all__ = ["Module", "ModuleList", "Sequential"]


class _IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What ``load_state_dict(strict=False)`` returns, as in PyTorch."""

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


class RemovableHandle:
    """What ``register_forward_pre_hook`` returns: ``remove()`` takes the hook out again."""

    _next_id = itertools.count()

    def __init__(self, hooks: "OrderedDict[int, Any]") -> None:
        self.hooks = hooks
        self.id = next(RemovableHandle._next_id)

    def remove(self) -> None:
        self.hooks.pop(self.id, None)


class Module:
    """Base class for all layers, as ``torch.nn.Module``.

    Subclasses call ``super().__init__()`` first, assign :class:`Parameter` s and sub-modules as
    attributes, and implement ``forward``; calling the module runs ``forward``.
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers_set", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # .get: modules unpickled from before hooks existed have no registry.
        with_kwargs = self.__dict__.get("_forward_pre_hooks_with_kwargs", set())
        for key, hook in list(self.__dict__.get("_forward_pre_hooks", {}).items()):
            if key in with_kwargs:
                result = hook(self, args, kwargs)
                if result is not None:
                    args, kwargs = result
            else:
                result = hook(self, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        return self.forward(*args, **kwargs)

    def register_forward_pre_hook(self, hook: Callable[..., Any], *, prepend: bool = False,
                                  with_kwargs: bool = False) -> "RemovableHandle":
        """Runs ``hook(module, args)`` before every ``forward``, as in PyTorch: a non-``None``
        result replaces the positional arguments. With ``with_kwargs=True`` the hook is
        ``hook(module, args, kwargs)`` and a non-``None`` result is the pair ``(args, kwargs)``;
        ``prepend=True`` runs it before the hooks already registered. Returns a handle whose
        ``remove()`` unregisters it (pruning uses this to recompute ``weight = weight_orig *
        weight_mask``)."""
        hooks = self.__dict__.get("_forward_pre_hooks")
        if hooks is None:
            hooks = OrderedDict()
            object.__setattr__(self, "_forward_pre_hooks", hooks)
        handle = RemovableHandle(hooks)
        hooks[handle.id] = hook
        if with_kwargs:
            # As PyTorch: the hooks stay in one ordered registry; this set says which take kwargs.
            self.__dict__.setdefault("_forward_pre_hooks_with_kwargs", set()).add(handle.id)
        if prepend:
            hooks.move_to_end(handle.id, last=False)
        return handle

    # ----------------------------------------------------------------- registration

    def _check_ready(self, name: str) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() call")

    def register_parameter(self, name: str, param: Optional[Parameter]) -> None:
        """Adds ``param`` (or ``None``: declared but absent) under ``name``."""
        self._check_ready(name)
        if not isinstance(name, str) or not name or "." in name:
            raise InvalidArgumentError(f"parameter name must be a non-empty string without '.', got {name!r}")
        if param is not None and not isinstance(param, Parameter):
            raise InvalidArgumentError(
                f"cannot assign {type(param).__name__} as parameter {name!r} (tfm_rs.nn.Parameter or None required)")
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"attribute {name!r} already exists")
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Optional[Tensor], persistent: bool = True) -> None:
        """Adds non-trainable state (a Tensor, a NumPy array — converted — or ``None``).
        Persistent buffers are part of ``state_dict()``; non-persistent ones are not."""
        self._check_ready(name)
        if not isinstance(name, str) or not name or "." in name:
            raise InvalidArgumentError(f"buffer name must be a non-empty string without '.', got {name!r}")
        if hasattr(self, name) and name not in self._buffers:
            raise KeyError(f"attribute {name!r} already exists")
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor.__new__(Tensor, np.asarray(tensor, dtype=np.float32), False)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name: str, module: Optional["Module"]) -> None:
        """Adds a child module (or ``None``) under ``name``."""
        self._check_ready(name)
        if module is not None and not isinstance(module, Module):
            raise InvalidArgumentError(f"{type(module).__name__} is not a Module subclass")
        if not isinstance(name, str) or "." in name or name == "":
            raise InvalidArgumentError(f"module name must be a non-empty string without '.', got {name!r}")
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute {name!r} already exists")
        self._modules[name] = module

    register_module = add_module

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if isinstance(value, Parameter):
            self._check_ready(name)
            self._remove_from(name, self.__dict__, self._buffers, self._modules)
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise InvalidArgumentError(
                    f"cannot assign {type(value).__name__} as parameter {name!r} "
                    "(tfm_rs.nn.Parameter or None required)")
            params[name] = None
        elif isinstance(value, Module):
            self._check_ready(name)
            self._remove_from(name, self.__dict__, self._parameters, self._buffers)
            self._modules[name] = value
        elif self.__dict__.get("_modules") is not None and name in self._modules:
            if value is not None:
                raise InvalidArgumentError(f"cannot assign {type(value).__name__} as child module {name!r}")
            self._modules[name] = None
        elif self.__dict__.get("_buffers") is not None and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise InvalidArgumentError(
                    f"cannot assign {type(value).__name__} as buffer {name!r} (Tensor or None required)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    @staticmethod
    def _remove_from(name: str, *registries: Dict[str, Any]) -> None:
        for registry in registries:
            registry.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: look in the registries.
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                self._non_persistent_buffers_set.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self) -> List[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Module":
        if id(self) in memo:
            return memo[id(self)]
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        tensors = list(self._buffers.values()) + list(self.__dict__.values())
        for t in tensors:  # plain Tensors don't deep-copy themselves
            if isinstance(t, Tensor) and not isinstance(t, Parameter) and id(t) not in memo:
                memo[id(t)] = copy_tensor(t)
        for key, value in self.__dict__.items():
            object.__setattr__(new, key, copy.deepcopy(value, memo))
        return new

    # ----------------------------------------------------------------- traversal

    def named_modules(self, memo: Optional[Set["Module"]] = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[Tuple[str, "Module"]]:
        """``(name, module)`` for this module and every descendant, depth first, pre-order."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            sub = prefix + ("." if prefix else "") + name
            yield from module.named_modules(memo, sub, remove_duplicate)

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        seen: Set[int] = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator["Module"]:
        for _, module in self.named_children():
            yield module

    def _named_members(self, get_members: Callable[["Module"], Iterable[Tuple[str, Any]]], prefix: str = "",
                       recurse: bool = True, remove_duplicate: bool = True) -> Iterator[Tuple[str, Any]]:
        seen: Set[int] = set()
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, value in get_members(module):
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                if remove_duplicate:
                    seen.add(id(value))
                yield module_prefix + ("." if module_prefix else "") + name, value

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[Tuple[str, Parameter]]:
        """``(dotted name, Parameter)`` pairs; a shared parameter is listed once."""
        return self._named_members(lambda m: m._parameters.items(), prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[Tuple[str, Tensor]]:
        return self._named_members(lambda m: m._buffers.items(), prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target: str) -> "Module":
        module = self
        for item in target.split(".") if target else []:
            if item not in module._modules:
                raise AttributeError(f"{type(module).__name__} has no submodule {item!r} (looking up {target!r})")
            module = module._modules[item]
        return module

    def apply(self, fn: Callable[["Module"], None]) -> "Module":
        """Calls ``fn`` on every child (recursively), then on this module; returns ``self``."""
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # ----------------------------------------------------------------- modes and gradients

    def train(self, mode: bool = True) -> "Module":
        """Sets training mode (dropout active) on this module and all descendants."""
        if not isinstance(mode, bool):
            raise InvalidArgumentError("training mode is expected to be boolean")
        self.training = mode
        for module in self.children():
            module.train(mode)
        return self

    def eval(self) -> "Module":
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears the gradients of every parameter (``None``, or zeros if ``set_to_none=False``)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = zeros_like(p)

    def to(self, device: str) -> "Module":
        """Moves every parameter and buffer (and any gradient) to ``device`` ("cpu", or "gpu" /
        "wgpu") in place, keeping their identity, as ``torch.nn.Module.to``; returns ``self``.
        Inputs then have to be on that device too (token ids and masks are NumPy arrays, read
        on the host either way)."""
        for t in itertools.chain(self.parameters(), self.buffers()):
            t._move_(device)
        return self

    def cpu(self) -> "Module":
        """``to("cpu")``."""
        return self.to("cpu")

    # ----------------------------------------------------------------- state

    def _state_entries(self) -> Iterator[Tuple[str, Tensor]]:
        """Every entry of ``state_dict``: per module, its parameters, then its persistent buffers."""
        for prefix, module in self.named_modules(remove_duplicate=False):
            dot = prefix + ("." if prefix else "")
            for name, p in module._parameters.items():
                if p is not None:
                    yield dot + name, p
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers_set:
                    yield dot + name, b

    def state_dict(self, *, prefix: str = "", keep_vars: bool = False) -> "OrderedDict[str, Any]":
        """Ordered ``name → float32 NumPy array`` (a copy) of every parameter and persistent
        buffer, with ``torch.nn``'s keys and order. ``keep_vars=True`` gives the Tensors
        themselves."""
        out: "OrderedDict[str, Any]" = OrderedDict()
        for name, t in self._state_entries():
            out[prefix + name] = t if keep_vars else t.numpy().astype(np.float32, copy=True)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> _IncompatibleKeys:
        """Copies ``state_dict``'s values (NumPy arrays, Tensors, CPU torch tensors, lists) into
        the parameters and persistent buffers, in place.

        Every problem is checked before anything is copied and reported together, by name:
        wrong shapes raise :class:`tfm_rs.ShapeError` (also with ``strict=False``); with
        ``strict=True`` missing or unexpected keys raise :class:`tfm_rs.InvalidArgumentError`.
        Returns ``(missing_keys, unexpected_keys)``.
        """
        int8 = [k for k, v in state_dict.items() if getattr(v, "dtype", None) == np.int8]
        if int8:
            raise InvalidArgumentError(f"load_state_dict: {int8[:3]} hold int8 (quantized) weights, which a float "
                                       "model cannot take; use tfm_rs.quantization.load_quantized")
        own = OrderedDict(self._state_entries())
        arrays: Dict[str, np.ndarray] = {}
        mismatched: List[str] = []
        for name, target in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            array = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
            if tuple(array.shape) != tuple(target.shape):
                mismatched.append(f"{name}: copying a param with shape {tuple(array.shape)}, "
                                  f"the shape in the current model is {tuple(target.shape)}")
            else:
                arrays[name] = array.astype(np.float32, copy=False)
        missing = [name for name in own if name not in state_dict]
        unexpected = [name for name in state_dict if name not in own]
        problems = bool(mismatched) or (strict and (missing or unexpected))
        if problems:
            lines = [f"Error(s) in loading state_dict for {type(self).__name__}:"]
            if strict and missing:
                lines.append("  Missing key(s): " + ", ".join(f'"{k}"' for k in missing) + ".")
            if strict and unexpected:
                lines.append("  Unexpected key(s): " + ", ".join(f'"{k}"' for k in unexpected) + ".")
            if mismatched:
                lines.append("  Size mismatch: " + "; ".join(mismatched) + ".")
            raise (ShapeError if mismatched else InvalidArgumentError)("\n".join(lines))
        for name, array in arrays.items():
            own[name].copy_(array)
        return _IncompatibleKeys(missing, unexpected)

    # ----------------------------------------------------------------- printing

    def extra_repr(self) -> str:
        """Extra information in ``repr`` (override in subclasses)."""
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({key}): " + _addindent(repr(module), 2) for key, module in self._modules.items()]
        lines = extra_lines + child_lines
        main = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                main += extra_lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"


class ModuleList(Module):
    """A list of modules registered under ``"0"``, ``"1"``, … (as ``torch.nn.ModuleList``)."""

    def __init__(self, modules: Optional[Iterable[Module]] = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, idx: int) -> str:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for ModuleList of length {n}")
        return str(idx % n)

    def __getitem__(self, idx: Union[int, slice]) -> Union[Module, "ModuleList"]:
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return self._modules[self._index(idx)]

    def __setitem__(self, idx: int, module: Module) -> None:
        self.add_module(self._index(idx), module)

    def __delitem__(self, idx: Union[int, slice]) -> None:
        keep = list(self._modules.values())
        del keep[idx]
        self._modules.clear()
        for i, module in enumerate(keep):
            self._modules[str(i)] = module

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> "ModuleList":
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        items = list(self._modules.values())
        items.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(items):
            self.add_module(str(i), m)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ModuleList has no forward; iterate over it")

    def __repr__(self) -> str:
        # Runs of identical reprs are folded, as torch does: "(0-5): 6 x Layer(...)".
        if not self._modules:
            return self._get_name() + "()"
        lines = []
        items = [(key, repr(module)) for key, module in self._modules.items()]
        for text, group in itertools.groupby(items, key=lambda kv: kv[1]):
            keys = [k for k, _ in group]
            label = keys[0] if len(keys) == 1 else f"{keys[0]}-{keys[-1]}"
            count = "" if len(keys) == 1 else f"{len(keys)} x "
            lines.append(f"({label}): {count}" + _addindent(text, 2))
        return self._get_name() + "(\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order: ``Sequential(a, b, c)(x) == c(b(a(x)))``. Also accepts an
    ``OrderedDict`` of named modules, as ``torch.nn.Sequential``."""

    def __init__(self, *args: Any) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for key, module in args[0].items():
                self.add_module(key, module)
        else:
            for i, module in enumerate(args):
                self.add_module(str(i), module)

    def __getitem__(self, idx: Union[int, slice]) -> Union[Module, "Sequential"]:
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        if not -len(items) <= idx < len(items):
            raise IndexError(f"index {idx} is out of range for Sequential of length {len(items)}")
        return items[idx][1]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> "Sequential":
        self.add_module(str(len(self)), module)
        return self

    def forward(self, input: Any) -> Any:
        for module in self:
            input = module(input)
        return input
