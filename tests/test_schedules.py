"""tfm_rs.optim.lr_scheduler against closed-form values, and clip_grad_norm_ against NumPy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tfm_rs
from helpers import leaf, randn
from tfm_rs.optim import (SGD, Adam, ConstantLR, InverseSqrtLR, LambdaLR, NoamLR, WarmupCosineLR,
                          clip_grad_norm_, clip_grad_value_, lr_scheduler)


def make_opt(lr=1.0, groups=1):
    params = [leaf(randn((3,), seed=i)) for i in range(groups)]
    if groups == 1:
        return Adam(params, lr=lr, betas=(0.9, 0.98), eps=1e-9)
    return Adam([{"params": [p], "lr": lr * (i + 1)} for i, p in enumerate(params)], betas=(0.9, 0.98))


def rates(sched, n):
    """Rates in force for the next n optimizer steps (the protocol: opt.step(); sched.step())."""
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        assert sched.optimizer.param_groups[0]["lr"] == out[-1]
        sched.step()
    return out


def noam(step, d_model, warmup, factor=1.0):
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


# ----------------------------------------------------------------------------------------------
# closed forms
# ----------------------------------------------------------------------------------------------

def test_noam_matches_equation_3():
    d, w = 512, 40
    s = NoamLR(make_opt(), d_model=d, warmup_steps=w, factor=2.0)
    got = rates(s, 200)
    want = [noam(k, d, w, 2.0) for k in range(1, 201)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # Peak at the warmup-th update (index w-1), increasing before, decreasing after.
    assert int(np.argmax(got)) == w - 1
    assert got[w - 1] == pytest.approx(2.0 * (d * w) ** -0.5)
    assert all(a < b for a, b in zip(got[: w - 1], got[1:w]))
    assert all(a > b for a, b in zip(got[w - 1:], got[w:]))
    assert got[0] > 0  # the first update does not get the degenerate rate of "step 0"


def test_noam_paper_values():
    s = NoamLR(make_opt(), d_model=512, warmup_steps=4000)
    s.step(3999)  # jump: the rate of training step 4000, the peak
    assert s.get_last_lr()[0] == pytest.approx(512 ** -0.5 * 4000 ** -0.5)
    assert s.get_last_lr()[0] == pytest.approx(7.0e-4, rel=0.01)


def test_inverse_sqrt_equals_noam_with_same_peak():
    d, w, f = 256, 25, 1.5
    a = rates(NoamLR(make_opt(), d, w, f), 120)
    b = rates(InverseSqrtLR(make_opt(), w, peak_lr=f * (d * w) ** -0.5), 120)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_inverse_sqrt_closed_form_and_group_peaks():
    w = 10
    s = InverseSqrtLR(make_opt(lr=0.1, groups=2), w)  # peak_lr=None → each group's lr
    for step in range(1, 60):
        want = [peak * (step / w if step <= w else math.sqrt(w / step)) for peak in (0.1, 0.2)]
        np.testing.assert_allclose(s.get_last_lr(), want, rtol=1e-12)
        s.step()


def test_warmup_cosine_closed_form():
    base, w, total, lo = 3e-4, 10, 50, 1e-5
    s = WarmupCosineLR(make_opt(lr=base), w, total, min_lr=lo)
    got = rates(s, 70)
    for step, lr in enumerate(got, start=1):
        if step <= w:
            want = base * step / w
        else:
            p = min((step - w) / (total - w), 1.0)
            want = lo + (base - lo) * 0.5 * (1 + math.cos(math.pi * p))
        assert lr == pytest.approx(want, rel=1e-12), step
    assert int(np.argmax(got)) == w - 1 and got[w - 1] == pytest.approx(base)
    assert got[total - 1] == pytest.approx(lo) and got[-1] == pytest.approx(lo)


def test_constant_and_lambda():
    s = ConstantLR(make_opt(lr=0.5), factor=1.0)
    assert rates(s, 10) == [0.5] * 10
    s = ConstantLR(make_opt(lr=0.3))  # torch defaults: factor 1/3 for 5 steps
    np.testing.assert_allclose(rates(s, 8), [0.1] * 5 + [0.3] * 3)
    s = LambdaLR(make_opt(lr=2.0), lambda e: 0.5 ** e)
    np.testing.assert_allclose(rates(s, 5), [2.0, 1.0, 0.5, 0.25, 0.125])


def test_scheduler_drives_the_optimizer():
    p = leaf(np.zeros(1, np.float32))
    opt = SGD([p], lr=123.0)
    sched = LambdaLR(opt, lambda e: e + 1.0)
    assert opt.param_groups[0]["initial_lr"] == 123.0
    for k in range(3):
        p.grad = np.ones(1, np.float32)
        opt.step()
        sched.step()
    # SGD steps used lr = 123 * (1, 2, 3)
    np.testing.assert_allclose(p.numpy(), [-123.0 * 6], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# state_dict
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [
    lambda o: NoamLR(o, 64, 7, factor=3.0),
    lambda o: InverseSqrtLR(o, 5, peak_lr=1e-3),
    lambda o: WarmupCosineLR(o, 4, 30, min_lr=1e-6),
    lambda o: ConstantLR(o, factor=0.5, total_iters=9),
    lambda o: LambdaLR(o, lambda e: 1.0 / (e + 1)),
], ids=["noam", "invsqrt", "cosine", "constant", "lambda"])
def test_state_dict_round_trip_continues_identically(build):
    ref = build(make_opt(lr=0.01))
    full = rates(ref, 40)

    first = build(make_opt(lr=0.01))
    head = rates(first, 17)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON (the checkpoint format)
    assert state["last_epoch"] == 17

    resumed = build(make_opt(lr=0.01))  # fresh optimizer at its initial lr: load must restore the rate
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 17
    tail = rates(resumed, 23)
    assert head + tail == full


def test_lambda_state_dict_excludes_functions():
    s = LambdaLR(make_opt(), lambda e: 1.0)
    assert "lr_lambdas" not in s.state_dict()
    assert "optimizer" not in s.state_dict()


def test_load_state_dict_rejects_foreign_keys_and_group_count():
    s = NoamLR(make_opt(), 16, 4)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="unexpected keys"):
        s.load_state_dict({**s.state_dict(), "bogus": 1})
    two = NoamLR(make_opt(groups=2), 16, 4)
    with pytest.raises(tfm_rs.ShapeError, match="parameter groups"):
        s.load_state_dict(two.state_dict())


def test_bad_arguments():
    with pytest.raises(tfm_rs.InvalidArgumentError):
        NoamLR(make_opt(), 0, 10)
    with pytest.raises(tfm_rs.InvalidArgumentError):
        NoamLR(make_opt(), 16, 0)
    with pytest.raises(tfm_rs.InvalidArgumentError):
        WarmupCosineLR(make_opt(), 10, 10)
    with pytest.raises(tfm_rs.InvalidArgumentError):
        InverseSqrtLR(make_opt(), -1)
    assert lr_scheduler.LRScheduler is tfm_rs.optim.LRScheduler


# ----------------------------------------------------------------------------------------------
# clip_grad_norm_
# ----------------------------------------------------------------------------------------------

def params_with_grads(scale=1.0, shapes=((3, 17), (127,), (1,), (2, 3, 4))):
    ps = []
    for i, shape in enumerate(shapes):
        p = leaf(randn(shape, seed=i))
        p.grad = randn(shape, seed=100 + i, scale=scale)
        ps.append(p)
    return ps


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_vs_numpy(norm_type, max_norm):
    ps = params_with_grads()
    before = [p.grad.numpy().astype(np.float64) for p in ps]
    flat = np.concatenate([g.ravel() for g in before])
    want = np.max(np.abs(flat)) if math.isinf(norm_type) else np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type)
    total = clip_grad_norm_(ps, max_norm, norm_type)
    assert isinstance(total, tfm_rs.Tensor) and total.shape == ()
    assert total.item() == pytest.approx(want, rel=1e-6)
    coef = min(max_norm / (want + 1e-6), 1.0)
    for p, g in zip(ps, before):
        np.testing.assert_allclose(p.grad.numpy(), g * coef, rtol=1e-6, atol=1e-7)
    if coef < 1:
        after = np.concatenate([p.grad.numpy().ravel() for p in ps]).astype(np.float64)
        got = np.max(np.abs(after)) if math.isinf(norm_type) else np.sum(np.abs(after) ** norm_type) ** (1 / norm_type)
        assert got == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_skips_missing_grads_and_accepts_one_tensor():
    ps = params_with_grads()
    bare = leaf(randn((4,), seed=9))
    total = clip_grad_norm_(ps + [bare], 1e9)
    assert bare.grad is None
    assert total.item() == pytest.approx(clip_grad_norm_(ps, 1e9).item())
    assert clip_grad_norm_([bare], 1.0).item() == 0.0
    one = params_with_grads(shapes=((5,),))[0]
    assert clip_grad_norm_(one, 1e9).item() == pytest.approx(np.linalg.norm(one.grad.numpy()), rel=1e-6)


def test_clip_grad_norm_nonfinite():
    ps = params_with_grads()
    g = ps[0].grad.numpy()
    g[0, 0] = np.inf
    ps[0].grad = g
    with pytest.raises(tfm_rs.NonFiniteError, match="non-finite"):
        clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    total = clip_grad_norm_(ps, 1.0)  # torch: returns inf and scales by max_norm/inf = 0
    assert math.isinf(total.item())


def test_clip_grad_value():
    ps = params_with_grads(scale=3.0)
    before = [p.grad.numpy() for p in ps]
    clip_grad_value_(ps, 0.7)
    for p, g in zip(ps, before):
        np.testing.assert_array_equal(p.grad.numpy(), np.clip(g, -0.7, 0.7))
