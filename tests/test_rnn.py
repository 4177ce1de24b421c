"""nn.LSTM / nn.GRU against a float64 step-by-step NumPy loop of PyTorch's equations (forward,
lengths, both directions, several layers), finite differences of that loop (backward, on shapes
with 1, 3 and 17), padded steps, and bad input. PyTorch parity is in test_rnn_torch.py."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
from tfm_rs import nn
from helpers import FWD_ATOL, FWD_RTOL, GRAD_ATOL, GRAD_RTOL, assert_close, leaf, numeric_grad, randn


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def reference_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None, reverse=False):
    """One layer and direction in float64: x (T, B, I) → outputs (T, B, H), h_n, c_n."""
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    out = np.zeros((steps, batch, hidden))
    h, c = np.array(h0, np.float64), np.array(c0, np.float64) if c0 is not None else None
    for b in range(batch):
        n = steps if lengths is None else int(lengths[b])
        order = range(n - 1, -1, -1) if reverse else range(n)
        for t in order:
            ax, ah = w_ih @ x[t, b] + b_ih, w_hh @ h[b] + b_hh
            a = ax + ah
            if mode == "LSTM":
                i, f, g, o = np.split(a, 4)
                c[b] = _sig(f) * c[b] + _sig(i) * np.tanh(g)
                h[b] = _sig(o) * np.tanh(c[b])
            else:
                r, z = _sig(a[:hidden]), _sig(a[hidden:2 * hidden])
                cand = np.tanh(ax[2 * hidden:] + r * ah[2 * hidden:])
                h[b] = (1 - z) * cand + z * h[b]
            out[t, b] = h[b]
    return out, h, c


def reference(m, x, lengths=None, h0=None, c0=None):
    """The whole module in float64 (time-major x, no dropout); initial states (layers ×
    directions, B, H), zero when not given."""
    sd = {k: np.asarray(v, np.float64) for k, v in m.state_dict().items()}
    dirs = ("", "_reverse") if m.bidirectional else ("",)
    batch = x.shape[1]
    z = np.zeros((m.num_layers * len(dirs), batch, m.hidden_size))
    h0 = z if h0 is None else h0
    c0 = z if c0 is None else c0
    hs, cs = [], []
    for layer in range(m.num_layers):
        outs = []
        for d, sfx in enumerate(dirs):
            k = layer * len(dirs) + d
            out, h, c = reference_layer(m.mode, x, h0[k], c0[k] if m.mode == "LSTM" else None,
                                        sd[f"weight_ih_l{layer}{sfx}"], sd[f"weight_hh_l{layer}{sfx}"],
                                        sd[f"bias_ih_l{layer}{sfx}"], sd[f"bias_hh_l{layer}{sfx}"], lengths, d == 1)
            outs.append(out)
            hs.append(h)
            cs.append(c)
        x = np.concatenate(outs, axis=2)
    return x, np.stack(hs), (np.stack(cs) if m.mode == "LSTM" else None)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("steps,batch,inp,hidden", [(1, 1, 1, 1), (3, 3, 17, 3), (17, 2, 3, 17), (5, 127, 4, 3)])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_forward_matches_a_float64_loop(mode, steps, batch, inp, hidden, layers, bidirectional):
    m = getattr(nn, mode)(inp, hidden, num_layers=layers, bidirectional=bidirectional)
    x = randn((steps, batch, inp), seed=steps + batch)
    lengths = np.arange(batch) % (steps + 1)
    for lens in (None, lengths):
        out, state = m(x, lengths=lens)
        want, h_n, c_n = reference(m, x.astype(np.float64), lens)
        assert_close(out, want, FWD_RTOL, FWD_ATOL, f"{mode} output")
        h = state[0] if mode == "LSTM" else state
        assert_close(h, h_n, FWD_RTOL, FWD_ATOL, f"{mode} h_n")
        if mode == "LSTM":
            assert_close(state[1], c_n, FWD_RTOL, FWD_ATOL, f"{mode} c_n")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("steps,batch,hidden", [(1, 1, 1), (3, 3, 3), (3, 1, 17)])
def test_backward_matches_finite_differences(mode, steps, batch, hidden):
    inp = 2
    m = getattr(nn, mode)(inp, hidden, bidirectional=True)
    names = list(m.state_dict())
    lengths = np.maximum(np.arange(batch) % (steps + 1), 1)
    x = randn((steps, batch, inp), seed=3)
    up_out = randn((steps, batch, 2 * hidden), seed=4)
    up_h = randn((2, batch, hidden), seed=5)

    xt = leaf(x)
    out, state = m(xt, lengths=lengths)
    h = state[0] if mode == "LSTM" else state
    ((out * tfm_rs.tensor(up_out)).sum() + (h * tfm_rs.tensor(up_h)).sum()).backward()
    got = [xt.grad.numpy()] + [p.grad.numpy() for p in m.parameters()]

    def f(x64, *params):
        probe = getattr(nn, mode)(inp, hidden, bidirectional=True)
        ref = dict(zip(names, params))
        probe.state_dict = lambda: ref  # the float64 values, not a float32 copy
        o, hn, _ = reference(probe, x64, lengths)
        return np.concatenate([o.ravel() * up_out.ravel(), hn.ravel() * up_h.ravel()])

    params = [np.asarray(v, np.float64) for v in m.state_dict().values()]
    want = numeric_grad(f, [x] + params, np.ones(1))
    for name, g, w in zip(["x"] + names, got, want):
        assert_close(g, w, GRAD_RTOL, GRAD_ATOL, f"{mode} d{name}")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("start", ["zero", "random"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_initial_state_gradients_match_finite_differences(mode, start, bidirectional):
    # A zero initial state skips the first step's recurrent product forward, and its rows in
    # dW_hh; its own gradient still needs that product backward.
    steps, batch, inp, hidden = 3, 3, 2, 3
    m = getattr(nn, mode)(inp, hidden, bidirectional=bidirectional)
    names = list(m.state_dict())
    dirs = 2 if bidirectional else 1
    n_states = 2 if mode == "LSTM" else 1
    x = randn((steps, batch, inp), seed=6)
    states = [randn((dirs, batch, hidden), seed=7 + k) * (start == "random") for k in range(n_states)]
    up_out = randn((steps, batch, dirs * hidden), seed=9)
    up_h = randn((dirs, batch, hidden), seed=10)

    xt, st = leaf(x), [leaf(s) for s in states]
    out, state = m(xt, tuple(st) if mode == "LSTM" else st[0])
    h = state[0] if mode == "LSTM" else state
    ((out * tfm_rs.tensor(up_out)).sum() + (h * tfm_rs.tensor(up_h)).sum()).backward()
    got = [xt.grad.numpy()] + [s.grad.numpy() for s in st] + [p.grad.numpy() for p in m.parameters()]

    def f(x64, *rest):
        s64, params = rest[:n_states], rest[n_states:]
        probe = getattr(nn, mode)(inp, hidden, bidirectional=bidirectional)
        ref = dict(zip(names, params))
        probe.state_dict = lambda: ref  # the float64 values, not a float32 copy
        o, hn, _ = reference(probe, x64, None, *s64)
        return np.concatenate([o.ravel() * up_out.ravel(), hn.ravel() * up_h.ravel()])

    params = [np.asarray(v, np.float64) for v in m.state_dict().values()]
    want = numeric_grad(f, [x] + states + params, np.ones(1))
    for name, g, w in zip(["x", "h0", "c0"][:1 + n_states] + names, got, want):
        assert_close(g, w, GRAD_RTOL, GRAD_ATOL, f"{mode} {start} start: d{name}")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_padded_steps_leave_the_state_unchanged(mode):
    m = getattr(nn, mode)(3, 5, bidirectional=True, batch_first=True)
    x = randn((2, 6, 3), seed=1)
    lengths = [6, 2]
    out, state = m(x, lengths=lengths)
    alone, alone_state = m(x[1:, :2], lengths=None)
    np.testing.assert_array_equal(out.numpy()[1, :2], alone.numpy()[0])
    assert not out.numpy()[1, 2:].any(), "padded steps output zeros"
    for s, a in zip(state if mode == "LSTM" else [state], alone_state if mode == "LSTM" else [alone_state]):
        np.testing.assert_array_equal(s.numpy()[:, 1], a.numpy()[:, 0])
    # Garbage in the padding changes nothing.
    x2 = x.copy()
    x2[1, 2:] = 1e3
    out2, _ = m(x2, lengths=lengths)
    np.testing.assert_array_equal(out.numpy(), out2.numpy())


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_an_empty_batch_has_empty_outputs_and_zero_weight_gradients(mode):
    m = getattr(nn, mode)(4, 3, num_layers=2, bidirectional=True)
    x = tfm_rs.tensor(np.zeros((5, 0, 4), np.float32), requires_grad=True)
    out, state = m(x)
    h = state[0] if mode == "LSTM" else state
    assert tuple(out.shape) == (5, 0, 6) and tuple(h.shape) == (4, 0, 3)
    (out.sum() + h.sum()).backward()
    assert tuple(x.grad.shape) == (5, 0, 4)
    for name, p in m.named_parameters():
        assert p.grad is not None and not p.grad.numpy().any(), name


def test_initial_state_batch_first_and_unbatched():
    m = nn.LSTM(4, 3, num_layers=2, batch_first=True)
    x = randn((2, 5, 4), seed=2)
    h0, c0 = randn((2, 2, 3), seed=3), randn((2, 2, 3), seed=4)
    out, (h, c) = m(x, (h0, c0))
    assert out.shape == (2, 5, 3) and h.shape == (2, 2, 3) and c.shape == (2, 2, 3)
    one, (h1, c1) = m(x[0], (h0[:, 0], c0[:, 0]))
    assert one.shape == (5, 3) and h1.shape == (2, 3)
    assert_close(one, out.numpy()[0], 1e-6, 1e-6)
    assert_close(h1, h.numpy()[:, 0], 1e-6, 1e-6)
    # The initial state gets gradients.
    h0t = leaf(h0)
    out, _ = m(x, (h0t, c0))
    out.sum().backward()
    assert np.abs(h0t.grad.numpy()).sum() > 0


def test_state_dict_keys_and_init():
    m = nn.GRU(3, 4, num_layers=2, bidirectional=True, bias=False)
    assert list(m.state_dict()) == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse", "weight_hh_l0_reverse",
                                    "weight_ih_l1", "weight_hh_l1", "weight_ih_l1_reverse", "weight_hh_l1_reverse"]
    assert m.state_dict()["weight_ih_l1"].shape == (12, 8)
    big = nn.LSTM(8, 400)
    w = big.state_dict()["weight_hh_l0"]
    assert np.abs(w).max() <= 1 / 20 and np.abs(w).max() > 0.049, "U(−1/√H, 1/√H)"
    out, _ = m(randn((2, 1, 3)))
    assert out.shape == (2, 1, 8)


def test_dropout_between_layers_only_in_training():
    m = nn.GRU(3, 4, num_layers=2, dropout=0.5)
    x = randn((4, 2, 3))
    m.eval()
    a, _ = m(x)
    b, _ = m(x)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    m.train()
    tfm_rs.manual_seed(1)
    c, _ = m(x)
    assert not np.array_equal(a.numpy(), c.numpy())


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=3, hidden_size=0), "hidden_size"),
    (dict(input_size=3, hidden_size=4, num_layers=0), "num_layers"),
    (dict(input_size=0, hidden_size=4), "input_size"),
    (dict(input_size=3, hidden_size=4, dropout=1.5), "dropout"),
])
def test_bad_construction(kwargs, match):
    for cls in (nn.LSTM, nn.GRU):
        with pytest.raises(tfm_rs.InvalidArgumentError, match=match):
            cls(**kwargs)


def test_bad_input():
    m = nn.LSTM(3, 4)
    with pytest.raises(tfm_rs.ShapeError, match="input_size"):
        m(randn((2, 1, 5)))
    with pytest.raises(tfm_rs.ShapeError, match="hidden state"):
        m(randn((2, 1, 3)), (randn((1, 2, 4)), randn((1, 2, 4))))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="lengths"):
        m(randn((2, 1, 3)), lengths=[3])
    with pytest.raises(tfm_rs.InvalidArgumentError, match="lengths"):
        m(randn((2, 1, 3)), lengths=[-1])
    with pytest.raises(tfm_rs.ShapeError, match="lengths"):
        m(randn((2, 2, 3)), lengths=[1])
    with pytest.raises(tfm_rs.ShapeError):
        m(randn((3,)))
