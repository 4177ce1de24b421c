"""bf16 mixed precision: ``tfm_rs.autocast`` products against float64 references computed on
bf16-rounded inputs, gradients included; the training option; bad input.

Tolerance of a product: its inputs are rounded to bf16 exactly as the reference rounds them, and
each product of two bf16 values is exact in float32, so the only error is the float32 summation:
``|got - ref| ≤ (k + 4)·2⁻²⁴·(|A|·|B|)`` elementwise (the γ_k bound, whatever the summation
order), plus one float32 rounding of a bias. A path that forgot to round an input misses that
bound by orders of magnitude (``test_bf16_is_not_float32``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from helpers import AWKWARD, GRAD_ATOL, GRAD_RTOL, assert_close, leaf, randn
from test_attention import sdpa_grad_ref, sdpa_ref

U = 2.0 ** -24


def bf16(a) -> np.ndarray:
    """Round to the nearest bfloat16, ties to even (finite inputs), as float64."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def assert_product(got, a, b, extra=0.0, what=""):
    """``got ≈ a @ b`` (a, b already rounded, float64) within the float32 summation bound."""
    got = got.numpy() if isinstance(got, tfm_rs.Tensor) else np.asarray(got)
    k = a.shape[-1]
    bound = (k + 4) * U * (np.abs(a) @ np.abs(b)) + extra + 1e-30
    err = np.abs(got - (a @ b + 0.0))
    assert np.all(err <= bound * 1.01), f"{what}: worst excess {np.max(err / bound):.3g}× the bound"


def test_rounding_matches_torch_bfloat16():
    try:
        import torch
    except ImportError:
        pytest.skip("torch not installed: the numpy rounding is checked against torch.bfloat16 only with it")
    x = np.concatenate([randn((4000,), seed=1, scale=10.0), np.float32([1 + 2 ** -8, 1 + 3 * 2 ** -8, -0.0, 3e-39])])
    want = torch.from_numpy(x).to(torch.bfloat16).to(torch.float64).numpy()
    np.testing.assert_array_equal(bf16(x), want)


@pytest.mark.parametrize("rows", AWKWARD)
@pytest.mark.parametrize("inp,out", [(1, 3), (17, 127), (127, 17), (3, 1), (64, 48)])
def test_linear_forward_and_backward(rows, inp, out):
    x, w, b = randn((rows, inp), 1), randn((out, inp), 2, 0.3), randn((out,), 3)
    g = randn((rows, out), 4)
    tx, tw, tb = leaf(x), leaf(w), leaf(b)
    with tfm_rs.autocast("bf16"):
        y = F.linear(tx, tw, tb)
    (y * tfm_rs.tensor(g)).sum().backward()  # outside the block: the op recorded its precision
    xr, wr, gr = bf16(x), bf16(w), bf16(g)
    assert_product(y.numpy() - b.astype(np.float64), xr, wr.T, extra=2 * U * np.abs(xr @ wr.T + b) + 1e-30,
                   what="y")
    assert_product(tx.grad, gr, wr, what="dx")
    assert_product(tw.grad, gr.T, xr, what="dW")
    # db is a reduction: float32 at either precision.
    assert_close(tb.grad, g.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5 * rows, what="db")


def test_linear_3d_input_and_parity_of_layouts():
    x, w = randn((2, 5, 33), 5), randn((7, 33), 6)
    with tfm_rs.autocast("cpu", dtype="bfloat16"):
        y = F.linear(x, w)
    assert y.shape == (2, 5, 7)
    assert_product(y, bf16(x), bf16(w).T, what="y")


def sum_to(x, shape):
    """``x`` summed over the dimensions broadcasting expanded from ``shape``."""
    x = x.sum(tuple(range(x.ndim - len(shape))))
    return x.sum(tuple(i for i, s in enumerate(shape) if s == 1 and x.shape[i] != 1), keepdims=True)


@pytest.mark.parametrize("a_shape,b_shape", [((3, 17), (17, 1)), ((2, 1, 17, 5), (3, 5, 127)), ((127,), (127, 3)),
                                             ((4, 3, 9), (9,))])
def test_matmul_forward_and_backward(a_shape, b_shape):
    a, b = randn(a_shape, 7), randn(b_shape, 8)
    ta, tb = leaf(a), leaf(b)
    with tfm_rs.autocast("bf16"):
        y = F.matmul(ta, tb)
    g = randn(y.shape, 9)
    y.backward(tfm_rs.tensor(g))
    ar, br, gr = bf16(a), bf16(b), bf16(g)
    assert_product(y, ar, br, what="y")
    # Gradients through torch.matmul's 1-D promotion and batch broadcasting, in float64 on the
    # rounded operands; the bound is the largest k of the products behind them.
    a2 = ar[None, :] if ar.ndim == 1 else ar
    b2 = br[:, None] if br.ndim == 1 else br
    g2 = gr.reshape(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1]))
    da = g2 @ np.swapaxes(b2, -1, -2)
    db = np.swapaxes(a2, -1, -2) @ g2
    da_b = np.abs(g2) @ np.abs(np.swapaxes(b2, -1, -2))
    db_b = np.abs(np.swapaxes(a2, -1, -2)) @ np.abs(g2)
    da, da_b = sum_to(da, a2.shape), sum_to(da_b, a2.shape)
    db, db_b = sum_to(db, b2.shape), sum_to(db_b, b2.shape)
    # Each gradient element sums k products, then the batch copies it was broadcast over.
    nb = int(np.prod(g2.shape[:-2]))
    for got, want, bnd, k, name in ((ta.grad, da, da_b, g2.shape[-1], "da"), (tb.grad, db, db_b, g2.shape[-2], "db")):
        got = got.numpy().reshape(want.shape)
        assert np.all(np.abs(got - want) <= (k + nb + 4) * U * bnd * 1.01 + 1e-30), name


@pytest.mark.parametrize("L,S,E", [(1, 1, 1), (3, 17, 8), (17, 3, 5), (33, 40, 16)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_on_rounded_inputs(L, S, E, is_causal):
    if is_causal and L > S:
        pytest.skip("causal with more queries than keys leaves rows empty; covered by test_attention")
    q, k, v = randn((2, 3, L, E), 10), randn((2, 3, S, E), 11), randn((2, 3, S, E + 1), 12)
    do = randn((2, 3, L, E + 1), 13)
    tq, tk, tv = leaf(q), leaf(k), leaf(v)
    with tfm_rs.autocast("bf16"):
        out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=is_causal)
    out.backward(tfm_rs.tensor(do))
    qr, kr, vr = bf16(q), bf16(k), bf16(v)
    # The fused kernel computes in float32 on the rounded q, k, v: the float32 attention tolerances.
    assert_close(out, sdpa_ref(qr, kr, vr, is_causal=is_causal), what="out")
    for got, want, name in zip((tq.grad, tk.grad, tv.grad), sdpa_grad_ref(qr, kr, vr, do, is_causal=is_causal),
                               "qkv"):
        assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"d{name}")


@pytest.mark.parametrize("T", [1, 17, 130])
def test_structured_mask_attention_on_rounded_inputs(T):
    # The block-skipping kernel under autocast rounds q, k and v as the dense one does.
    from tfm_rs import masks

    mask = (masks.sliding_window(5) | masks.global_tokens([0])) & masks.causal()
    q, k, v = randn((2, 3, T, 8), 14), randn((2, 3, T, 8), 15), randn((2, 3, T, 9), 16)
    do = randn((2, 3, T, 9), 17)
    tq, tk, tv = leaf(q), leaf(k), leaf(v)
    with tfm_rs.autocast("bf16"):
        out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
    out.backward(tfm_rs.tensor(do))
    qr, kr, vr, dense = bf16(q), bf16(k), bf16(v), mask.to_dense(T, T)
    assert_close(out, sdpa_ref(qr, kr, vr, mask=dense), what="out")
    for got, want, name in zip((tq.grad, tk.grad, tv.grad), sdpa_grad_ref(qr, kr, vr, do, mask=dense), "qkv"):
        assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"d{name}")


def test_bf16_is_not_float32():
    # Values bf16 cannot hold: the bf16 result must follow the rounded inputs, off the float32
    # product by far more than the summation bound.
    x, w = randn((8, 40), 20), randn((24, 40), 21)
    with tfm_rs.autocast("bf16"):
        y = F.linear(x, w).numpy()
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.max(np.abs(y - exact)) > 100 * 44 * U * np.max(np.abs(x) @ np.abs(w).T)
    assert_product(y, bf16(x), bf16(w).T)


def test_autocast_state_nesting_and_decorator():
    from tfm_rs import amp

    x, w = randn((5, 9), 30), randn((4, 9), 31)
    f32 = F.linear(x, w).numpy()
    assert not amp.is_autocast_enabled() and amp.get_autocast_dtype() == "float32"
    with tfm_rs.autocast("bf16"):
        assert amp.get_autocast_dtype() == "bf16"
        with tfm_rs.autocast("cpu", enabled=False):
            np.testing.assert_array_equal(F.linear(x, w).numpy(), f32)
        with tfm_rs.autocast(dtype="float32"):
            assert not amp.is_autocast_enabled()
        assert amp.is_autocast_enabled()
        bf = F.linear(x, w).numpy()
    assert not amp.is_autocast_enabled()
    np.testing.assert_array_equal(F.linear(x, w).numpy(), f32)  # nothing leaks out of the block

    @tfm_rs.autocast(device_type="cpu", dtype="bfloat16")
    def run():
        return F.linear(x, w).numpy()

    np.testing.assert_array_equal(run(), bf)
    assert not amp.is_autocast_enabled()


def test_autocast_is_per_thread():
    import threading

    seen = []
    with tfm_rs.autocast("bf16"):
        t = threading.Thread(target=lambda: seen.append(tfm_rs.amp.is_autocast_enabled()))
        t.start()
        t.join()
    assert seen == [False]


def test_precision_info():
    path, note = tfm_rs.amp.precision_info("bf16")
    assert path in ("amx_bf16", "avx512_bf16") or path.startswith("emulated on ")
    assert (note is None) == (not path.startswith("emulated"))
    assert tfm_rs.amp.precision_info("float32") == ("float32", None)


def test_emulated_path_gives_the_same_bf16_results():
    # Forcing the AVX2/portable instruction set forces the emulation: same results within the bound.
    import subprocess
    import sys

    code = ("import numpy as np, tfm_rs, tfm_rs.functional as F\n"
            "x = np.linspace(-3, 3, 7 * 45, dtype=np.float32).reshape(7, 45)\n"
            "w = np.cos(np.arange(13 * 45, dtype=np.float32)).reshape(13, 45)\n"
            "with tfm_rs.autocast('bf16'):\n"
            "    y = F.linear(x, w).numpy()\n"
            "print(tfm_rs.amp.precision_info('bf16')[0]); print(repr(y.tolist()))\n")
    out = {}
    for isa in ("generic", "native"):
        env = dict(__import__("os").environ)
        env.pop("TFM_RS_ISA", None)
        if isa == "generic":
            env["TFM_RS_ISA"] = "generic"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        path, values = r.stdout.strip().split("\n")
        out[isa] = (path, np.array(eval(values)))
    assert out["generic"][0] == "emulated on generic"
    x = np.linspace(-3, 3, 7 * 45, dtype=np.float32).reshape(7, 45)
    w = np.cos(np.arange(13 * 45, dtype=np.float32)).reshape(13, 45)
    for _, y in out.values():
        assert_product(y, bf16(x), bf16(w).T)


# ------------------------------------------------------------------------------------ bad input

def test_bad_precisions_raise():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="unknown precision"):
        tfm_rs.autocast("cpu", dtype="float16")
    with pytest.raises(tfm_rs.InvalidArgumentError, match="CPU only"):
        tfm_rs.autocast("cuda")
    with pytest.raises(tfm_rs.TfmError, match="unknown precision 'fp8'"):
        tfm_rs._core.linear(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), None, "fp8")
    with pytest.raises(tfm_rs.TfmError, match="unknown precision"):
        tfm_rs.amp.precision_info("int4")
    from tfm_rs.train import TrainConfig

    with pytest.raises(tfm_rs.InvalidArgumentError, match="precision must be one of float32, bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(tfm_rs.InvalidArgumentError, match="CPU only"):
        TrainConfig(precision="bf16", device="gpu")


def test_shape_errors_are_unchanged_under_autocast():
    with tfm_rs.autocast("bf16"):
        with pytest.raises(tfm_rs.ShapeError):
            F.linear(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
        with pytest.raises(tfm_rs.ShapeError):
            F.matmul(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))


# ------------------------------------------------------------------------------------- training

def _trainer(precision, tmp_path=None, seed=0):
    from test_train import make_trainer

    return make_trainer(tmp_path, seed=seed, precision=precision)


def test_bf16_training_tracks_float32():
    steps = 12
    f32 = [r["loss"] for r in _trainer("float32").train(max_steps=steps, verbose=False)]
    bf = [r["loss"] for r in _trainer("bf16").train(max_steps=steps, verbose=False)]
    assert bf != f32  # the products really ran in bf16
    # Same data, same initialization: after 12 steps the losses agree to a few percent (bf16
    # keeps 8 significant bits of each product input; the weights stay float32).
    np.testing.assert_allclose(bf, f32, rtol=0.03)
    assert bf[-1] < bf[0] - 0.3


def test_bf16_resume_is_exact_and_checkpoints_are_float32(tmp_path):
    from tfm_rs.checkpoint import load_checkpoint

    k, m = 4, 3
    full = _trainer("bf16")
    ref = [r["loss"] for r in full.train(max_steps=k + m, verbose=False)]
    first = _trainer("bf16", tmp_path / "a")
    part1 = [r["loss"] for r in first.train(max_steps=k, verbose=False)]
    first.save(tmp_path / "ck")
    first.close()
    ck = load_checkpoint(tmp_path / "ck")
    assert all(np.asarray(v).dtype == np.float32 for v in ck.model_state.values())
    second = _trainer("bf16", tmp_path / "b", seed=123)
    tfm_rs.manual_seed(999)
    second.resume(tmp_path / "ck")
    part2 = [r["loss"] for r in second.train(max_steps=k + m, verbose=False)]
    assert part1 + part2 == ref  # bit-identical
    assert math.isfinite(ref[-1])


def test_config_key_and_flag(tmp_path, capsys):
    from test_cli_config import cli
    from tfm_rs import config as cfg_lib
    from tfm_rs.runs import train_config

    cfg = cfg_lib.resolve(cfg_lib.loads('[train]\nprecision = "bf16"\nmax_steps = 3\n'))
    assert train_config(cfg).precision == "bf16"
    assert train_config(cfg_lib.resolve({"train": {"max_steps": 3}})).precision == "float32"
    path = tmp_path / "bad.toml"
    path.write_text('[train]\nprecision = "fp16"\n')
    status, out, err = cli(capsys, "train", "--config", path)
    assert status == 2 and "train.precision must be one of float32, bf16" in err and "Traceback" not in err
    status, out, err = cli(capsys, "train", "--precision", "int8")
    assert status == 2 and "int8" in err and "Traceback" not in err
