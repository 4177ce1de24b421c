"""Attention kinds per layer (tfm_rs.nn.attention_kind): parsing, each kind in MultiheadAttention
against a float64 NumPy reference, the models' per-layer choice through configs and checkpoints,
and the refusals (no silent fallback)."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
from tfm_rs import masks, nn
from tfm_rs.models import GPT, BertEncoder, Seq2SeqTransformer
from tfm_rs.nn.attention_kind import AttentionKind, attention_kinds

# float32 kernels against float64 references: a few ulps through two projections and a softmax.
RTOL, ATOL = 2e-5, 2e-6


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("spec, canonical", [
    ("dense", "dense"),
    ("window(left=4)", "window(left=4, right=0, global=0)"),
    (" window( left = 3 , global=2 ) ", "window(left=3, right=0, global=2)"),
    ("block_sparse(block=4, random=1)", "block_sparse(block=4, window=1, global=1, random=1, seed=0)"),
    ("linear", "linear"),
    ("lsh(bucket_size=8)", "lsh(n_hashes=4, bucket_size=8, seed=0)"),
])
def test_kinds_parse_to_one_canonical_string(spec, canonical):
    kind = AttentionKind.parse(spec)
    assert str(kind) == canonical
    assert AttentionKind.parse(str(kind)) == kind


@pytest.mark.parametrize("spec, match", [
    ("sparse", "unknown attention kind"),
    ("window", "needs left"),
    ("window(left=-1)", "must be ≥ 0"),
    ("window(left=x)", "must be an integer"),
    ("window(width=3)", "not one of window's parameters"),
    ("linear(left=2)", "not one of linear's parameters"),
    ("block_sparse(block=0)", "block_size"),
    (3, "is a string"),
])
def test_bad_kinds_are_named(spec, match):
    with pytest.raises(tfm_rs.InvalidArgumentError, match=match):
        AttentionKind.parse(spec)


def test_per_layer_lists_and_semicolons():
    kinds = attention_kinds("window(left=2); linear", 2, "T")
    assert [str(k) for k in kinds] == ["window(left=2, right=0, global=0)", "linear"]
    assert attention_kinds("linear", 3, "T") == [AttentionKind.parse("linear")] * 3
    with pytest.raises(tfm_rs.InvalidArgumentError, match="2 kinds for 3 layers"):
        attention_kinds(["dense", "linear"], 3, "T")


def mha_reference(x, mha, allowed=None, causal=False, kind=None):
    """float64 multi-head self-attention of ``x (N, T, E)`` with ``mha``'s weights: dense with the
    boolean ``allowed (T, T)`` (True = takes part), or linear attention (φ = elu + 1)."""
    x = x.astype(np.float64)
    w, b = mha.in_proj_weight.numpy().astype(np.float64), mha.in_proj_bias.numpy().astype(np.float64)
    n, t, e = x.shape
    h, dh = mha.num_heads, mha.head_dim
    qkv = (x @ w.T + b).reshape(n, t, 3, h, dh).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    if kind == "linear":
        phi = lambda z: np.where(z > 0, z + 1.0, np.exp(z))  # noqa: E731
        fq, fk = phi(q), phi(k)
        if causal:
            kv = np.cumsum(fk[..., :, None] * v[..., None, :], axis=2)
            z = np.cumsum(fk, axis=2)
            y = np.einsum("nhte,nhtef->nhtf", fq, kv) / np.einsum("nhte,nhte->nht", fq, z)[..., None]
        else:
            y = (fq @ (fk.transpose(0, 1, 3, 2) @ v)) / (fq @ fk.sum(2)[..., None])
    else:
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
        ok = np.ones((t, t), bool) if allowed is None else allowed
        if causal:
            ok = ok & np.tril(np.ones((t, t), bool))
        s = np.where(ok, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        y = (p / p.sum(-1, keepdims=True)) @ v
    y = y.transpose(0, 2, 1, 3).reshape(n, t, h * dh)
    return y @ mha.out_proj.weight.numpy().T.astype(np.float64) + mha.out_proj.bias.numpy()


def mha(kind, e=12, heads=3, seed=0):
    tfm_rs.manual_seed(seed)
    m = nn.MultiheadAttention(e, heads, attention=kind)
    m.in_proj_bias.data = rng(seed + 1).standard_normal(3 * e).astype(np.float32) * 0.1
    return m


@pytest.mark.parametrize("t", [1, 3, 17, 40])
@pytest.mark.parametrize("causal", [False, True])
def test_window_with_globals_equals_the_dense_reference(t, causal):
    m = mha("window(left=3, right=2, global=2)")
    x = rng(t).standard_normal((2, t, 12)).astype(np.float32)
    allowed = (masks.sliding_window(3, 2) | masks.global_tokens(range(min(2, t)))).to_dense(t, t).reshape(t, t)
    want = mha_reference(x, m, allowed, causal)
    got = m(x, x, x, need_weights=False, is_causal=causal)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("t", [1, 3, 17, 127])
def test_block_sparse_equals_the_dense_reference(t):
    kind = AttentionKind.parse("block_sparse(block=4, window=1, global=1, random=1, seed=3)")
    m = mha(kind)
    x = rng(t).standard_normal((2, t, 12)).astype(np.float32)
    allowed = kind.mask().to_dense(t, t).reshape(t, t)
    got = m(x, x, x, need_weights=False)[0].numpy()
    np.testing.assert_allclose(got, mha_reference(x, m, allowed), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("t", [1, 3, 17, 64])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_kind_equals_the_float64_linear_attention(t, causal):
    m = mha("linear")
    x = rng(t).standard_normal((2, t, 12)).astype(np.float32)
    got = m(x, x, x, need_weights=False, is_causal=causal)[0].numpy()
    np.testing.assert_allclose(got, mha_reference(x, m, causal=causal, kind="linear"), rtol=RTOL, atol=ATOL)


def test_lsh_kind_shares_queries_and_keys():
    m = mha("lsh(n_hashes=2, bucket_size=4, seed=5)")
    x = rng(1).standard_normal((2, 16, 12)).astype(np.float32)
    q, _, v = m._in_projection(tfm_rs.tensor(x), tfm_rs.tensor(x), tfm_rs.tensor(x))
    y = tfm_rs.functional.lsh_attention(q, v, n_hashes=2, bucket_size=4, seed=5)
    want = m.out_proj(y.transpose(1, 2).reshape(2, 16, 12)).numpy()
    x_t = tfm_rs.tensor(x)
    np.testing.assert_array_equal(m(x_t, x_t, x_t, need_weights=False)[0].numpy(), want)
    # Key padding (N, S) reaches every head (the op's own tests check what it does).
    pad = np.zeros((2, 16), bool)
    pad[1, 11:] = True
    y = tfm_rs.functional.lsh_attention(q, v, n_hashes=2, bucket_size=4, seed=5, key_padding_mask=pad[:, None, :])
    want_pad = m.out_proj(y.transpose(1, 2).reshape(2, 16, 12)).numpy()
    got = m(x_t, x_t, x_t, key_padding_mask=pad, need_weights=False)[0].numpy()
    np.testing.assert_array_equal(got, want_pad)
    assert np.array_equal(got[0], want[0]) and not np.allclose(got[1], want[1])


@pytest.mark.parametrize("kind", ["linear", "lsh(bucket_size=4)"])
def test_operator_kinds_refuse_what_they_cannot_do(kind):
    m = mha(kind)
    x = rng().standard_normal((2, 8, 12)).astype(np.float32)
    pad = np.zeros((2, 8), bool)
    pad[1, 6:] = True
    with pytest.raises(tfm_rs.InvalidArgumentError, match="need_weights"):
        m(x, x, x)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="attn_mask"):
        m(x, x, x, attn_mask=np.zeros((8, 8), bool), need_weights=False)
    # No padding anywhere is no padding: accepted.
    m(x, x, x, key_padding_mask=np.zeros((2, 8), bool), need_weights=False)


def test_window_kind_refuses_a_dense_extra_mask_but_takes_a_structured_one():
    m = mha("window(left=2)")
    x = rng().standard_normal((1, 9, 12)).astype(np.float32)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="structured"):
        m(x, x, x, attn_mask=np.zeros((9, 9), bool), need_weights=False)
    got = m(x, x, x, attn_mask=masks.key_padding([7]), need_weights=False)[0].numpy()
    allowed = (masks.sliding_window(2, 0) & masks.key_padding([7])).to_dense(9, 9).reshape(9, 9)
    np.testing.assert_allclose(got, mha_reference(x, m, allowed), rtol=RTOL, atol=ATOL)


def same_weights(a, b):
    b.load_state_dict(a.state_dict())
    b.eval()
    a.eval()


def test_gpt_per_layer_kinds_equal_dense_where_they_cover_everything():
    """A window as long as the sequence and a block-sparse pattern of one block are the causal
    mask: the GPT's logits equal a dense GPT's with the same weights."""
    dense = GPT(40, d_model=24, nhead=4, num_layers=2, max_len=16, dropout=0.0)
    kinds = GPT(40, d_model=24, nhead=4, num_layers=2, max_len=16, dropout=0.0,
                attention=["window(left=16)", "block_sparse(block=16, global=0, random=0)"])
    same_weights(dense, kinds)
    ids = rng().integers(0, 40, (2, 13))
    np.testing.assert_allclose(kinds(ids).numpy(), dense(ids).numpy(), rtol=1e-5, atol=1e-5)
    assert kinds.config["attention"] == ("window(left=16, right=0, global=0); "
                                         "block_sparse(block=16, window=1, global=0, random=0, seed=0)")
    assert "attention" not in dense.config  # older configurations still match


@pytest.mark.parametrize("cls, kw", [
    (GPT, dict(vocab_size=30, num_layers=2, max_len=32)),
    (BertEncoder, dict(vocab_size=30, num_layers=2, max_len=32, dim_feedforward=32)),
    (Seq2SeqTransformer, dict(src_vocab_size=30, tgt_vocab_size=30, num_encoder_layers=2,
                              num_decoder_layers=1, dim_feedforward=32, max_len=32)),
])
def test_kinds_survive_config_and_checkpoint(cls, kw, tmp_path):
    """The kinds are part of the configuration a checkpoint stores."""
    model = cls(d_model=16, nhead=2, dropout=0.0, attention="window(left=4, global=1); linear", **kw)
    tfm_rs.checkpoint.save_checkpoint(tmp_path / "ckpt", model.state_dict(), model.config)
    ckpt = tfm_rs.checkpoint.load_checkpoint(tmp_path / "ckpt")
    again = cls.from_config(ckpt.config)
    again.load_state_dict(ckpt.model_state)
    layers = again.transformer.encoder.layers if cls is Seq2SeqTransformer else again.layers
    assert [str(layer.self_attn.attention) for layer in layers] == ["window(left=4, right=0, global=1)", "linear"]


def test_shared_layers_take_one_kind():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="one attention kind"):
        GPT(30, d_model=16, nhead=2, num_layers=2, share_layers=True, attention="dense; linear")


@pytest.mark.parametrize("kind", ["lsh(bucket_size=4)", "block_sparse(block=4)"])
def test_native_decoder_refuses_kinds_without_an_incremental_form(kind):
    model = GPT(30, d_model=16, nhead=2, num_layers=1, max_len=16, attention=kind)
    with pytest.raises(tfm_rs.InvalidArgumentError, match=kind.split("(")[0]):
        model.generate(np.array([[1, 2]]), max_new_tokens=2)


def test_seq2seq_with_a_window_encoder_translates_with_the_dense_decoder():
    model = Seq2SeqTransformer(30, 30, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=32, max_len=32, dropout=0.0, attention="window(left=2, right=2)")
    model.eval()
    src = rng().integers(3, 30, (2, 9))
    out = model.generate(src, max_new_tokens=4)
    assert np.asarray(out.sequences).shape[0] == 2


@pytest.mark.parametrize("kind", ["seq2seq", "lm"])
def test_cli_config_and_flag_set_the_kinds(kind):
    from tfm_rs import config as cfg_lib
    from tfm_rs.runs import Data, build_model

    text = '[model]\npreset = "tiny"\nlayers = 2\nattention = "window(left=8, global=1); linear"\n'
    cfg = cfg_lib.resolve(cfg_lib.loads(text))
    assert 'attention = "window(left=8, global=1); linear"' in cfg_lib.dumps(cfg)
    data = Data(kind=kind, tokenizer=None, train=None, src_vocab_size=40, tgt_vocab_size=40)
    model = build_model(cfg, data)
    assert model.config["attention"] == "window(left=8, right=0, global=1); linear"
    parser = __import__("argparse").ArgumentParser()
    cfg_lib.add_flags(parser)
    assert parser.parse_args(["--attention", "linear"]).cfg_attention == "linear"


@pytest.mark.parametrize("causal", [False, True])
def test_linear_kind_leaves_padding_keys_out(causal):
    """Key padding in linear attention equals the float64 reference without those keys: each
    sequence computed alone at its own length gives the same outputs at its real positions."""
    m = mha("linear")
    x = rng(5).standard_normal((3, 11, 12)).astype(np.float32)
    lengths = [11, 7, 1]
    pad = np.arange(11)[None, :] >= np.array(lengths)[:, None]
    got = m(x, x, x, key_padding_mask=pad, need_weights=False, is_causal=causal)[0].numpy()
    for b, n in enumerate(lengths):
        want = mha_reference(x[b:b + 1, :n], m, causal=causal, kind="linear")[0]
        np.testing.assert_allclose(got[b, :n], want, rtol=RTOL, atol=ATOL)


def test_functional_linear_attention_padding_shapes_and_types():
    q = rng().standard_normal((2, 3, 5, 4)).astype(np.float32)
    with pytest.raises(tfm_rs.ShapeError, match="does not broadcast"):
        tfm_rs.functional.linear_attention(q, q, q, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="boolean"):
        tfm_rs.functional.linear_attention(q, q, q, key_padding_mask=np.zeros((2, 1, 5)))
    out = tfm_rs.functional.linear_attention(q, q, q, key_padding_mask=np.ones((2, 1, 5), bool))
    assert not out.numpy().any()  # no key left: zeros, as a fully masked softmax row


def test_hugging_face_layouts_refuse_non_dense_attention(tmp_path):
    """transformers has no place for the kinds: saving in its layout is refused by name, not lossy."""
    model = GPT(30, d_model=16, nhead=2, num_layers=1, max_len=16, attention="window(left=4)")
    with pytest.raises(tfm_rs.TfmError, match="attention="):
        model.save_pretrained(tmp_path / "gpt2")
