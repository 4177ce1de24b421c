"""Every Python entry point that reads tensor values, handed GPU tensors (alone or mixed with
CPU ones): it returns the CPU's answer or raises a clear error, never an ``InternalError``.

The CPU kernels read host memory through accessors that treat a GPU tensor as a bug (a Rust
panic, which the bindings turn into ``InternalError``); these tests pin down that no path from
Python reaches them with one. Each case also checks its values against the same call on the CPU.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from tfm_rs import nn, optim
from tfm_rs.models import GPT, Seq2SeqTransformer
from helpers import require_gpu

# GPU kernels against the CPU's: only summation orders differ. Every comparison here also passes
# at 5e-7 / 5e-8 on lavapipe (llvmpipe, Mesa 22.3.6); these are 4x that.
RTOL, ATOL = 2e-6, 2e-7


@pytest.fixture(autouse=True)
def need_gpu():
    require_gpu()


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def on_gpu(a):
    return tfm_rs.tensor(a).to("gpu")


def outcome(fn):
    """The value of ``fn()`` as NumPy, or the ``TfmError`` class it raised; an ``InternalError``
    (a caught Rust panic) fails the test."""
    try:
        out = fn()
    except tfm_rs.InternalError as e:  # pragma: no cover - what this file guards against
        pytest.fail(f"InternalError (a Rust panic) instead of a result or a clear error: {e}")
    except tfm_rs.TfmError as e:
        assert str(e).strip(), "an error without a message"
        return type(e)
    return out.numpy() if isinstance(out, tfm_rs.Tensor) else out


def test_tensor_readers():
    a = randn(2, 3)
    t = on_gpu(a)
    np.testing.assert_array_equal(t.numpy(), a)
    np.testing.assert_array_equal(np.asarray(t.tolist(), np.float32), a)
    assert math.isclose(t.sum().item(), float(a.sum()), rel_tol=RTOL)
    assert math.isclose(float(t.mean()), float(a.mean()), rel_tol=RTOL, abs_tol=ATOL)
    assert "tensor(" in repr(t)
    cpu = tfm_rs.tensor(np.zeros((2, 3), np.float32))
    cpu.copy_(t)  # GPU values into a CPU tensor, and back
    np.testing.assert_array_equal(cpu.numpy(), a)
    t.copy_(cpu * 2.0)
    np.testing.assert_array_equal(t.numpy(), 2 * a)
    x = tfm_rs.tensor(a, requires_grad=True)
    y = x * 3.0
    # A GPU gradient for a CPU graph: refused, as in PyTorch, with the devices named.
    assert outcome(lambda: y.backward(on_gpu(np.ones_like(a)))) is tfm_rs.DeviceError
    y.backward(np.ones_like(a))
    np.testing.assert_allclose(x.grad.numpy(), np.full_like(a, 3.0))


MIXED = {
    "matmul": lambda c, g: F.matmul(c(randn(2, 3)), g(randn(3, 4, seed=1))),
    "linear": lambda c, g: F.linear(c(randn(2, 3)), g(randn(4, 3, seed=1)), c(randn(4, seed=2))),
    "add": lambda c, g: c(randn(2, 3)) + g(randn(2, 3, seed=1)),
    "layer_norm": lambda c, g: F.layer_norm(c(randn(2, 3)), (3,), g(randn(3, seed=1)), c(randn(3, seed=2))),
    "add_layer_norm": lambda c, g: F.add_layer_norm(g(randn(2, 3)), c(randn(2, 3, seed=1)), (3,)),
    "embedding": lambda c, g: F.embedding(np.array([[0, 2]]), g(randn(4, 3))),
    "cross_entropy": lambda c, g: F.cross_entropy(g(randn(3, 5)), np.array([0, 4, 1]), label_smoothing=0.1),
    "softmax_mask": lambda c, g: F.softmax(c(randn(2, 3)), -1),
    "sdpa_q": lambda c, g: F.scaled_dot_product_attention(g(randn(1, 2, 4)), c(randn(1, 3, 4, seed=1)),
                                                          c(randn(1, 3, 4, seed=2))),
    "sdpa_mask": lambda c, g: F.scaled_dot_product_attention(c(randn(1, 2, 4)), c(randn(1, 3, 4, seed=1)),
                                                             c(randn(1, 3, 4, seed=2)),
                                                             attn_mask=g(np.zeros((2, 3), np.float32))),
    "sdpa_gpu_cpu_mask": lambda c, g: F.scaled_dot_product_attention(
        g(randn(1, 2, 4)), g(randn(1, 3, 4, seed=1)), g(randn(1, 3, 4, seed=2)),
        attn_mask=c(np.triu(np.full((2, 3), -np.inf, np.float32), 1))),
    "attention_with_weights": lambda c, g: F.attention_with_weights(g(randn(1, 2, 4)), g(randn(1, 3, 4, seed=1)),
                                                                     g(randn(1, 3, 4, seed=2)))[0],
    "gelu": lambda c, g: F.gelu(g(randn(2, 3))),
    "cat": lambda c, g: tfm_rs.cat([c(randn(2, 3)), g(randn(2, 3, seed=1))]),
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_functional_ops_with_gpu_and_mixed_operands(name):
    """Every operand on the CPU gives the reference; the GPU/mixed call gives the same values or
    a DeviceError naming the devices."""
    cpu = tfm_rs.tensor
    expected = outcome(lambda: MIXED[name](cpu, cpu))
    got = outcome(lambda: MIXED[name](cpu, on_gpu))
    if isinstance(got, type):
        assert got is tfm_rs.DeviceError, f"{name}: {got.__name__}"
    else:
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=name)


def small_seq2seq():
    tfm_rs.manual_seed(0)
    return Seq2SeqTransformer(11, 13, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                              dim_feedforward=16, dropout=0.0, max_len=12)


def test_state_dict_round_trip_between_devices():
    model = small_seq2seq()
    moved = copy.deepcopy(model).to("gpu")
    for (name, a), b in zip(model.state_dict().items(), moved.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    fresh = small_seq2seq().to("gpu")
    fresh.load_state_dict(moved.state_dict(keep_vars=True))  # GPU tensors as the source
    assert all(p.device == "gpu" for p in fresh.parameters())
    cpu = small_seq2seq()
    cpu.load_state_dict(moved.state_dict(keep_vars=True))
    np.testing.assert_array_equal(cpu.state_dict()["generator.weight"], model.state_dict()["generator.weight"])


def test_decoding_a_gpu_model_matches_the_cpu():
    model = small_seq2seq()
    src = np.array([[3, 4, 5, 2], [6, 7, 2, 0]])
    expected = model.generate(src, max_new_tokens=5, num_beams=2)
    got = copy.deepcopy(model).to("gpu").generate(src, max_new_tokens=5, num_beams=2)
    assert [list(s) for s in got.sequences] == [list(s) for s in expected.sequences]
    tfm_rs.manual_seed(0)
    lm = GPT(vocab_size=9, d_model=8, nhead=2, num_layers=1, max_len=10, dropout=0.0)
    want = lm.generate([[1, 2]], max_new_tokens=4, do_sample=False)
    have = copy.deepcopy(lm).to("gpu").generate([[1, 2]], max_new_tokens=4, do_sample=False)
    assert [list(s) for s in have.sequences] == [list(s) for s in want.sequences]


@pytest.mark.parametrize("make", [
    lambda ps: optim.Adam(ps, lr=1e-2, amsgrad=True),
    lambda ps: optim.AdamW(ps, lr=1e-2),
    lambda ps: optim.SGD(ps, lr=1e-1, momentum=0.9, nesterov=True),
], ids=["adam_amsgrad", "adamw", "sgd_nesterov"])
def test_optimizers_and_their_state_on_the_gpu(make):
    w0 = randn(3, 4)
    results = []
    for device in ("cpu", "gpu"):
        p = nn.Parameter(w0.copy()).to(device) if device == "gpu" else nn.Parameter(w0.copy())
        p = p.detach().requires_grad_(True) if not p.is_leaf else p
        opt = make([p])
        for _ in range(2):
            (p * p).sum().backward()
            opt.step()
            opt.zero_grad()
        state = opt.state_dict()
        again = make([p])
        again.load_state_dict(state)  # NumPy state back onto the parameter's device
        assert all(v.device == device for s in again.state.values() for v in s.values()
                   if isinstance(v, tfm_rs.Tensor))
        results.append((p.numpy(), state))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=RTOL, atol=ATOL)
    for k, v in results[0][1]["state"][0].items():
        np.testing.assert_allclose(results[1][1]["state"][0][k], v, rtol=RTOL, atol=ATOL, err_msg=k)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_gradient_clipping_on_the_gpu(norm_type):
    grads = [randn(3, 4) * 5, randn(7, seed=1) * 5]
    out = []
    for device in ("cpu", "gpu"):
        params = [tfm_rs.tensor(np.zeros_like(g), requires_grad=True).to(device) for g in grads]
        params = [p if p.is_leaf else p.detach().requires_grad_(True) for p in params]
        for p, g in zip(params, grads):
            p.grad = tfm_rs.tensor(g).to(device)
        total = optim.clip_grad_norm_(params, 1.0, norm_type=norm_type).item()
        optim.clip_grad_value_(params, 0.05)
        assert all(p.grad.device == device for p in params)
        out.append((total, [p.grad.numpy() for p in params]))
    assert math.isclose(out[1][0], out[0][0], rel_tol=RTOL)
    for a, b in zip(out[1][1], out[0][1]):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("op, call", [
    ("rms_norm", lambda x: F.rms_norm(x, 3)),
    ("conv1d", lambda x: F.conv1d(x.reshape(1, 2, 3), on_gpu(randn(4, 2, 1)))),
    ("batch_norm", lambda x: F.batch_norm(x, None, None, training=True)),
    ("linear_attention", lambda x: F.linear_attention(x, x, x)),
    ("lsh_attention", lambda x: F.lsh_attention(x, x, n_hashes=1, bucket_size=2)),
])
def test_op_without_gpu_kernel_names_itself(op, call):
    """An op with no GPU kernel: a DeviceError naming the op, not a panic or a silent copy."""
    with pytest.raises(tfm_rs.DeviceError, match=op):
        call(on_gpu(randn(2, 3)))


def test_cross_entropy_nan_logits_raise_on_gpu_as_on_cpu():
    logits = randn(3, 5)
    logits[1, 2] = np.nan
    for make in (tfm_rs.tensor, on_gpu):
        with pytest.raises(tfm_rs.NonFiniteError, match="row 1"):
            F.cross_entropy(make(logits), np.array([0, 1, 2]))
