"""tfm_rs.nn against float64 NumPy references written here (no torch needed).

The references read parameters from a ``state_dict`` (torch.nn's keys), so they double as a
check of the key layout; gradients are compared with central differences of the references on
tiny configurations (d_model 8, 2 heads).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import tfm_rs
from tfm_rs import nn
from helpers import GRAD_ATOL, GRAD_RTOL, assert_close, leaf, numeric_grad, randn

_erf = np.vectorize(math.erf)


def seed(s: int) -> None:
    """Seeds dropout and initialization (nn.init.manual_seed until tfm_rs.manual_seed calls it)."""
    tfm_rs.manual_seed(s)
    nn.init.manual_seed(s)


def f64(sd):
    return {k: v.astype(np.float64) for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------
# float64 references (torch.nn semantics; a fully masked row gives zeros, as tfm_rs does)

def ref_linear(x, w, b=None):
    return x @ w.T + (0.0 if b is None else b)


def ref_layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y * (1.0 if w is None else w) + (0.0 if b is None else b)


def ref_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def ref_relu(x):
    return np.maximum(x, 0.0)


def additive(mask):
    mask = np.asarray(mask)
    return np.where(mask, -np.inf, 0.0) if mask.dtype == np.bool_ else mask.astype(np.float64)


def ref_mha(sd, p, q, k, v, nhead, key_padding_mask=None, attn_mask=None, is_causal=False):
    """torch.nn.MultiheadAttention (batch_first) → (output (N, L, E), weights (N, H, L, S))."""
    E = sd[p + "out_proj.weight"].shape[0]
    if p + "in_proj_weight" in sd:
        wq, wk, wv = np.split(sd[p + "in_proj_weight"], 3)
    else:
        wq, wk, wv = sd[p + "q_proj_weight"], sd[p + "k_proj_weight"], sd[p + "v_proj_weight"]
    bq, bk, bv = np.split(sd[p + "in_proj_bias"], 3) if p + "in_proj_bias" in sd else (None, None, None)
    n, L, S, dh = q.shape[0], q.shape[1], k.shape[1], E // nhead

    def heads(x, t):
        return x.reshape(n, t, nhead, dh).transpose(0, 2, 1, 3)

    Q, K, V = heads(ref_linear(q, wq, bq), L), heads(ref_linear(k, wk, bk), S), heads(ref_linear(v, wv, bv), S)
    scores = Q @ K.transpose(0, 1, 3, 2) / math.sqrt(dh)
    if attn_mask is not None:
        m = additive(attn_mask)
        scores = scores + (m.reshape(n, nhead, L, S) if m.ndim == 3 else m)
    if key_padding_mask is not None:
        scores = scores + additive(key_padding_mask)[:, None, None, :]
    if is_causal:
        scores = scores + np.triu(np.full((L, S), -np.inf), 1)
    mx = scores.max(-1, keepdims=True)
    e = np.where(np.isneginf(scores), 0.0, np.exp(scores - np.where(np.isneginf(mx), 0.0, mx)))
    s = e.sum(-1, keepdims=True)
    probs = np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0)
    y = (probs @ V).transpose(0, 2, 1, 3).reshape(n, L, E)
    return ref_linear(y, sd[p + "out_proj.weight"], sd.get(p + "out_proj.bias")), probs


def ref_encoder_layer(sd, p, x, nhead, act, norm_first, mask=None, kpm=None, is_causal=False, eps=1e-5):
    def ln(i, y):
        return ref_layer_norm(y, sd[f"{p}norm{i}.weight"], sd.get(f"{p}norm{i}.bias"), eps)

    def sa(y):
        return ref_mha(sd, p + "self_attn.", y, y, y, nhead, kpm, mask, is_causal)[0]

    def ff(y):
        h = act(ref_linear(y, sd[p + "linear1.weight"], sd.get(p + "linear1.bias")))
        return ref_linear(h, sd[p + "linear2.weight"], sd.get(p + "linear2.bias"))

    if norm_first:
        x = x + sa(ln(1, x))
        return x + ff(ln(2, x))
    x = ln(1, x + sa(x))
    return ln(2, x + ff(x))


def ref_decoder_layer(sd, p, x, mem, nhead, act, norm_first, tgt_mask=None, memory_mask=None, tgt_kpm=None,
                      mem_kpm=None, tgt_is_causal=False, eps=1e-5):
    def ln(i, y):
        return ref_layer_norm(y, sd[f"{p}norm{i}.weight"], sd.get(f"{p}norm{i}.bias"), eps)

    def sa(y):
        return ref_mha(sd, p + "self_attn.", y, y, y, nhead, tgt_kpm, tgt_mask, tgt_is_causal)[0]

    def ca(y):
        return ref_mha(sd, p + "multihead_attn.", y, mem, mem, nhead, mem_kpm, memory_mask)[0]

    def ff(y):
        h = act(ref_linear(y, sd[p + "linear1.weight"], sd.get(p + "linear1.bias")))
        return ref_linear(h, sd[p + "linear2.weight"], sd.get(p + "linear2.bias"))

    if norm_first:
        x = x + sa(ln(1, x))
        x = x + ca(ln(2, x))
        return x + ff(ln(3, x))
    x = ln(1, x + sa(x))
    x = ln(2, x + ca(x))
    return ln(3, x + ff(x))


def ref_transformer(sd, src, tgt, nhead, n_enc, n_dec, act=ref_relu, norm_first=False, src_mask=None, tgt_mask=None,
                    memory_mask=None, src_kpm=None, tgt_kpm=None, mem_kpm=None):
    x = src
    for i in range(n_enc):
        x = ref_encoder_layer(sd, f"encoder.layers.{i}.", x, nhead, act, norm_first, src_mask, src_kpm)
    mem = ref_layer_norm(x, sd["encoder.norm.weight"], sd["encoder.norm.bias"])
    y = tgt
    for i in range(n_dec):
        y = ref_decoder_layer(sd, f"decoder.layers.{i}.", y, mem, nhead, act, norm_first, tgt_mask, memory_mask,
                              tgt_kpm, mem_kpm)
    return ref_layer_norm(y, sd["decoder.norm.weight"], sd["decoder.norm.bias"])


def check_grads(module, run, ref, inputs, param_names, upstream_seed=7):
    """Backward of ``run(*leaves)`` against finite differences of ``ref(sd, *inputs)`` w.r.t. the
    inputs and the named parameters."""
    leaves = [leaf(x) for x in inputs]
    out = run(*leaves)
    sd = f64(module.state_dict())
    upstream = randn(out.shape, seed=upstream_seed).astype(np.float64)
    out.backward(upstream.astype(np.float32))
    n_in = len(inputs)

    def f(*arrays):
        sd2 = dict(sd)
        sd2.update(zip(param_names, arrays[n_in:]))
        return ref(sd2, *arrays[:n_in])

    expected = numeric_grad(f, list(inputs) + [sd[k] for k in param_names], upstream)
    params = dict(module.named_parameters())
    actual = [t.grad for t in leaves] + [params[k].grad for k in param_names]
    for name, a, e in zip([f"input{i}" for i in range(n_in)] + list(param_names), actual, expected):
        assert a is not None, name
        assert_close(a, e, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"gradient of {name}")


def padding_mask(lengths, s):
    return np.arange(s)[None, :] >= np.asarray(lengths)[:, None]  # torch.nn convention: True = padding


# ------------------------------------------------------------------------------------------------
# Module mechanics

class Block(nn.Module):
    """A small module tree for the registration tests."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(3, np.float32))
        self.register_buffer("steps", np.zeros(1, np.float32))
        self.register_buffer("cache", np.zeros(2, np.float32), persistent=False)
        self.fc = nn.Linear(3, 2)
        self.seq = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))

    def forward(self, x):
        return self.seq(self.fc(x * self.scale))


def test_registration_traversal_and_state_dict_keys():
    m = Block()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["scale", "fc.weight", "fc.bias", "seq.0.weight", "seq.0.bias", "seq.2.weight"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())
    assert [n for n, _ in m.named_children()] == ["fc", "seq"]
    assert [n for n, _ in m.named_modules()] == ["", "fc", "seq", "seq.0", "seq.1", "seq.2"]
    assert [n for n, _ in m.named_buffers()] == ["steps", "cache"]
    assert list(m.state_dict()) == ["scale", "steps", "fc.weight", "fc.bias",
                                    "seq.0.weight", "seq.0.bias", "seq.2.weight"]
    assert len(list(m.parameters(recurse=False))) == 1
    sd = m.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in sd.values())
    sd["scale"][:] = 5.0  # a copy: the module is unchanged
    assert np.all(m.scale.numpy() == 1.0)
    assert m.state_dict(keep_vars=True)["scale"] is m.scale
    # reassignment moves between registries; None keeps the slot
    m.fc = nn.Identity()
    assert "fc.weight" not in m.state_dict()
    m.scale = None
    assert "scale" not in m.state_dict() and m.scale is None
    with pytest.raises(tfm_rs.InvalidArgumentError):
        m.scale = np.ones(3, np.float32)
    with pytest.raises(AttributeError):
        m.nothing_here


def test_assign_before_init_is_an_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(2))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Bad()


def test_forward_through_sequential_and_module_list():
    m = Block()
    x = randn((4, 3), seed=1)
    sd = f64(m.state_dict())
    h = ref_linear(x * sd["scale"], sd["fc.weight"], sd["fc.bias"])
    expected = ref_linear(ref_relu(ref_linear(h, sd["seq.0.weight"], sd["seq.0.bias"])), sd["seq.2.weight"])
    assert_close(m(tfm_rs.tensor(x)), expected)
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    ml.append(nn.ReLU())
    assert len(ml) == 4 and isinstance(ml[-1], nn.ReLU) and len(ml[1:]) == 3
    assert [n for n, _ in ml.named_parameters()][:2] == ["0.weight", "0.bias"]
    assert len(m.seq) == 3 and isinstance(m.seq[1], nn.ReLU) and isinstance(m.seq[-1], nn.Linear)


def test_train_eval_apply_requires_grad_zero_grad():
    m = Block()
    assert m.training and m.seq[1].training
    assert m.eval() is m and not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())
    seen = []
    m.apply(lambda mod: seen.append(type(mod).__name__))
    assert seen == ["Linear", "Linear", "ReLU", "Linear", "Sequential", "Block"]
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())
    m.requires_grad_()
    m(tfm_rs.tensor(randn((2, 3)))).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.numpy() == 0) for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_repr_like_torch():
    assert repr(nn.Linear(3, 2)) == "Linear(in_features=3, out_features=2, bias=True)"
    assert repr(nn.LayerNorm(8)) == "LayerNorm((8,), eps=1e-05, elementwise_affine=True, bias=True)"
    assert repr(nn.Dropout(0.1)) == "Dropout(p=0.1, inplace=False)"
    assert repr(nn.GELU()) == "GELU(approximate='none')"
    assert repr(nn.Embedding(10, 4, padding_idx=0)) == "Embedding(10, 4, padding_idx=0)"
    assert repr(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == (
        "Sequential(\n  (0): Linear(in_features=2, out_features=2, bias=True)\n  (1): ReLU()\n)")
    text = repr(nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 3))
    assert "(0-2): 3 x TransformerEncoderLayer(" in text
    assert repr(nn.Parameter(np.zeros(2))).startswith("Parameter containing:\ntensor(")


def test_state_dict_round_trip():
    seed(1)
    a = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0)
    seed(2)
    b = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0)
    src, tgt = randn((2, 5, 8), seed=3), randn((2, 4, 8), seed=4)
    ya = a(tfm_rs.tensor(src), tfm_rs.tensor(tgt)).numpy()
    assert not np.allclose(ya, b(tfm_rs.tensor(src), tfm_rs.tensor(tgt)).numpy())
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(b(tfm_rs.tensor(src), tfm_rs.tensor(tgt)).numpy(), ya)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)
    # Tensors are accepted as values too, NumPy arrays as inputs
    b.load_state_dict({k: tfm_rs.tensor(v) for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(b(src, tgt).numpy(), ya)


def test_load_state_dict_reports_every_problem_together():
    m = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    sd = m.state_dict()
    before = copy.deepcopy(sd)
    del sd["1.bias"]
    sd["0.weight"] = np.zeros((3, 3), np.float32)
    sd["0.bias"] = np.full(2, 7.0, np.float32)
    sd["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(tfm_rs.ShapeError) as err:
        m.load_state_dict(sd)
    msg = str(err.value)
    for part in ('Missing key(s): "1.bias"', 'Unexpected key(s): "extra.weight"', "0.weight", "(3, 3)", "(2, 3)"):
        assert part in msg
    # nothing was copied (every check runs before the first copy)
    np.testing.assert_array_equal(m.state_dict()["0.bias"], before["0.bias"])
    # missing/unexpected only: InvalidArgumentError, a TfmError
    sd["0.weight"] = before["0.weight"]
    with pytest.raises(tfm_rs.InvalidArgumentError, match='"1.bias"') as err:
        m.load_state_dict(sd)
    assert isinstance(err.value, tfm_rs.TfmError) and "extra.weight" in str(err.value)
    result = m.load_state_dict(sd, strict=False)
    assert result == (["1.bias"], ["extra.weight"])
    assert result.missing_keys == ["1.bias"] and result.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(m.state_dict()["0.bias"], np.full(2, 7.0))
    sd["0.weight"] = np.zeros((1, 1), np.float32)
    with pytest.raises(tfm_rs.ShapeError):  # wrong shapes are errors even with strict=False
        m.load_state_dict(sd, strict=False)


def test_deepcopy_gives_independent_layers():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), num_layers=2)
    keys = list(enc.state_dict())
    assert keys[0] == "layers.0.self_attn.in_proj_weight" and "layers.1.norm2.bias" in keys
    p0 = enc.layers[0].linear1.weight
    p1 = enc.layers[1].linear1.weight
    assert p0 is not p1
    np.testing.assert_array_equal(p0.numpy(), p1.numpy())  # copies of one layer, as in torch
    p0.copy_(np.zeros(p0.shape))
    assert not np.all(p1.numpy() == 0)
    pe = copy.deepcopy(nn.SinusoidalPositionalEncoding(4, 10))
    assert pe.pe.shape == (10, 4)


def test_parameter_and_buffers():
    p = nn.Parameter(np.arange(3))
    assert p.requires_grad and p.dtype == "float32" and isinstance(p, tfm_rs.Tensor)
    assert not nn.Parameter(np.ones(2), requires_grad=False).requires_grad
    m = nn.SinusoidalPositionalEncoding(6, 20)
    assert list(m.state_dict()) == []  # non-persistent buffer
    assert [n for n, _ in m.named_buffers()] == ["pe"] and list(m.parameters()) == []


# ------------------------------------------------------------------------------------------------
# init

def test_init_is_seeded_and_follows_torch_bounds():
    seed(5)
    a = nn.Linear(40, 30)
    seed(5)
    b = nn.Linear(40, 30)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    bound = 1 / math.sqrt(40)
    w = a.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound and abs(w.std() - bound / math.sqrt(3)) < 0.01
    assert np.abs(a.bias.numpy()).max() <= bound
    mha = nn.MultiheadAttention(16, 4)
    xb = math.sqrt(6 / (16 + 48))
    assert np.abs(mha.in_proj_weight.numpy()).max() <= xb
    assert np.all(mha.in_proj_bias.numpy() == 0) and np.all(mha.out_proj.bias.numpy() == 0)
    t = nn.Transformer(16, 4, 1, 1, 32)
    lin = t.encoder.layers[0].linear1.weight.numpy()
    assert np.abs(lin).max() <= math.sqrt(6 / (16 + 32)) and np.abs(lin).max() > 0.3
    e = nn.Embedding(100, 50, padding_idx=3).weight.numpy()
    assert np.all(e[3] == 0) and abs(e.std() - 1) < 0.05
    assert isinstance(nn.init.generator(), np.random.Generator)
    state = nn.init.get_rng_state()
    w = nn.Linear(3, 3).weight.numpy()
    nn.init.set_rng_state(state)
    np.testing.assert_array_equal(nn.Linear(3, 3).weight.numpy(), w)
    x = nn.Parameter(np.zeros((2, 3)))
    assert np.all(nn.init.ones_(x).numpy() == 1) and np.all(nn.init.zeros_(x).numpy() == 0)
    nn.init.normal_(x, 3.0, 0.0)
    assert np.all(x.numpy() == 3.0)
    nn.init.uniform_(x, -0.5, 0.5)
    assert np.abs(x.numpy()).max() <= 0.5
    nn.init.xavier_uniform_(x)
    assert np.abs(x.numpy()).max() <= math.sqrt(6 / 5)


def test_tfm_rs_manual_seed_reseeds_init():
    tfm_rs.manual_seed(11)
    a = nn.Linear(4, 4).weight.numpy()
    tfm_rs.manual_seed(11)
    np.testing.assert_array_equal(nn.Linear(4, 4).weight.numpy(), a)


# ------------------------------------------------------------------------------------------------
# simple layers

def test_linear_forward_and_gradients():
    m = nn.Linear(5, 3)
    x = randn((2, 4, 5), seed=2)
    check_grads(m, m, lambda sd, x: ref_linear(x, sd["weight"], sd["bias"]), [x], ["weight", "bias"])
    assert_close(m(tfm_rs.tensor(x)), ref_linear(x.astype(np.float64), *f64(m.state_dict()).values()))
    nb = nn.Linear(5, 3, bias=False)
    assert list(nb.state_dict()) == ["weight"] and nb.bias is None
    assert_close(nb(x), ref_linear(x.astype(np.float64), nb.state_dict()["weight"].astype(np.float64)))


def test_embedding_forward_and_padding_gradient():
    e = nn.Embedding(7, 4, padding_idx=-1)
    assert e.padding_idx == 6
    ids = np.array([[0, 6, 3], [3, 3, 1]])
    out = e(ids)
    w = e.weight.numpy()
    assert_close(out, w[ids])
    out.backward(np.ones(out.shape, np.float32))
    g = e.weight.grad.numpy()
    assert np.all(g[6] == 0) and np.all(g[3] == 3) and np.all(g[1] == 1) and np.all(g[2] == 0)
    f = nn.Embedding.from_pretrained(np.eye(3))
    assert not f.weight.requires_grad and np.all(f(np.array([2])).numpy() == [[0, 0, 1]])


@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_layer_norm(affine, bias):
    m = nn.LayerNorm(6, eps=1e-5, elementwise_affine=affine, bias=bias)
    if affine:
        m.weight.copy_(randn((6,), seed=1) + 1)
        if bias:
            m.bias.copy_(randn((6,), seed=2))
    names = [n for n, _ in m.named_parameters()]
    assert names == (["weight", "bias"] if bias else ["weight"] if affine else [])
    x = randn((3, 2, 6), seed=3, scale=2.0)
    check_grads(m, m, lambda sd, x: ref_layer_norm(x, sd.get("weight"), sd.get("bias")), [x], names)
    res = randn((3, 2, 6), seed=4)
    assert_close(m.add_forward(tfm_rs.tensor(x), tfm_rs.tensor(res)),
                 ref_layer_norm((x + res).astype(np.float64),
                                *[f64(m.state_dict()).get(k) for k in ("weight", "bias")]))


def test_activations():
    x = randn((3, 5), seed=5)
    assert_close(nn.ReLU()(tfm_rs.tensor(x)), ref_relu(x.astype(np.float64)))
    assert_close(nn.GELU()(tfm_rs.tensor(x)), ref_gelu(x.astype(np.float64)))
    t = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.astype(np.float64) ** 3))
    assert_close(nn.GELU("tanh")(tfm_rs.tensor(x)), 0.5 * x * (1 + t))
    with pytest.raises(tfm_rs.InvalidArgumentError):
        nn.GELU("sigmoid")


def test_dropout_train_and_eval():
    seed(0)
    d = nn.Dropout(0.5)
    x = tfm_rs.tensor(np.ones((64, 64), np.float32))
    y = d(x).numpy()
    assert set(np.unique(y)) == {0.0, 2.0} and 0.4 < (y == 0).mean() < 0.6
    d.eval()
    assert np.all(d(x).numpy() == 1)
    with pytest.raises(tfm_rs.InvalidArgumentError):
        nn.Dropout(1.5)


# ------------------------------------------------------------------------------------------------
# MultiheadAttention

def _mha(E=8, H=2, **kw):
    seed(3)
    m = nn.MultiheadAttention(E, H, **kw)
    if m.in_proj_bias is not None:  # non-zero biases exercise the bias split
        m.in_proj_bias.copy_(randn(m.in_proj_bias.shape, seed=9, scale=0.5))
        m.out_proj.bias.copy_(randn(m.out_proj.bias.shape, seed=10, scale=0.5))
    return m


@pytest.mark.parametrize("kind", ["self", "cross", "distinct"])
def test_mha_forward_weights_and_gradients(kind):
    m = _mha()
    n, L, S, E = 2, 3, 5, 8
    q = randn((n, L if kind != "self" else S, E), seed=1)
    k = randn((n, S, E), seed=2)
    v = randn((n, S, E), seed=3)
    sd = f64(m.state_dict())
    if kind == "self":
        x = tfm_rs.tensor(q)
        out, w = m(x, x, x)
        ref_out, ref_w = ref_mha(sd, "", q.astype(np.float64), q, q, 2)
    elif kind == "cross":
        kv = tfm_rs.tensor(k)
        out, w = m(tfm_rs.tensor(q), kv, kv)
        ref_out, ref_w = ref_mha(sd, "", q.astype(np.float64), k, k, 2)
    else:
        out, w = m(tfm_rs.tensor(q), tfm_rs.tensor(k), tfm_rs.tensor(v))
        ref_out, ref_w = ref_mha(sd, "", q.astype(np.float64), k, v, 2)
    assert_close(out, ref_out)
    assert_close(w, ref_w.mean(1))
    params = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    if kind == "self":
        check_grads(m, lambda x: m(x, x, x, need_weights=False)[0], lambda sd, x: ref_mha(sd, "", x, x, x, 2)[0],
                    [q], params)
    elif kind == "cross":
        check_grads(m, lambda q, k: m(q, k, k)[0], lambda sd, q, k: ref_mha(sd, "", q, k, k, 2)[0], [q, k], params)
    else:
        check_grads(m, lambda q, k, v: m(q, k, v, need_weights=False)[0],
                    lambda sd, q, k, v: ref_mha(sd, "", q, k, v, 2)[0], [q, k, v], params)


@pytest.mark.parametrize("case", ["bool_mask", "float_mask", "mask3d", "kpm", "kpm_float", "both", "causal",
                                  "causal_kpm", "bool_and_float"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_mha_masks(case, need_weights):
    m = _mha()
    n, L, E, H = 2, 4, 8, 2
    x = randn((n, L, E), seed=4)
    rng = np.random.default_rng(5)
    bool_mask = rng.random((L, L)) < 0.3
    bool_mask[:, 0] = False
    float_mask = rng.standard_normal((L, L)).astype(np.float32)
    float_mask[1, 2] = -np.inf
    kpm = padding_mask([4, 2], L)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    kw = {"bool_mask": dict(attn_mask=bool_mask), "float_mask": dict(attn_mask=float_mask),
          "mask3d": dict(attn_mask=rng.standard_normal((n * H, L, L)).astype(np.float32)),
          "kpm": dict(key_padding_mask=kpm),
          "kpm_float": dict(key_padding_mask=np.where(kpm, -np.inf, 0.5).astype(np.float32)),
          "both": dict(attn_mask=bool_mask, key_padding_mask=kpm),
          "bool_and_float": dict(attn_mask=float_mask, key_padding_mask=kpm),
          "causal": dict(is_causal=True),
          "causal_kpm": dict(is_causal=True, attn_mask=causal, key_padding_mask=kpm)}[case]
    ref_kw = dict(kw, attn_mask=None) if case == "causal_kpm" else kw  # the hinted mask is the causal one
    t = tfm_rs.tensor(x)
    out, w = m(t, t, t, need_weights=need_weights, average_attn_weights=False, **kw)
    ref_out, ref_w = ref_mha(f64(m.state_dict()), "", x.astype(np.float64), x, x, H, **ref_kw)
    assert_close(out, ref_out)
    if need_weights:
        assert w.shape == (n, H, L, L)
        assert_close(w, ref_w)
    else:
        assert w is None


def test_mha_mask_gradients():
    m = _mha()
    x = randn((2, 4, 8), seed=6)
    mask = np.triu(np.ones((4, 4), bool), 1)
    kpm = padding_mask([4, 3], 4)
    check_grads(m, lambda x: m(x, x, x, key_padding_mask=kpm, attn_mask=mask)[0],
                lambda sd, x: ref_mha(sd, "", x, x, x, 2, kpm, mask)[0], [x],
                ["in_proj_weight", "in_proj_bias", "out_proj.weight"])


def test_mha_kdim_vdim_and_unbatched():
    m = _mha(kdim=5, vdim=3)
    assert list(m.state_dict()) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
                                    "out_proj.weight", "out_proj.bias"]
    assert m.in_proj_weight is None and m.k_proj_weight.shape == (8, 5)
    q, k, v = randn((2, 3, 8), seed=1), randn((2, 4, 5), seed=2), randn((2, 4, 3), seed=3)
    check_grads(m, lambda q, k, v: m(q, k, v)[0], lambda sd, q, k, v: ref_mha(sd, "", q, k, v, 2)[0], [q, k, v],
                ["q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias"])
    # unbatched (L, E) inputs
    u = _mha()
    x = tfm_rs.tensor(q[0])
    out, w = u(x, x, x, key_padding_mask=np.array([False, False, True]))
    ref_out, ref_w = ref_mha(f64(u.state_dict()), "", q[:1].astype(np.float64), q[:1], q[:1], 2,
                             key_padding_mask=np.array([[False, False, True]]))
    assert out.shape == (3, 8) and w.shape == (3, 3)
    assert_close(out, ref_out[0])
    assert_close(w, ref_w.mean(1)[0])


def test_mha_no_bias_and_bad_arguments():
    m = nn.MultiheadAttention(8, 2, bias=False)
    assert list(m.state_dict()) == ["in_proj_weight", "out_proj.weight"]
    x = randn((1, 3, 8), seed=1)
    assert_close(m(x, x, x)[0], ref_mha(f64(m.state_dict()), "", x.astype(np.float64), x, x, 2)[0])
    with pytest.raises(tfm_rs.InvalidArgumentError, match=r"embed_dim \(10\) must be divisible by num_heads \(3\)"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="batch_first"):
        nn.MultiheadAttention(8, 2, batch_first=False)
    t = tfm_rs.tensor(randn((2, 3, 6)))
    with pytest.raises(tfm_rs.ShapeError, match="embed_dim=8"):
        m(t, t, t)
    y = tfm_rs.tensor(x)
    with pytest.raises(tfm_rs.ShapeError, match="key_padding_mask"):
        m(y, y, y, key_padding_mask=np.zeros((1, 4), bool))
    with pytest.raises(tfm_rs.ShapeError, match="attn_mask"):
        m(y, y, y, attn_mask=np.zeros((3, 4), bool))


# ------------------------------------------------------------------------------------------------
# Transformer layers

ACTS = {"relu": ref_relu, "gelu": ref_gelu, "silu": lambda x: x / (1.0 + np.exp(-x))}


def _perturb_norms(module, seed_=20):
    """LayerNorm weights away from 1/0 so that their gradients and roles are visible."""
    for i, (name, p) in enumerate(module.named_parameters()):
        if "norm" in name or name.endswith("bias"):
            base = 1.0 if name.endswith("weight") else 0.0
            p.copy_(base + randn(p.shape, seed=seed_ + i, scale=0.3))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_encoder_layer(norm_first, activation):
    seed(4)
    m = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, activation=activation, norm_first=norm_first)
    _perturb_norms(m)
    x = randn((2, 4, 8), seed=1)
    kpm = padding_mask([4, 3], 4)
    act = ACTS[activation]
    mask = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    out = m(tfm_rs.tensor(x), src_mask=mask, src_key_padding_mask=kpm)
    sd = f64(m.state_dict())
    assert_close(out, ref_encoder_layer(sd, "", x.astype(np.float64), 2, act, norm_first, mask, kpm))
    names = [n for n, _ in m.named_parameters()]
    check_grads(m, lambda x: m(x, src_key_padding_mask=kpm, is_causal=True),
                lambda sd, x: ref_encoder_layer(sd, "", x, 2, act, norm_first, kpm=kpm, is_causal=True), [x], names)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer(norm_first, activation):
    seed(5)
    m = nn.TransformerDecoderLayer(8, 2, dim_feedforward=16, dropout=0.0, activation=activation, norm_first=norm_first)
    _perturb_norms(m)
    tgt, mem = randn((2, 3, 8), seed=1), randn((2, 5, 8), seed=2)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(3)
    mem_kpm = padding_mask([5, 2], 5)
    act = ACTS[activation]
    names = [n for n, _ in m.named_parameters()]
    check_grads(m, lambda t, mm: m(t, mm, tgt_mask=tgt_mask, memory_key_padding_mask=mem_kpm),
                lambda sd, t, mm: ref_decoder_layer(sd, "", t, mm, 2, act, norm_first, tgt_mask=tgt_mask,
                                                    mem_kpm=mem_kpm),
                [tgt, mem], names)
    memory_mask = np.random.default_rng(2).random((3, 5)) < 0.3
    memory_mask[:, 0] = False
    tgt_kpm = padding_mask([3, 2], 3)
    out = m(tfm_rs.tensor(tgt), tfm_rs.tensor(mem), memory_mask=memory_mask, tgt_key_padding_mask=tgt_kpm,
            tgt_is_causal=True, tgt_mask=tgt_mask)
    assert_close(out, ref_decoder_layer(f64(m.state_dict()), "", tgt.astype(np.float64), mem, 2, act, norm_first,
                                        tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_kpm=tgt_kpm))


def test_custom_activation_module():
    m = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=nn.GELU())
    assert "activation" in dict(m.named_children())
    x = randn((1, 3, 8), seed=1)
    assert_close(m(tfm_rs.tensor(x)),
                 ref_encoder_layer(f64(m.state_dict()), "", x.astype(np.float64), 2, ref_gelu, False))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="activation"):
        nn.TransformerEncoderLayer(8, 2, activation="swish")


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_forward_with_masks(norm_first):
    seed(6)
    m = nn.Transformer(8, 2, 2, 2, 16, dropout=0.0, norm_first=norm_first)
    _perturb_norms(m)
    src, tgt = randn((2, 6, 8), seed=1), randn((2, 4, 8), seed=2)
    kw = dict(tgt_mask=m.generate_square_subsequent_mask(4), src_key_padding_mask=padding_mask([6, 3], 6),
              tgt_key_padding_mask=padding_mask([4, 3], 4), memory_key_padding_mask=padding_mask([6, 3], 6))
    out = m(tfm_rs.tensor(src), tfm_rs.tensor(tgt), **kw)
    expected = ref_transformer(f64(m.state_dict()), src.astype(np.float64), tgt.astype(np.float64), 2, 2, 2,
                               norm_first=norm_first, tgt_mask=kw["tgt_mask"], src_kpm=kw["src_key_padding_mask"],
                               tgt_kpm=kw["tgt_key_padding_mask"], mem_kpm=kw["memory_key_padding_mask"])
    assert out.shape == (2, 4, 8)
    assert_close(out, expected)
    src_mask = np.random.default_rng(3).standard_normal((6, 6)).astype(np.float32)
    memory_mask = np.random.default_rng(4).random((4, 6)) < 0.3
    memory_mask[:, 0] = False
    out = m(tfm_rs.tensor(src), tfm_rs.tensor(tgt), src_mask=src_mask, memory_mask=memory_mask)
    assert_close(out, ref_transformer(f64(m.state_dict()), src.astype(np.float64), tgt.astype(np.float64), 2, 2, 2,
                                      norm_first=norm_first, src_mask=src_mask, memory_mask=memory_mask))


def test_transformer_gradients():
    seed(7)
    m = nn.Transformer(8, 2, 1, 1, 8, dropout=0.0, activation="gelu")
    _perturb_norms(m)
    src, tgt = randn((1, 4, 8), seed=1), randn((1, 3, 8), seed=2)
    tgt_mask = m.generate_square_subsequent_mask(3)
    kpm = padding_mask([3], 4)
    names = ["encoder.layers.0.self_attn.in_proj_weight", "encoder.norm.weight", "encoder.layers.0.linear1.bias",
             "decoder.layers.0.multihead_attn.in_proj_weight", "decoder.layers.0.self_attn.out_proj.bias",
             "decoder.layers.0.norm3.weight", "decoder.norm.bias"]
    check_grads(m, lambda s, t: m(s, t, tgt_mask=tgt_mask, src_key_padding_mask=kpm, memory_key_padding_mask=kpm),
                lambda sd, s, t: ref_transformer(sd, s, t, 2, 1, 1, ref_gelu, tgt_mask=tgt_mask, src_kpm=kpm,
                                                 mem_kpm=kpm),
                [src, tgt], names)


def test_causal_mask_detection_and_generation():
    mask = nn.Transformer.generate_square_subsequent_mask(4)
    assert mask.dtype == np.float32 and mask.shape == (4, 4)
    assert np.all(np.isneginf(mask[np.triu_indices(4, 1)])) and np.all(mask[np.tril_indices(4)] == 0)
    seed(8)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2, nn.LayerNorm(8))
    x = tfm_rs.tensor(randn((2, 4, 8), seed=1))
    a = enc(x, mask=mask).numpy()
    b = enc(x, is_causal=True).numpy()
    c = enc(x, mask=np.triu(np.ones((4, 4), bool), 1)).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)
    assert not np.allclose(a, enc(x).numpy())


def test_train_eval_switches_dropout():
    seed(9)
    m = nn.Transformer(8, 2, 1, 1, 16, dropout=0.3)
    src, tgt = tfm_rs.tensor(randn((2, 5, 8), seed=1)), tfm_rs.tensor(randn((2, 4, 8), seed=2))
    assert m.training
    a, b = m(src, tgt).numpy(), m(src, tgt).numpy()
    assert not np.allclose(a, b)
    m.eval()
    assert not any(mod.training for mod in m.modules())
    c, d = m(src, tgt).numpy(), m(src, tgt).numpy()
    np.testing.assert_array_equal(c, d)
    expected = ref_transformer(f64(m.state_dict()), src.numpy().astype(np.float64), tgt.numpy().astype(np.float64),
                               2, 1, 1)
    assert_close(c, expected)
    m.train()
    assert not np.allclose(m(src, tgt).numpy(), c)


def test_bad_configurations_raise_at_construction():
    for build in (lambda: nn.TransformerEncoderLayer(10, 3), lambda: nn.TransformerDecoderLayer(10, 4),
                  lambda: nn.Transformer(d_model=12, nhead=5)):
        with pytest.raises(tfm_rs.InvalidArgumentError, match=r"d_model \(\d+\) must be divisible by nhead"):
            build()
    with pytest.raises(tfm_rs.InvalidArgumentError, match="batch_first"):
        nn.TransformerEncoderLayer(8, 2, batch_first=False)
    m = nn.Transformer(8, 2, 1, 1, 16)
    with pytest.raises(tfm_rs.ShapeError, match="batch number"):
        m(tfm_rs.tensor(randn((2, 3, 8))), tfm_rs.tensor(randn((3, 3, 8))))
    with pytest.raises(tfm_rs.ShapeError, match="d_model"):
        m(tfm_rs.tensor(randn((2, 3, 6))), tfm_rs.tensor(randn((2, 3, 6))))


def test_transformer_state_dict_keys():
    m = nn.Transformer(8, 2, 2, 1, 16)
    keys = list(m.state_dict())
    for k in ("encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.1.linear1.weight",
              "encoder.layers.0.norm1.weight",
              "decoder.layers.0.multihead_attn.in_proj_bias", "decoder.layers.0.multihead_attn.out_proj.weight",
              "decoder.layers.0.norm3.bias", "encoder.norm.weight", "decoder.norm.bias"):
        assert k in keys, k
    assert not any(k.startswith("decoder.layers.1") for k in keys)
    assert len(keys) == 2 * 12 + 2 + 18 + 2
    assert m.state_dict()["encoder.layers.0.self_attn.in_proj_weight"].shape == (24, 8)


# ------------------------------------------------------------------------------------------------
# positional encodings

def test_sinusoidal_positional_encoding():
    m = nn.SinusoidalPositionalEncoding(6, max_len=10)
    pos = np.arange(10)[:, None].astype(np.float64)
    i = np.arange(3)[None, :]
    ref = np.zeros((10, 6))
    ref[:, 0::2] = np.sin(pos / 10000 ** (2 * i / 6))
    ref[:, 1::2] = np.cos(pos / 10000 ** (2 * i / 6))
    x = randn((2, 7, 6), seed=1)
    assert_close(m(tfm_rs.tensor(x)), x + ref[:7])
    odd = nn.SinusoidalPositionalEncoding(5, max_len=4).pe.numpy()
    assert odd.shape == (4, 5) and np.allclose(odd[1, 0], math.sin(1.0))
    t = leaf(x)
    m(t).sum().backward()
    assert np.all(t.grad.numpy() == 1)


@pytest.mark.parametrize("make", [lambda: nn.SinusoidalPositionalEncoding(4, max_len=6),
                                  lambda: nn.LearnedPositionalEmbedding(6, 4)])
def test_positions_longer_than_table_raise(make):
    m = make()
    with pytest.raises(tfm_rs.ShapeError, match=r"T=7 exceeds max_len=6"):
        m(tfm_rs.tensor(randn((1, 7, 4))))
    with pytest.raises(tfm_rs.ShapeError):
        m(tfm_rs.tensor(randn((1, 3, 5))))
    assert m(tfm_rs.tensor(randn((1, 6, 4)))).shape == (1, 6, 4)


def test_learned_positional_embedding_gradients():
    m = nn.LearnedPositionalEmbedding(5, 4)
    assert list(m.state_dict()) == ["weight"]
    x = randn((2, 3, 4), seed=2)
    check_grads(m, m, lambda sd, x: x + sd["weight"][:3], [x], ["weight"])
    assert np.all(m.weight.grad.numpy()[3:] == 0)


# ------------------------------------------------------------------------------------------------
# end to end: modules + optimizer

def test_modules_train_with_adam():
    from tfm_rs.optim import Adam

    seed(10)
    emb = nn.Embedding(6, 8)
    pos = nn.SinusoidalPositionalEncoding(8, 16)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), 1)
    head = nn.Linear(8, 6)
    model = nn.ModuleList([emb, pos, enc, head])
    opt = Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(30):
        ids = rng.integers(0, 6, (8, 5))
        logits = head(enc(pos(emb(ids))))
        loss = tfm_rs.functional.cross_entropy(logits.reshape(-1, 6), ids.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # copying the input is easy


def test_forward_pre_hooks_args_kwargs_order_and_removal():
    """PyTorch's semantics: a result replaces the positional args (or, ``with_kwargs``, both);
    ``prepend`` runs first; ``remove()`` unregisters."""
    lin = nn.Linear(3, 2)
    calls = []
    x, y = randn((4, 3), seed=1), randn((4, 3), seed=2)

    def swap(module, args):
        calls.append("swap")
        return (tfm_rs.tensor(y),)

    def see(module, args, kwargs):
        calls.append(("see", sorted(kwargs)))

    h1 = lin.register_forward_pre_hook(swap)
    h2 = lin.register_forward_pre_hook(see, prepend=True, with_kwargs=True)
    np.testing.assert_array_equal(lin(tfm_rs.tensor(x)).numpy(), lin.forward(tfm_rs.tensor(y)).numpy())
    assert calls == [("see", []), "swap"]
    h1.remove()
    h2.remove()
    np.testing.assert_array_equal(lin(tfm_rs.tensor(x)).numpy(), lin.forward(tfm_rs.tensor(x)).numpy())
    assert len(calls) == 2

    mha = nn.MultiheadAttention(4, 2)
    seen = {}
    mha.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    q = tfm_rs.tensor(randn((1, 3, 4)))
    mha(q, q, q, need_weights=False, is_causal=True, attn_mask=np.triu(np.ones((3, 3), bool), 1))
    assert seen["is_causal"] is True and seen["need_weights"] is False
