"""tfm_rs.optim (SGD, Adam, AdamW) against a float64 NumPy re-implementation of the update rules
of ``torch.optim`` (the pseudo-code in PyTorch's documentation), step by step."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
from helpers import leaf, randn
from tfm_rs.optim import SGD, Adam, AdamW

SHAPES = [(3, 17), (127,), (1,), (2, 3, 4)]
# Gradient scales that vary from step to step, so that amsgrad's running maximum matters.
GRAD_SCALES = [1.0, 3.0, 0.2, 0.05, 2.0, 0.1]
RTOL, ATOL = 1e-5, 1e-6


# ----------------------------------------------------------------------------------------------
# float64 references
# ----------------------------------------------------------------------------------------------

class SGDRef:
    """torch.optim.SGD. ``maximize`` negates the gradient before weight decay, as torch's
    implementation does (so weight decay still pulls towards 0 when maximizing)."""

    def __init__(self, theta, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
        self.theta = np.asarray(theta, np.float64).copy()
        self.lr, self.mu, self.tau, self.wd = lr, momentum, dampening, weight_decay
        self.nesterov, self.maximize = nesterov, maximize
        self.buf = None

    def step(self, grad):
        g = np.asarray(grad, np.float64)
        if self.maximize:
            g = -g
        if self.wd != 0:
            g = g + self.wd * self.theta
        if self.mu != 0:
            self.buf = g.copy() if self.buf is None else self.mu * self.buf + (1 - self.tau) * g
            g = g + self.mu * self.buf if self.nesterov else self.buf
        self.theta = self.theta - self.lr * g


class AdamRef:
    """torch.optim.Adam / AdamW (``decoupled=True``)."""

    def __init__(self, theta, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                 decoupled=False):
        self.theta = np.asarray(theta, np.float64).copy()
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.amsgrad, self.maximize, self.decoupled = amsgrad, maximize, decoupled
        self.m = np.zeros_like(self.theta)
        self.v = np.zeros_like(self.theta)
        self.vmax = np.zeros_like(self.theta)
        self.t = 0

    def step(self, grad):
        self.t += 1
        g = np.asarray(grad, np.float64)
        if self.maximize:
            g = -g
        if self.wd != 0:
            if self.decoupled:
                self.theta = self.theta * (1 - self.lr * self.wd)
            else:
                g = g + self.wd * self.theta
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1 ** self.t)
        if self.amsgrad:
            self.vmax = np.maximum(self.vmax, self.v)
            v_hat = self.vmax / (1 - self.b2 ** self.t)
        else:
            v_hat = self.v / (1 - self.b2 ** self.t)
        self.theta = self.theta - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def _params(seed=0):
    return [leaf(randn(s, seed=seed + i)) for i, s in enumerate(SHAPES)]


def _grads(step, seed=100):
    scale = GRAD_SCALES[step % len(GRAD_SCALES)]
    return [randn(s, seed=seed + 10 * step + i, scale=scale) for i, s in enumerate(SHAPES)]


def _run_against(opt, params, refs, steps=6, check_state=None):
    for step in range(steps):
        grads = _grads(step)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for r, g in zip(refs, grads):
            r.step(g)
        for i, (p, r) in enumerate(zip(params, refs)):
            np.testing.assert_allclose(p.numpy(), r.theta, rtol=RTOL, atol=ATOL,
                                       err_msg=f"parameter {i} {p.shape} after step {step + 1}")
        if check_state is not None:
            check_state(opt.state_dict()["state"], refs, step + 1)


# ----------------------------------------------------------------------------------------------
# update rules
# ----------------------------------------------------------------------------------------------

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.1),
    dict(lr=0.1, momentum=0.5, weight_decay=0.05, nesterov=True),
    dict(lr=0.1, momentum=0.8, dampening=0.5, weight_decay=0.02),
    dict(lr=0.1, momentum=0.9, maximize=True),
    dict(lr=0.1, maximize=True),
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_reference(cfg):
    params = _params()
    refs = [SGDRef(p.numpy(), **cfg) for p in params]

    def check_state(state, refs, step):
        if cfg.get("momentum", 0) == 0:
            return
        for i, r in enumerate(refs):
            np.testing.assert_allclose(state[i]["momentum_buffer"], r.buf, rtol=RTOL, atol=ATOL,
                                       err_msg=f"momentum_buffer {i} after step {step}")

    _run_against(SGD(params, **cfg), params, refs, check_state=check_state)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_maximize_with_weight_decay(momentum):
    # torch negates the gradient first, then adds weight decay: decay still pulls towards 0.
    cfg = dict(lr=0.1, momentum=momentum, weight_decay=0.2, maximize=True)
    params = _params(seed=3)
    refs = [SGDRef(p.numpy(), **cfg) for p in params]
    _run_against(SGD(params, **cfg), params, refs)


ADAM_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, betas=(0.9, 0.98), eps=1e-9),
    dict(lr=0.1, weight_decay=0.1),
    dict(lr=0.1, amsgrad=True),
    dict(lr=0.1, amsgrad=True, weight_decay=0.05, maximize=True),
    dict(lr=0.1, betas=(0.5, 0.6), eps=1e-3),
    dict(lr=0.1, maximize=True),
]


def _adam_state_checker(amsgrad):
    def check_state(state, refs, step):
        for i, r in enumerate(refs):
            s = state[i]
            assert int(s["step"]) == step
            np.testing.assert_allclose(s["exp_avg"], r.m, rtol=RTOL, atol=ATOL, err_msg=f"exp_avg {i} step {step}")
            np.testing.assert_allclose(s["exp_avg_sq"], r.v, rtol=RTOL, atol=1e-9,
                                       err_msg=f"exp_avg_sq {i} step {step}")
            if amsgrad:
                np.testing.assert_allclose(s["max_exp_avg_sq"], r.vmax, rtol=RTOL, atol=1e-9,
                                           err_msg=f"max_exp_avg_sq {i} step {step}")
    return check_state


@pytest.mark.parametrize("cfg", ADAM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_adam_matches_reference(cfg):
    params = _params(seed=10)
    refs = [AdamRef(p.numpy(), **cfg) for p in params]
    _run_against(Adam(params, **cfg), params, refs, check_state=_adam_state_checker(cfg.get("amsgrad", False)))


ADAMW_CONFIGS = [
    dict(lr=0.1),  # default weight_decay=1e-2
    dict(lr=0.1, weight_decay=0.3),
    dict(lr=0.1, weight_decay=0.1, amsgrad=True),
    dict(lr=0.05, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0),
    dict(lr=0.1, weight_decay=0.1, maximize=True),
]


@pytest.mark.parametrize("cfg", ADAMW_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_adamw_matches_reference(cfg):
    params = _params(seed=20)
    refs = [AdamRef(p.numpy(), decoupled=True, **{"weight_decay": 1e-2, **cfg}) for p in params]
    _run_against(AdamW(params, **cfg), params, refs, check_state=_adam_state_checker(cfg.get("amsgrad", False)))


def test_adam_and_adamw_differ_with_weight_decay():
    a, b = leaf(randn((5,), 1)), leaf(randn((5,), 1))
    g = randn((5,), 2)
    a.grad, b.grad = g, g
    Adam([a], lr=0.1, weight_decay=0.5).step()
    AdamW([b], lr=0.1, weight_decay=0.5).step()
    assert not np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_parameter_groups_use_their_own_hyperparameters():
    p1, p2 = leaf(randn((4,), 1)), leaf(randn((3,), 2))
    r1, r2 = SGDRef(p1.numpy(), lr=0.5, momentum=0.9), SGDRef(p2.numpy(), lr=0.01)
    opt = SGD([{"params": [p1], "lr": 0.5, "momentum": 0.9}, {"params": [p2]}], lr=0.01)
    for step in range(3):
        g1, g2 = randn((4,), 10 + step), randn((3,), 20 + step)
        p1.grad, p2.grad = g1, g2
        opt.step()
        r1.step(g1)
        r2.step(g2)
    np.testing.assert_allclose(p1.numpy(), r1.theta, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(p2.numpy(), r2.theta, rtol=RTOL, atol=ATOL)


def test_training_loop_with_backward():
    """Gradients that come from backward, then the Adam update, then zero_grad."""
    x = randn((8, 3), 1)
    w = leaf(randn((3,), 2))
    ref = AdamRef(w.numpy(), lr=0.05)
    opt = Adam([w], lr=0.05)
    for _ in range(4):
        opt.zero_grad()
        loss = ((tfm_rs.tensor(x) @ w) * (tfm_rs.tensor(x) @ w)).sum()
        loss.backward()
        theta = ref.theta
        ref.step(2 * x.astype(np.float64).T @ (x.astype(np.float64) @ theta))
        opt.step()
        np.testing.assert_allclose(w.numpy(), ref.theta, rtol=1e-4, atol=1e-5)
    assert w.is_leaf and w.requires_grad and w.grad_fn is None


# ----------------------------------------------------------------------------------------------
# state, zero_grad, skipped parameters
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda ps, lr: SGD(ps, lr=lr, momentum=0.9, dampening=0.1, weight_decay=0.01),
    lambda ps, lr: SGD(ps, lr=lr, momentum=0.9, nesterov=True),
    lambda ps, lr: Adam(ps, lr=lr),
    lambda ps, lr: Adam(ps, lr=lr, amsgrad=True, weight_decay=0.1),
    lambda ps, lr: AdamW(ps, lr=lr, amsgrad=True),
], ids=["sgd", "sgd-nesterov", "adam", "adam-amsgrad", "adamw-amsgrad"])
def test_state_dict_round_trip_gives_identical_steps(make):
    p1 = _params(seed=30)
    opt1 = make(p1, 0.1)
    for step in range(3):
        for p, g in zip(p1, _grads(step)):
            p.grad = g
        opt1.step()
    sd = opt1.state_dict()
    assert sorted(sd["state"]) == list(range(len(SHAPES)))
    assert sd["param_groups"][0]["params"] == list(range(len(SHAPES)))
    assert all(isinstance(v, np.ndarray) for s in sd["state"].values() for v in s.values() if not np.isscalar(v))
    p2 = [leaf(p.numpy()) for p in p1]
    opt2 = make(p2, 999.0)  # the saved hyperparameters replace these
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.1
    for step in range(3, 6):
        grads = _grads(step)
        for a, b, g in zip(p1, p2, grads):
            a.grad, b.grad = g, g
        opt1.step()
        opt2.step()
        for i, (a, b) in enumerate(zip(p1, p2)):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"parameter {i} after step {step + 1}")


def test_state_dict_is_a_snapshot():
    p = [leaf(randn((4,), 1))]
    opt = Adam(p, lr=0.1)
    p[0].grad = randn((4,), 2)
    opt.step()
    sd = opt.state_dict()
    saved = sd["state"][0]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], saved)
    assert sd["state"][0]["step"] == 1 and opt.state_dict()["state"][0]["step"] == 2


def test_zero_grad():
    w = leaf(randn((3, 2), 1))
    (w * 2.0).sum().backward()
    assert w.grad is not None
    opt = SGD([w], lr=0.1)
    opt.zero_grad()
    assert w.grad is None
    (w * 2.0).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert w.grad is not None
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros((3, 2)))
    (w * 2.0).sum().backward()  # accumulates onto the zeros
    np.testing.assert_array_equal(w.grad.numpy(), np.full((3, 2), 2.0))


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.1),
                                  lambda ps: AdamW(ps, lr=0.1, weight_decay=0.5)], ids=["sgd", "adam", "adamw"])
def test_parameters_without_grad_are_skipped(make):
    a, b = leaf(randn((5,), 1)), leaf(randn((4,), 2))
    b_before = b.numpy().copy()
    opt = make([a, b])
    a.grad = randn((5,), 3)
    a_before = a.numpy().copy()
    opt.step()
    opt.step()
    np.testing.assert_array_equal(b.numpy(), b_before)  # not even weight decay touches it
    assert not np.allclose(a.numpy(), a_before)
    assert 1 not in opt.state_dict()["state"]
    # Once it has a gradient it starts from a fresh state (step 1 for Adam).
    b.grad = randn((4,), 4)
    opt.step()
    assert not np.array_equal(b.numpy(), b_before)
    if isinstance(opt, Adam):
        assert opt.state_dict()["state"][1]["step"] == 1


def test_load_state_dict_with_wrong_shapes():
    src = [leaf(randn((3, 4), 1))]
    opt = Adam(src, lr=0.1)
    src[0].grad = randn((3, 4), 2)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(tfm_rs.ShapeError, match="load_state_dict"):
        Adam([leaf(randn((4, 3), 3))], lr=0.1).load_state_dict(sd)
    with pytest.raises(tfm_rs.ShapeError, match="load_state_dict"):
        Adam([leaf(randn((3, 4), 3)), leaf(randn((2,), 4))], lr=0.1).load_state_dict(sd)
    sgd = SGD([leaf(randn((5,), 1))], lr=0.1, momentum=0.9)
    sgd.param_groups[0]["params"][0].grad = randn((5,), 2)
    sgd.step()
    with pytest.raises(tfm_rs.ShapeError, match="load_state_dict"):
        SGD([leaf(randn((6,), 1))], lr=0.1, momentum=0.9).load_state_dict(sgd.state_dict())


def test_invalid_hyperparameters():
    p = [leaf(randn((2,), 1))]
    with pytest.raises(tfm_rs.InvalidArgumentError, match="SGD"):
        SGD(p, lr=-1.0)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="Nesterov"):
        SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="betas"):
        Adam(p, betas=(0.9, 1.0))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="empty"):
        Adam([])
    with pytest.raises(tfm_rs.InvalidArgumentError, match="non-leaf"):
        Adam([p[0] * 2.0])
