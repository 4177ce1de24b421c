"""nn.LSTM / nn.GRU against torch.nn.LSTM / GRU in float64 loaded from the same state_dict:
outputs, final states and gradients of the input and every parameter; several layers, both
directions, batch_first, initial states, and ``lengths`` against packed sequences."""

from __future__ import annotations

import numpy as np
import pytest

from torch_ref import require_torch

torch = require_torch()

import tfm_rs  # noqa: E402
from tfm_rs import nn  # noqa: E402
from helpers import assert_close, leaf, randn  # noqa: E402

# Observed: outputs 1.5e-7, gradients 1.6e-6 absolute (widths ≤ 17, two layers).
OUT_TOL, GRAD_TOL = 2e-6, 2e-5


def _torch_model(m):
    cls = getattr(torch.nn, m.mode)
    t = cls(m.input_size, m.hidden_size, num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first,
            bidirectional=m.bidirectional).double()
    t.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in m.state_dict().items()}, strict=True)
    return t


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("layers,bidirectional,batch_first,bias", [
    (1, False, False, True), (2, True, True, True), (2, False, True, False), (1, True, False, True)])
@pytest.mark.parametrize("packed", [False, True])
def test_matches_torch(mode, layers, bidirectional, batch_first, bias, packed):
    steps, batch, inp, hidden = 7, 3, 5, 17
    m = getattr(nn, mode)(inp, hidden, num_layers=layers, bias=bias, batch_first=batch_first,
                          bidirectional=bidirectional)
    t = _torch_model(m)
    shape = (batch, steps, inp) if batch_first else (steps, batch, inp)
    x = randn(shape, seed=layers)
    rows = layers * (2 if bidirectional else 1)
    h0 = [randn((rows, batch, hidden), seed=10 + k) for k in range(2 if mode == "LSTM" else 1)]
    lengths = np.array([7, 2, 5]) if packed else None

    xt, h0t = leaf(x), [leaf(h) for h in h0]
    out, state = m(xt, tuple(h0t) if mode == "LSTM" else h0t[0], lengths=lengths)
    states = list(state) if mode == "LSTM" else [state]

    xr = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    h0r = [torch.tensor(h, dtype=torch.float64, requires_grad=True) for h in h0]
    inp_r = xr
    if packed:
        inp_r = torch.nn.utils.rnn.pack_padded_sequence(xr, torch.tensor(lengths), batch_first=batch_first,
                                                        enforce_sorted=False)
    out_r, state_r = t(inp_r, tuple(h0r) if mode == "LSTM" else h0r[0])
    if packed:
        out_r, _ = torch.nn.utils.rnn.pad_packed_sequence(out_r, batch_first=batch_first, total_length=steps)
    states_r = list(state_r) if mode == "LSTM" else [state_r]

    assert_close(out, out_r.detach().numpy(), 0, OUT_TOL, "output")
    for s, r in zip(states, states_r):
        assert_close(s, r.detach().numpy(), 0, OUT_TOL, "state")

    ups = [randn(out.shape, seed=20)] + [randn(s.shape, seed=21 + k) for k, s in enumerate(states)]
    sum(((a * tfm_rs.tensor(u)).sum() for a, u in zip([out] + states, ups)), tfm_rs.tensor(0.0)).backward()
    sum((a * torch.tensor(u, dtype=torch.float64)).sum() for a, u in zip([out_r] + states_r, ups)).backward()
    assert_close(xt.grad, xr.grad.numpy(), 0, GRAD_TOL, "dx")
    for a, b in zip(h0t, h0r):
        assert_close(a.grad, b.grad.numpy(), 0, GRAD_TOL, "dh0")
    for (name, p), (_, q) in zip(m.named_parameters(), t.named_parameters()):
        assert_close(p.grad, q.grad.numpy(), 0, GRAD_TOL, f"d{name}")
