"""``LSTM`` and ``GRU``, as ``torch.nn``: the same constructor arguments, equations, gate order
(LSTM i, f, g, o; GRU r, z, n), ``state_dict`` keys and initialization.

Each layer and direction is one Rust op (:func:`tfm_rs._core.rnn_layer`): the input projections
of all steps as one GEMM, one recurrent GEMM per step, fused gate arithmetic and the backward
through time, without the GIL. ``forward`` also takes ``lengths`` (a tfm_rs extension standing in
for PyTorch's packed sequences): a sample's steps past its length do not update its state and
output zeros, and ``h_n`` (``c_n``) is its state after its last valid step.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

import tfm_rs.functional as F
from tfm_rs import _core
from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter

__all__ = ["GRU", "LSTM", "RNNBase"]

_GATES = {"LSTM": 4, "GRU": 3}


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else _core.tensor(np.asarray(x, dtype=np.float32))


class RNNBase(Module):
    """A stack of ``num_layers`` recurrent layers (``mode`` "LSTM" or "GRU"), each of one or two
    directions; layer k > 0 reads the concatenated directions of layer k − 1, through dropout
    ``dropout`` in training (not after the last layer)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{mode}: {name} must be a positive integer, got {value!r}")
        if not 0.0 <= float(dropout) <= 1.0:
            raise InvalidArgumentError(f"{mode}: dropout must be in [0, 1], got {dropout}")
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = float(dropout)
        gates = _GATES[mode] * self.hidden_size
        directions = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else self.hidden_size * directions
            for suffix in self._suffixes():
                self.register_parameter(f"weight_ih_l{layer}{suffix}", Parameter(np.zeros((gates, width), np.float32)))
                self.register_parameter(f"weight_hh_l{layer}{suffix}",
                                        Parameter(np.zeros((gates, self.hidden_size), np.float32)))
                if self.bias:
                    self.register_parameter(f"bias_ih_l{layer}{suffix}", Parameter(np.zeros((gates,), np.float32)))
                    self.register_parameter(f"bias_hh_l{layer}{suffix}", Parameter(np.zeros((gates,), np.float32)))
        self.reset_parameters()

    def _suffixes(self) -> Tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """Every weight and bias from U(−1/√hidden_size, 1/√hidden_size), as PyTorch."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def _layer_params(self, layer: int, suffix: str) -> List[Optional[Parameter]]:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return [getattr(self, f"{n}_l{layer}{suffix}") if self.bias or n.startswith("w") else None for n in names]

    def _initial(self, hx: Any, batch: int, unbatched: bool) -> List[Any]:
        """The initial state tensors, each ``(num_layers·directions, B, H)`` (zeros if ``hx`` is None)."""
        count = 2 if self.mode == "LSTM" else 1
        rows = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            return [np.zeros((rows, batch, self.hidden_size), np.float32)] * count
        states = list(hx) if self.mode == "LSTM" else [hx]
        if len(states) != count:
            raise InvalidArgumentError(f"{self.mode}: hx must be {'(h_0, c_0)' if count == 2 else 'h_0'}")
        out = []
        for s in states:
            s = _as_tensor(s)
            if unbatched:
                s = s.unsqueeze(1)
            if tuple(s.shape) != (rows, batch, self.hidden_size):
                raise _core.ShapeError(f"{self.mode}: expected hidden state of shape "
                                       f"{(rows, batch, self.hidden_size)}, got {tuple(s.shape)}")
            out.append(s)
        return out

    def forward(self, input: Any, hx: Any = None, *,
                lengths: Optional[Union[np.ndarray, Sequence[int]]] = None) -> Tuple[Tensor, Any]:
        """``input`` ``(T, B, input_size)`` (``(B, T, …)`` if ``batch_first``; ``(T, input_size)``
        unbatched) → ``(output, h_n)`` (GRU) or ``(output, (h_n, c_n))`` (LSTM): ``output``
        ``(T, B, directions·H)``, states ``(num_layers·directions, B, H)``."""
        x = _as_tensor(input)
        if x.ndim not in (2, 3):
            raise _core.ShapeError(f"{self.mode}: input must be 2-D (unbatched) or 3-D, got shape {tuple(x.shape)}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[2] != self.input_size:
            raise _core.ShapeError(f"{self.mode}: input.size(-1) must be equal to input_size. "
                                   f"Expected {self.input_size}, got {x.shape[2]}")
        steps, batch = x.shape[0], x.shape[1]
        initial = self._initial(hx, batch, unbatched)
        if lengths is not None:
            lengths = np.asarray(lengths)
        finals: List[List[Tensor]] = [[] for _ in initial]
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(self._suffixes()):
                row = layer * len(self._suffixes()) + d
                w_ih, w_hh, b_ih, b_hh = self._layer_params(layer, suffix)
                cx = initial[1][row] if self.mode == "LSTM" else None
                stacked = _core.rnn_layer(self.mode, x, initial[0][row], w_ih, w_hh, b_ih, b_hh, cx, lengths,
                                          d == 1)
                outputs.append(stacked[:steps])
                for k, final in enumerate(finals):
                    final.append(stacked[steps + k:steps + k + 1])
            x = outputs[0] if len(outputs) == 1 else _core.cat(outputs, 2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        states = [f[0] if len(f) == 1 else _core.cat(f, 0) for f in finals]
        if unbatched:
            x, states = x.squeeze(1), [s.squeeze(1) for s in states]
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, (states[0], states[1]) if self.mode == "LSTM" else states[0]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s


class LSTM(RNNBase):
    """Long short-term memory, as ``torch.nn.LSTM``: ``c' = f∘c + i∘g``, ``h' = o∘tanh(c')``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional)


class GRU(RNNBase):
    """Gated recurrent unit, as ``torch.nn.GRU``: ``n = tanh(W_in x + b_in + r∘(W_hn h + b_hn))``,
    ``h' = (1 − z)∘n + z∘h``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional)
