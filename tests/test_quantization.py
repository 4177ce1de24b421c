"""Int8 inference (tfm_rs.quantization): QuantizedLinear against a float64 reference of the
quantize → integer GEMM → dequantize arithmetic and against the float layer within the
quantization error bound; quantized models (forward, the native decoder, generate) against
their float originals and against themselves; save/load; bad input. The integer GEMM's paths
are checked bit for bit in rust/cpu/qgemm/tests.rs."""

from __future__ import annotations

import os

import numpy as np
import pytest

import tfm_rs
from tfm_rs import _core, nn
from tfm_rs.decode import decoder_weights
from tfm_rs.models import GPT, Seq2SeqTransformer
from tfm_rs.quantization import (QuantizedLinear, QuantizedMultiheadAttention, QuantizedWeight, is_quantized,
                                 load_quantized, quantize_dynamic, quantized_state_dict, save_quantized)

V = 29
SIZES = [1, 3, 17, 127]
EPS32 = float(np.finfo(np.float32).eps)


def quantize_rows(x):
    """The activations' quantization, redone in float32 numpy: per row, the range
    [min(x, 0), max(x, 0)] onto 0..255 (times the reciprocal of the scale), rounding half to even."""
    x = np.asarray(x, np.float32)
    lo = np.minimum(x.min(axis=1), 0).astype(np.float32)
    hi = np.maximum(x.max(axis=1), 0).astype(np.float32)
    s = np.where(hi > lo, (hi - lo) / np.float32(255), np.float32(1)).astype(np.float32)
    inv = (np.float32(1) / s).astype(np.float32)
    z = np.rint(np.clip(-lo * inv, 0, 255)).astype(np.float32)
    q = np.clip(np.rint(np.clip(x * inv[:, None], -512, 512)) + z[:, None], 0, 255)
    return q.astype(np.int64), s, z.astype(np.int64)


def reference(x, w: QuantizedWeight, bias):
    """float64 of the int8 arithmetic: Σ (a − z)·q, times s_i·t_j (that product in float32, as
    the kernels form it), plus the bias."""
    a, s, z = quantize_rows(x)
    q, t = w.int8().astype(np.int64), w.scales()
    acc = (a - z[:, None]) @ q.T
    st = (s[:, None] * t[None, :]).astype(np.float32).astype(np.float64)
    y = acc.astype(np.float64) * st
    return y if bias is None else y + np.asarray(bias, np.float64), np.abs(acc) * st


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("k", [1, 3, 17, 127])
def test_quantized_linear_is_the_int8_arithmetic_up_to_float32_rounding(m, n, k):
    rng = np.random.default_rng(m * 10000 + n * 100 + k)
    lin = nn.Linear(k, n)
    x = (rng.standard_normal((m, k)) * 2 + 0.5).astype(np.float32)
    x[0, 0] = 0.0  # zero maps onto the zero point exactly
    ql = QuantizedLinear.from_float(lin)
    with tfm_rs.no_grad():
        y = ql(tfm_rs.tensor(x)).numpy()
    want, magnitude = reference(x, ql.weight, lin.bias.numpy())
    # Two f32 roundings (the integer to float, the product) and the bias's sum.
    tol = 3 * EPS32 * (magnitude + np.abs(lin.bias.numpy())[None, :]) + 1e-30
    assert np.all(np.abs(y - want) <= tol)
    # Within the quantization error of the float layer: |x·w − x̂·ŵ| ≤ s/2·Σ|w| + t/2·Σ(|x| + s/2).
    _, s, _ = quantize_rows(x)
    t = ql.weight.scales().astype(np.float64)
    w = lin.weight.numpy().astype(np.float64)
    exact = x.astype(np.float64) @ w.T + lin.bias.numpy()
    bound = (s[:, None] / 2 * np.abs(w).sum(1)[None, :]
             + t[None, :] / 2 * (np.abs(x).sum(1) + k * s / 2)[:, None])
    assert np.all(np.abs(y - exact) <= bound * (1 + 1e-5) + 1e-6)


def test_weight_quantization_is_symmetric_per_output_channel():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [127.0, -127.0, 63.5]], np.float32)
    q = QuantizedWeight.quantize(w)
    np.testing.assert_array_equal(q.scales(), np.array([1 / 127, 1, 1], np.float32))
    np.testing.assert_array_equal(q.int8(), [[64, -127, 32], [0, 0, 0], [127, -127, 64]])
    assert q.int8().dtype == np.int8 and q.shape == (3, 3)
    assert np.all(np.abs(q.dequantize() - w) <= 0.5 * q.scales()[:, None] + 1e-7)  # half a step
    # Stored values come back as they were, −128 included.
    r = QuantizedWeight(np.array([[-128, 127]], np.int8), np.array([0.5], np.float32))
    np.testing.assert_array_equal(r.int8(), [[-128, 127]])
    with tfm_rs.no_grad():
        y = QuantizedLinear(r)(tfm_rs.tensor(np.array([[1.0, 1.0]], np.float32))).numpy()
    assert y[0, 0] == pytest.approx(-0.5, abs=0.5 / 255)


def seq2seq(seed=0, **kw):
    tfm_rs.manual_seed(seed)
    tfm_rs.nn.init.manual_seed(seed)
    cfg = dict(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=48, max_len=24,
               dropout=0.1)
    cfg.update(kw)
    return Seq2SeqTransformer(V, V + 3, **cfg).eval()


SRC = np.array([[5, 6, 7, 8, 9, 3, 0], [10, 11, 4, 0, 0, 0, 0], [12, 13, 14, 15, 16, 17, 18]])
TGT = np.array([[1, 4, 9, 2, 7, 7, 3, 11]] * 3) + np.arange(3)[:, None]


def test_quantize_dynamic_replaces_every_linear_and_attention_projection():
    m = seq2seq()
    q = quantize_dynamic(m, dtype="int8")
    assert not is_quantized(m) and is_quantized(q)
    kinds = [type(x) for x in q.modules()]
    assert nn.Linear not in kinds and nn.MultiheadAttention not in kinds
    assert isinstance(q.generator, QuantizedLinear)
    assert isinstance(q.transformer.decoder.layers[0].multihead_attn, QuantizedMultiheadAttention)
    assert all(not p.requires_grad for p in q.parameters())
    only = quantize_dynamic(m, {nn.Linear})
    kinds = [type(x) for x in only.modules()]
    assert nn.MultiheadAttention in kinds and QuantizedLinear in kinds


@pytest.mark.parametrize("kw", [{}, {"norm_first": True, "activation": "gelu"}])
def test_quantized_model_is_close_to_float_and_its_decoder_equals_its_forward(kw):
    m = seq2seq(**kw)
    q = quantize_dynamic(m)
    mask = SRC == m.pad_id
    with tfm_rs.no_grad():
        full_f = m(SRC, TGT).numpy()
        memory = q.encode(SRC)
        full = q.decode(TGT, memory, mask).numpy()
    # Close to the float model: the logits within a few quantization steps, the same argmax
    # almost everywhere.
    scale = np.abs(full_f).max()
    assert np.abs(full - full_f).max() <= 0.05 * scale
    assert (full.argmax(-1) == full_f.argmax(-1)).mean() >= 0.9
    # The native decoder's cached steps run on the same int8 weights: the same logits as the
    # quantized model's full forward, up to float rounding (which can move an activation by one
    # quantization step, hence the looser tolerance than the float decoder's).
    dec = _core.Decoder(decoder_weights(q), 3, memory, mask)
    for t in range(TGT.shape[1]):
        step = dec.feed([[int(TGT[r, t])] for r in range(3)])
        np.testing.assert_allclose(step, full[:, t], rtol=0, atol=2e-3 * np.abs(full[:, t]).max())


def test_generate_and_gpt_run_quantized():
    m = seq2seq()
    q = quantize_dynamic(m)
    out = q.generate(SRC, max_new_tokens=10)
    ref = m.generate(SRC, max_new_tokens=10)
    assert len(out.sequences) == 3
    # Alone or batched, a sentence decodes the same (the int8 GEMM is row-independent).
    for i in range(3):
        row = [t for t in SRC[i].tolist() if t != m.pad_id]
        assert q.generate([row], max_new_tokens=10).sequences[0] == out.sequences[i]
    agree = sum(a == b for a, b in zip(out.sequences, ref.sequences))
    print(f"greedy sequences equal to float: {agree}/3")
    tfm_rs.manual_seed(0)
    g = GPT(V, d_model=32, nhead=4, num_layers=2, max_len=20).eval()
    gq = quantize_dynamic(g)
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    with tfm_rs.no_grad():
        full = gq(ids).numpy()
    dec = _core.Decoder(decoder_weights(gq), 1)
    for t in range(ids.shape[1]):
        step = dec.feed([[int(ids[0, t])]])
        np.testing.assert_allclose(step, full[:, t], rtol=0, atol=2e-3 * np.abs(full[:, t]).max())
    seq = gq.generate([[3, 1, 4]], max_new_tokens=5).sequences[0]
    assert seq[:3] == [3, 1, 4] and len(seq) == 8  # the prompt, then five new tokens


def test_save_and_load_round_trip_in_a_quarter_of_the_size(tmp_path):
    from safetensors.numpy import save_file

    m = seq2seq(d_model=64, dim_feedforward=256)
    q = quantize_dynamic(m)
    path = tmp_path / "model.int8.safetensors"
    save_quantized(q, path)
    save_file(m.state_dict(), str(tmp_path / "model.safetensors"))
    ratio = os.path.getsize(path) / os.path.getsize(tmp_path / "model.safetensors")
    print(f"int8 file / float32 file: {ratio:.3f}")
    assert ratio < 0.35  # the embeddings, norms and biases stay float32
    fresh = seq2seq(seed=1, d_model=64, dim_feedforward=256)
    loaded = load_quantized(fresh, path)
    with tfm_rs.no_grad():
        np.testing.assert_array_equal(loaded(SRC, TGT).numpy(), q(SRC, TGT).numpy())
    state = quantized_state_dict(loaded)
    assert state["generator.weight.int8"].dtype == np.int8


def test_bad_input_gives_clear_errors(tmp_path):
    m = seq2seq()
    q = quantize_dynamic(m)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="already quantized"):
        quantize_dynamic(q)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="dtype"):
        quantize_dynamic(m, dtype="float16")
    with pytest.raises(tfm_rs.AutogradError, match="inference only"):
        q.train()
    with pytest.raises(tfm_rs.AutogradError, match="inference only"):
        q.generator(tfm_rs.tensor(np.ones((2, 32), np.float32), requires_grad=True))
    logits = q(SRC, TGT)
    with pytest.raises(tfm_rs.TfmError):
        logits.sum().backward()
    with pytest.raises(tfm_rs.InvalidArgumentError, match="int8"):
        m.load_state_dict(quantized_state_dict(q))
    save_quantized(q, tmp_path / "q.safetensors")
    from safetensors.numpy import save_file

    save_file(m.state_dict(), str(tmp_path / "f.safetensors"))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="not an int8 checkpoint"):
        load_quantized(seq2seq(), tmp_path / "f.safetensors")
    with pytest.raises(tfm_rs.NonFiniteError):
        with tfm_rs.no_grad():
            q.generator(tfm_rs.tensor(np.full((1, 32), np.nan, np.float32)))
    with pytest.raises(tfm_rs.ShapeError):
        with tfm_rs.no_grad():
            q.generator(tfm_rs.tensor(np.ones((1, 31), np.float32)))
    with pytest.raises(tfm_rs.InvalidArgumentError):
        QuantizedWeight(np.zeros((2, 3), np.int8), np.array([1.0, 0.0], np.float32))
    if not _core.gpu_available():
        print("GPU part skipped: no GPU adapter on this machine")
        return
    with pytest.raises(tfm_rs.DeviceError, match="CPU"):
        quantize_dynamic(seq2seq().to("gpu"))
