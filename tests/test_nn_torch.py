"""tfm_rs.nn (float32) against torch.nn computing in float64: the same weights, loaded strictly
from torch's ``state_dict``, give the same outputs and gradients for inputs and parameters
(tolerances below).

torch is a test reference, not a dependency of tfm_rs (``torch_ref.require_torch``: skipped
where it is not installed, failed under CI). The reference runs in float64 because torch's own
float32 is not exact enough to judge by: on the two-layer post-LN ``nn.Transformer`` its float32
gradients were seen 3% away from its float64 ones. Torch runs with gradients enabled throughout,
which keeps it off its inference fast paths (whose nested tensors zero padded positions).
"""

from __future__ import annotations

import numpy as np
import pytest

from torch_ref import require_torch

torch = require_torch()

import tfm_rs  # noqa: E402
from tfm_rs import nn  # noqa: E402
from helpers import assert_close, leaf, randn  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# float32 tfm_rs against the float64 reference, values and gradients of order 1 (widths 16-32, two
# layers at most). Observed largest errors (AVX-512, AVX2 and generic paths): outputs 1.3e-6,
# gradients 2.1e-6 absolute; at most 0.15 (outputs) and 0.24 (gradients) of these bounds.
OUT_RTOL, OUT_ATOL = 1e-5, 2e-6
GRAD_RTOL, GRAD_ATOL = 1e-5, 5e-6


def ref(a):
    """A NumPy input or mask as a torch tensor for the float64 reference (bool masks stay bool)."""
    a = np.asarray(a)
    return torch.from_numpy(a if a.dtype == np.bool_ else a.astype(np.float64))


def to_ours(torch_module, ours):
    """Loads torch's float32 state_dict into ours (strict) after checking keys, order and shapes
    match, then turns torch's module to float64: the reference holds exactly our weights."""
    sd = {k: v.detach().numpy().copy() for k, v in torch_module.state_dict().items()}
    own = ours.state_dict()
    assert list(own) == list(sd)
    assert all(own[k].shape == sd[k].shape for k in sd)
    ours.load_state_dict(sd)
    torch_module.double()
    return ours


def randomize(torch_module, seed=0):
    """Non-trivial biases and LayerNorm weights (torch starts them at 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in torch_module.named_parameters():
            if p.ndim == 1:
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
    return torch_module


def compare(torch_run, our_run, torch_module, ours, inputs, upstream_seed=3):
    """Outputs, input gradients and parameter gradients of ``sum(out * upstream)``."""
    t_in = [ref(x).requires_grad_() for x in inputs]
    o_in = [leaf(x) for x in inputs]
    t_out = torch_run(*t_in)
    o_out = our_run(*o_in)
    assert t_out.dtype == torch.float64 and o_out.shape == tuple(t_out.shape)
    assert_close(o_out, t_out.detach().numpy(), rtol=OUT_RTOL, atol=OUT_ATOL, what="output")
    up = randn(tuple(t_out.shape), seed=upstream_seed)
    t_out.backward(ref(up))
    o_out.backward(up)
    for i, (t, o) in enumerate(zip(t_in, o_in)):
        assert_close(o.grad, t.grad.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"gradient of input {i}")
    ours_p = dict(ours.named_parameters())
    for name, p in torch_module.named_parameters():
        assert_close(ours_p[name].grad, p.grad.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"gradient of {name}")


def padding(lengths, s):
    return np.arange(s)[None, :] >= np.asarray(lengths)[:, None]


def test_reprs_match_torch():
    for ours, theirs in [(nn.Linear(3, 2), torch.nn.Linear(3, 2)), (nn.LayerNorm(8), torch.nn.LayerNorm(8)),
                         (nn.RMSNorm(8), torch.nn.RMSNorm(8)), (nn.RMSNorm((2, 3), 1e-6, False),
                                                                torch.nn.RMSNorm((2, 3), 1e-6, False)),
                         (nn.Dropout(0.1), torch.nn.Dropout(0.1)), (nn.ReLU(), torch.nn.ReLU()),
                         (nn.GELU("tanh"), torch.nn.GELU("tanh")),
                         (nn.Embedding(10, 4, padding_idx=2), torch.nn.Embedding(10, 4, padding_idx=2)),
                         (nn.Sequential(nn.Linear(2, 2), nn.ReLU()),
                          torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))]:
        assert repr(ours) == repr(theirs)


def test_state_dict_goes_back_to_torch():
    t = torch.nn.Transformer(16, 4, 1, 1, 32, dropout=0.0, batch_first=True)
    ours = nn.Transformer(16, 4, 1, 1, 32, dropout=0.0)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), ours.state_dict()[k])


@pytest.mark.parametrize("normalized_shape,eps", [((1,), None), ((17,), None), ((127,), 1e-6), ((3, 5), 1e-5)])
def test_rms_norm(normalized_shape, eps):
    """Mean far from zero, so that a norm that centred would differ."""
    t = randomize(torch.nn.RMSNorm(normalized_shape, eps=eps))
    ours = to_ours(t, nn.RMSNorm(normalized_shape, eps=eps))
    x = randn((3, 2) + normalized_shape, seed=1) + 1.5
    compare(t, ours, t, ours, [x])


@pytest.mark.parametrize("kind", ["self", "cross", "kvdim"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention(kind, need_weights):
    torch.manual_seed(0)
    kdim = vdim = None if kind != "kvdim" else 6
    t = randomize(torch.nn.MultiheadAttention(16, 4, batch_first=True, kdim=kdim, vdim=vdim))
    ours = to_ours(t, nn.MultiheadAttention(16, 4, kdim=kdim, vdim=vdim))
    L, S = (7, 7) if kind == "self" else (5, 7)
    q = randn((2, L, 16), seed=1)
    kv = randn((2, S, kdim or 16), seed=2)
    rng = np.random.default_rng(0)
    mask = rng.random((L, S)) < 0.3
    mask[:, 0] = False
    kpm = padding([S, 4], S)
    kw = dict(attn_mask=mask, key_padding_mask=kpm, need_weights=need_weights)
    if kind == "self":
        def torch_run(x):
            return t(x, x, x, attn_mask=ref(mask), key_padding_mask=ref(kpm), need_weights=need_weights)[0]

        def our_run(x):
            return ours(x, x, x, **kw)[0]

        compare(torch_run, our_run, t, ours, [q])
    else:
        v = randn((2, S, vdim or 16), seed=3)

        def torch_run(q, k, v):
            return t(q, k, v, attn_mask=ref(mask), key_padding_mask=ref(kpm), need_weights=need_weights)[0]

        def our_run(q, k, v):
            return ours(q, k, v, **kw)[0]

        compare(torch_run, our_run, t, ours, [q, kv, v])


@pytest.mark.parametrize("average", [True, False])
def test_attention_weights_and_float_masks(average):
    torch.manual_seed(1)
    t = randomize(torch.nn.MultiheadAttention(16, 4, batch_first=True))
    ours = to_ours(t, nn.MultiheadAttention(16, 4))
    x = randn((3, 6, 16), seed=4)
    fmask = randn((3 * 4, 6, 6), seed=5)
    kpm = np.where(padding([6, 5, 2], 6), -np.inf, 0.0).astype(np.float32)
    tx = ref(x)
    to, tw = t(tx, tx, tx, attn_mask=ref(fmask), key_padding_mask=ref(kpm),
               average_attn_weights=average)
    ox = tfm_rs.tensor(x)
    oo, ow = ours(ox, ox, ox, attn_mask=fmask, key_padding_mask=kpm, average_attn_weights=average)
    assert_close(oo, to.detach().numpy(), rtol=OUT_RTOL, atol=OUT_ATOL)
    assert ow.shape == tuple(tw.shape)
    assert_close(ow, tw.detach().numpy(), rtol=OUT_RTOL, atol=OUT_ATOL)
    # causal hint with the causal mask, as torch requires
    cm = nn.Transformer.generate_square_subsequent_mask(6)
    to = t(tx, tx, tx, attn_mask=ref(cm), is_causal=True, need_weights=False)[0]
    oo = ours(ox, ox, ox, attn_mask=cm, is_causal=True, need_weights=False)[0]
    assert_close(oo, to.detach().numpy(), rtol=OUT_RTOL, atol=OUT_ATOL)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer(norm_first, activation):
    torch.manual_seed(2)
    t = randomize(torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation, batch_first=True,
                                                   norm_first=norm_first)).eval()
    ours = to_ours(t, nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation,
                                                 norm_first=norm_first)).eval()
    x = randn((2, 7, 16), seed=6)
    kpm = padding([7, 4], 7)
    cm = nn.Transformer.generate_square_subsequent_mask(7)
    compare(lambda x: t(x, src_mask=ref(cm), src_key_padding_mask=ref(kpm), is_causal=True),
            lambda x: ours(x, src_mask=cm, src_key_padding_mask=kpm, is_causal=True), t, ours, [x])


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer(norm_first):
    torch.manual_seed(3)
    t = randomize(torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True,
                                                   norm_first=norm_first)).eval()
    ours = to_ours(t, nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first)).eval()
    tgt, mem = randn((2, 5, 16), seed=7), randn((2, 8, 16), seed=8)
    tm = nn.Transformer.generate_square_subsequent_mask(5)
    mm = randn((5, 8), seed=9)
    mkpm = padding([8, 3], 8)
    compare(lambda a, b: t(a, b, tgt_mask=ref(tm), memory_mask=ref(mm),
                           memory_key_padding_mask=ref(np.where(mkpm, -np.inf, 0.0).astype(np.float32))),
            lambda a, b: ours(a, b, tgt_mask=tm, memory_mask=mm,
                              memory_key_padding_mask=np.where(mkpm, -np.inf, 0.0).astype(np.float32)),
            t, ours, [tgt, mem])


@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")])
def test_transformer(norm_first, activation):
    torch.manual_seed(4)
    t = randomize(torch.nn.Transformer(16, 4, 2, 2, 32, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first)).eval()
    ours = to_ours(t, nn.Transformer(16, 4, 2, 2, 32, dropout=0.0, activation=activation, norm_first=norm_first)).eval()
    src, tgt = randn((3, 7, 16), seed=10), randn((3, 5, 16), seed=11)
    skpm, tkpm = padding([7, 5, 3], 7), padding([5, 5, 2], 5)
    tm = nn.Transformer.generate_square_subsequent_mask(5)
    np.testing.assert_array_equal(tm, torch.nn.Transformer.generate_square_subsequent_mask(5).numpy())

    def torch_run(s, g):
        return t(s, g, tgt_mask=ref(tm), src_key_padding_mask=ref(skpm),
                 tgt_key_padding_mask=ref(tkpm), memory_key_padding_mask=ref(skpm),
                 tgt_is_causal=True)

    def our_run(s, g):
        return ours(s, g, tgt_mask=tm, src_key_padding_mask=skpm, tgt_key_padding_mask=tkpm,
                    memory_key_padding_mask=skpm, tgt_is_causal=True)

    compare(torch_run, our_run, t, ours, [src, tgt])


def test_encoder_stack_with_causal_mask_detection():
    torch.manual_seed(5)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    t = randomize(torch.nn.TransformerEncoder(layer, 3, norm=torch.nn.LayerNorm(16), enable_nested_tensor=False)).eval()
    ours = to_ours(t, nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0), 3,
                                            nn.LayerNorm(16))).eval()
    cm = nn.Transformer.generate_square_subsequent_mask(6)
    compare(lambda x: t(x, mask=ref(cm)), lambda x: ours(x, mask=cm), t, ours, [randn((2, 6, 16), seed=12)])


def test_batch_norm1d_matches_torch_over_training_steps() -> None:
    """BatchNorm1d from one state_dict: outputs, input and parameter gradients and running
    statistics over several training steps, then eval outputs, against torch in float64."""
    for shape, momentum in (((6, 17), 0.1), ((5, 3, 7), None)):
        c = shape[1]
        ours = nn.BatchNorm1d(c, momentum=momentum)
        ref = torch.nn.BatchNorm1d(c, momentum=momentum).double()
        rng = np.random.default_rng(c)
        ours.weight.copy_(rng.standard_normal(c).astype(np.float32))
        ours.bias.copy_(rng.standard_normal(c).astype(np.float32))
        ref.load_state_dict({k: torch.tensor(v, dtype=torch.float64) if k != "num_batches_tracked"
                             else torch.tensor(int(v)) for k, v in ours.state_dict().items()})
        for step in range(3):
            x = (rng.standard_normal(shape) * (step + 1) + step).astype(np.float32)
            g = rng.standard_normal(shape).astype(np.float32)
            xt = tfm_rs.tensor(x, requires_grad=True)
            y = ours(xt)
            y.backward(g)
            xr = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            yr = ref(xr)
            yr.backward(torch.tensor(g, dtype=torch.float64))
            np.testing.assert_allclose(y.numpy(), yr.detach().numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(xt.grad.numpy(), xr.grad.numpy(), rtol=1e-4, atol=1e-5)
            for name in ("weight", "bias"):
                np.testing.assert_allclose(getattr(ours, name).grad.numpy(),
                                           getattr(ref, name).grad.numpy(), rtol=1e-4, atol=1e-5)
            ours.zero_grad()
            ref.zero_grad()
            for name in ("running_mean", "running_var"):
                np.testing.assert_allclose(getattr(ours, name).numpy(), getattr(ref, name).numpy(),
                                           rtol=1e-5, atol=1e-6)
        assert int(ours.num_batches_tracked.numpy()) == int(ref.num_batches_tracked)
        ours.eval()
        ref.eval()
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ours(x).numpy(), ref(torch.tensor(x, dtype=torch.float64)).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
