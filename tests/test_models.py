"""Models: shapes, learning, tied weights, masks from pad_id, causality, BERT masking, GPT,
configs and checkpoints, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tfm_rs
from tfm_rs import IndexOutOfRangeError, InvalidArgumentError, ShapeError
from tfm_rs.checkpoint import IncompatibleCheckpointError, save_checkpoint
from tfm_rs.models import (
    GPT,
    BertEncoder,
    Seq2SeqTransformer,
    load_model_state,
    model_from_checkpoint,
    preset_config,
    transformer_base,
    transformer_small,
    transformer_tiny,
)

V = 40


def tiny(**kw):
    tfm_rs.manual_seed(0)
    return transformer_tiny(V, **kw)


def ids(shape, seed=0, lo=3, hi=V):
    return np.random.default_rng(seed).integers(lo, hi, shape)


# ------------------------------------------------------------------------------------- seq2seq

def test_forward_shapes_and_encode_decode():
    m = tiny().eval()
    src, tgt = ids((3, 7)), ids((3, 5), 1)
    logits = m(src, tgt)
    assert logits.shape == (3, 5, V)
    memory = m.encode(src)
    assert memory.shape == (3, 7, 32)
    dec = m.decode(tgt, memory, src == m.pad_id)
    np.testing.assert_allclose(dec.numpy(), logits.numpy(), rtol=1e-5, atol=1e-5)
    assert m(src[0], tgt[0]).shape == (1, 5, V)  # 1-D ids are one sequence


def test_presets():
    base = preset_config("base", 100)
    assert (base["d_model"], base["nhead"], base["dim_feedforward"], base["num_encoder_layers"], base["dropout"]) == \
        (512, 8, 2048, 6, 0.1)
    big = preset_config("big", 100)
    assert (big["d_model"], big["nhead"], big["dim_feedforward"], big["num_decoder_layers"], big["dropout"]) == \
        (1024, 16, 4096, 6, 0.3)
    small = preset_config("small", 100)
    assert (small["d_model"], small["nhead"], small["dim_feedforward"], small["num_encoder_layers"],
            small["num_decoder_layers"]) == (256, 4, 1024, 3, 3)
    m = transformer_small(100, share_embeddings=True)
    assert m.config["d_model"] == 256 and len(m.transformer.encoder.layers) == 3
    with pytest.raises(KeyError):
        preset_config("huge")


@pytest.mark.slow
def test_base_preset_parameter_count():
    # Paper: ~65M parameters for base with a shared 37k vocabulary.
    m = transformer_base(37000, share_embeddings=True)
    assert 60e6 < m.num_parameters() < 66e6


def test_config_roundtrip_json():
    m = tiny(share_embeddings=True, norm_first=True)
    cfg = json.loads(json.dumps(m.config))
    m2 = Seq2SeqTransformer.from_config(cfg)
    assert m2.config == m.config
    assert list(m2.state_dict()) == list(m.state_dict())
    with pytest.raises(InvalidArgumentError, match="GPT"):
        Seq2SeqTransformer.from_config({**cfg, "arch": "GPT"})


def test_pre_ln_has_final_norms_post_ln_not():
    assert tiny(norm_first=True).transformer.encoder.norm is not None
    assert tiny(norm_first=True).transformer.decoder.norm is not None
    assert tiny().transformer.encoder.norm is None


def test_loss_decreases_on_copy_task():
    tfm_rs.manual_seed(0)
    m = transformer_tiny(16, d_model=32, dim_feedforward=64)
    opt = tfm_rs.optim.Adam(m.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(60):
        x = rng.integers(3, 16, (16, 6))
        tgt_in = np.concatenate([np.ones((16, 1), np.int64), x], 1)
        tgt_out = np.concatenate([x, np.full((16, 1), 2)], 1)
        loss = m.loss(x, tgt_in, tgt_out)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_share_embeddings_ties_all_three():
    m = tiny(share_embeddings=True)
    assert m.src_embed is m.tgt_embed
    assert m.generator.weight is m.tgt_embed.weight
    names = [n for n, _ in m.named_parameters()]
    assert "generator.weight" not in names and "tgt_embed.weight" not in names
    # Rows no input uses still get gradient: it comes from the output projection.
    src, tgt = ids((2, 4)), ids((2, 3), 1)
    m.loss(src, tgt, tgt).backward()
    g = m.src_embed.weight.grad.numpy()
    unused = sorted(set(range(3, V)) - set(src.ravel()) - set(tgt.ravel()))
    assert np.abs(g[unused]).sum() > 0


def test_tied_gradient_is_sum_of_both_uses():
    m = tiny(share_embeddings=True)
    src, tgt = ids((2, 4)), ids((2, 3), 1)
    m.loss(src, tgt, tgt).backward()
    tied = m.src_embed.weight.grad.numpy().copy()
    # Same weights, untied copies: the tied gradient equals the sum of the three copies' gradients.
    u = tiny(share_embeddings=False, tie_output=False)
    state = m.state_dict()
    u.generator.weight.copy_(state["generator.weight"])
    u.generator.bias.copy_(np.zeros(V, np.float32))
    u.load_state_dict({k: v for k, v in state.items() if not k.startswith("generator")}, strict=False)
    u.loss(src, tgt, tgt).backward()
    total = u.src_embed.weight.grad.numpy() + u.tgt_embed.weight.grad.numpy() + u.generator.weight.grad.numpy()
    np.testing.assert_allclose(tied, total, rtol=1e-4, atol=1e-6)


def test_share_embeddings_requires_equal_vocab():
    with pytest.raises(InvalidArgumentError, match="joint vocabulary"):
        Seq2SeqTransformer(10, 12, d_model=8, nhead=2, share_embeddings=True)


def test_padding_positions_do_not_matter():
    m = tiny().eval()
    src = ids((2, 6))
    src[0, 4:] = 0
    tgt = ids((2, 5), 1)
    tgt[1, 3:] = 0
    a = m(src, tgt).numpy()
    # Other content at padding positions would change the result if they were attended to; here
    # they are replaced by other *pad-id* lengths: compare with the unpadded single rows instead.
    single0 = m(src[:1, :4], tgt[:1]).numpy()
    np.testing.assert_allclose(a[0], single0[0], rtol=1e-4, atol=1e-5)
    single1 = m(src[1:], tgt[1:, :3]).numpy()
    np.testing.assert_allclose(a[1, :3], single1[0], rtol=1e-4, atol=1e-5)


def test_extra_padding_does_not_change_outputs():
    m = tiny().eval()
    src, tgt = ids((2, 5)), ids((2, 4), 1)
    a = m(src, tgt).numpy()
    src_p = np.concatenate([src, np.zeros((2, 3), np.int64)], 1)
    tgt_p = np.concatenate([tgt, np.zeros((2, 2), np.int64)], 1)
    b = m(src_p, tgt_p).numpy()
    np.testing.assert_allclose(b[:, :4], a, rtol=1e-4, atol=1e-5)


def test_inner_target_padding_is_masked():
    # A pad *before* a real target token must be hidden from it: changing what the pad row embeds
    # (normally zero) must not move the logits of the real tokens.
    m = tiny().eval()
    src = ids((1, 5))
    tgt = np.array([[1, 7, 0, 9, 0]])
    a = m(src, tgt).numpy()
    w = m.tgt_embed.weight.numpy()
    w[0] = np.random.default_rng(0).standard_normal(w.shape[1]).astype(np.float32)
    m.tgt_embed.weight.copy_(w)
    b = m(src, tgt).numpy()
    np.testing.assert_allclose(b[0, [0, 1, 3]], a[0, [0, 1, 3]], rtol=1e-5, atol=1e-5)
    assert not np.allclose(b[0, 2], a[0, 2])


def test_causal_future_targets_do_not_change_earlier_logits():
    m = tiny().eval()
    src, tgt = ids((2, 6)), ids((2, 7), 1)
    a = m(src, tgt).numpy()
    tgt2 = tgt.copy()
    tgt2[:, 4:] = ids((2, 3), 9)
    b = m(src, tgt2).numpy()
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[:, 4:], b[:, 4:])


def test_eval_is_deterministic_and_dropout_active_in_train():
    tfm_rs.manual_seed(0)
    m = transformer_tiny(V, dropout=0.3)
    src, tgt = ids((2, 6)), ids((2, 5), 1)
    m.eval()
    np.testing.assert_array_equal(m(src, tgt).numpy(), m(src, tgt).numpy())
    m.train()
    assert not np.array_equal(m(src, tgt).numpy(), m(src, tgt).numpy())


# ------------------------------------------------------------------------------------- bad inputs

def test_bad_token_ids_raise_index_error_with_message():
    m = tiny()
    with pytest.raises(IndexOutOfRangeError, match=r"src_ids holds token id 40 .*\[0, 40\)"):
        m(np.array([[3, 40]]), np.array([[1, 4]]))
    with pytest.raises(IndexOutOfRangeError, match="tgt_ids holds token id -1"):
        m(np.array([[3, 4]]), np.array([[1, -1]]))
    with pytest.raises(IndexOutOfRangeError, match="tgt_out"):
        m.loss(np.array([[3, 4]]), np.array([[1, 4]]), np.array([[4, 99]]))


def test_non_integer_ids_rejected():
    m = tiny()
    with pytest.raises(InvalidArgumentError, match="integer"):
        m(np.array([[3.5, 4.0]]), np.array([[1, 4]]))
    with pytest.raises(InvalidArgumentError, match="rectangular"):
        m([[3, 4], [5]], [[1, 4], [1, 5]])


def test_empty_inputs():
    m = tiny()
    with pytest.raises(ShapeError, match="empty batch"):
        m(np.zeros((0, 4), np.int64), np.zeros((0, 3), np.int64))
    with pytest.raises(ShapeError, match="empty sequences"):
        m(np.zeros((2, 0), np.int64), ids((2, 3)))
    with pytest.raises(InvalidArgumentError, match="row 1 is empty"):
        m(np.array([[5, 6], [0, 0]]), ids((2, 3)))


def test_too_long_raises_before_compute():
    m = tiny()  # max_len 64
    with pytest.raises(ShapeError, match="max_len=64"):
        m(ids((1, 65)), ids((1, 3)))
    with pytest.raises(ShapeError, match="tgt_ids has length 70"):
        m(ids((1, 5)), ids((1, 70)))


def test_mismatched_batch_sizes():
    m = tiny()
    with pytest.raises(ShapeError, match="batch size 2 but tgt_ids has 3"):
        m(ids((2, 5)), ids((3, 4)))
    with pytest.raises(ShapeError):
        m.loss(ids((2, 5)), ids((2, 4)), ids((2, 3)))


def test_d_model_not_divisible_by_nhead():
    with pytest.raises(InvalidArgumentError, match="nhead"):
        Seq2SeqTransformer(10, 10, d_model=30, nhead=4)
    with pytest.raises(InvalidArgumentError, match="nhead"):
        GPT(10, d_model=30, nhead=4)
    with pytest.raises(InvalidArgumentError, match="nhead"):
        BertEncoder(10, d_model=30, nhead=4)


# ------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_roundtrip(tmp_path):
    m = tiny(share_embeddings=True)
    save_checkpoint(tmp_path / "ck", m.state_dict(), m.config)
    m2 = model_from_checkpoint(tmp_path / "ck")
    src, tgt = ids((2, 5)), ids((2, 4), 1)
    m.eval(), m2.eval()
    np.testing.assert_array_equal(m(src, tgt).numpy(), m2(src, tgt).numpy())
    assert m2.generator.weight is m2.src_embed.weight


def test_checkpoint_of_other_architecture_raises(tmp_path):
    m = tiny()
    save_checkpoint(tmp_path / "ck", m.state_dict(), m.config)
    other = transformer_tiny(V, d_model=64, nhead=2)
    with pytest.raises(IncompatibleCheckpointError, match="d_model: checkpoint 32 vs model 64"):
        load_model_state(other, tmp_path / "ck")
    gpt = GPT(V, d_model=32, nhead=2, num_layers=1, max_len=16)
    with pytest.raises(IncompatibleCheckpointError, match="arch"):
        load_model_state(gpt, tmp_path / "ck")
    # Without the config check, load_state_dict itself names the mismatched shapes.
    with pytest.raises(ShapeError, match="size mismatch|Size mismatch"):
        other.load_state_dict(m.state_dict())


# ------------------------------------------------------------------------------------- GPT

def test_gpt_shapes_causal_and_tied():
    tfm_rs.manual_seed(0)
    g = GPT(V, d_model=32, nhead=2, num_layers=2, max_len=16).eval()
    x = ids((2, 8))
    a = g(x).numpy()
    assert a.shape == (2, 8, V)
    x2 = x.copy()
    x2[:, 5:] = 7
    np.testing.assert_allclose(g(x2).numpy()[:, :5], a[:, :5], rtol=1e-5, atol=1e-6)
    assert g.head.weight is g.tok_embed.weight
    assert g.config["dim_feedforward"] == 128
    assert GPT.from_config(json.loads(json.dumps(g.config))).config == g.config
    with pytest.raises(ShapeError, match="max_len=16"):
        g(ids((1, 17)))
    with pytest.raises(IndexOutOfRangeError):
        g(np.array([[1, V]]))


def test_gpt_loss_matches_manual_and_learns():
    tfm_rs.manual_seed(0)
    g = GPT(V, d_model=32, nhead=2, num_layers=1, max_len=16, dropout=0.0, pad_id=0)
    x = ids((4, 9))
    x[0, 6:] = 0
    logits = g(x[:, :-1]).numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    tgt = x[:, 1:]
    nll = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    expected = nll[tgt != 0].mean()
    assert abs(g.loss(x).item() - expected) < 1e-4
    opt = tfm_rs.optim.Adam(g.parameters(), lr=1e-2)
    seq = np.tile(np.arange(3, 11), (4, 1))  # deterministic sequence: learnable
    first = None
    for _ in range(30):
        loss = g.loss(seq)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.3 * first
    with pytest.raises(ShapeError, match="at least 2"):
        g.loss(ids((2, 1)))


# ------------------------------------------------------------------------------------- BERT

def test_bert_mask_tokens_80_10_10():
    b = BertEncoder(1000, d_model=16, nhead=2, num_layers=1, dim_feedforward=32, max_len=512, mask_id=4)
    rng = np.random.default_rng(0)
    x = rng.integers(5, 1000, (200, 500))
    x[:, -50:] = 0  # padding is never selected
    inp, lab = b.mask_tokens(x, rng)
    sel = lab != -100
    real = (x != 0).sum()
    assert abs(sel.sum() / real - 0.15) < 0.005
    assert not sel[:, -50:].any()
    np.testing.assert_array_equal(lab[sel], x[sel])
    np.testing.assert_array_equal(inp[~sel], x[~sel])
    masked = (inp == 4) & sel
    same = (inp == x) & sel
    rand = sel & ~masked & ~same
    n = sel.sum()
    assert abs(masked.sum() / n - 0.8) < 0.01
    # "unchanged" also catches random replacements that drew the same id (p = 1/1000).
    assert abs(same.sum() / n - 0.1) < 0.01
    assert abs(rand.sum() / n - 0.1) < 0.01
    assert np.array_equal(x, x)  # input not modified
    assert (x != 4).all()


def test_bert_forward_loss_and_tied_head():
    tfm_rs.manual_seed(0)
    b = BertEncoder(V, d_model=32, nhead=2, num_layers=1, dim_feedforward=64, max_len=16, dropout=0.0)
    assert b.mlm_decoder.weight is b.tok_embed.weight
    x = ids((3, 10), lo=5)
    x[2, 7:] = 0
    inp, lab = b.mask_tokens(x, np.random.default_rng(1), mlm_probability=0.3)
    assert b(inp).shape == (3, 10, V)
    assert b.encode(inp, np.zeros_like(inp)).shape == (3, 10, 32)
    loss = b.loss(inp, lab)
    assert np.isfinite(loss.item()) and loss.item() > 0
    # The head runs on the labelled positions only; the loss and the gradients are those of the
    # cross-entropy of every position's logits with the others ignored (float64 reference).
    logits = b(inp).numpy().astype(np.float64).reshape(-1, V)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    keep = lab.reshape(-1) != -100
    np.testing.assert_allclose(loss.item(), -logp[keep, lab.reshape(-1)[keep]].mean(), rtol=1e-5)
    full = tfm_rs.functional.cross_entropy(b(inp).reshape(-1, V), lab.reshape(-1), ignore_index=-100)
    full.backward()
    want = {name: p.grad.numpy().copy() for name, p in b.named_parameters()}
    b.zero_grad()
    loss.backward()
    for name, p in b.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), want[name], rtol=1e-4, atol=1e-7, err_msg=name)
    assert b.loss(inp, np.full_like(lab, -100)).item() == 0.0  # nothing labelled
    # Padding does not leak into real positions.
    b.eval()
    short = b(x[2:, :7]).numpy()
    np.testing.assert_allclose(b(x[2:]).numpy()[:, :7], short, rtol=1e-4, atol=1e-5)
    with pytest.raises(ShapeError, match="token_type_ids"):
        b(x, np.zeros((3, 4), np.int64))
    with pytest.raises(IndexOutOfRangeError):
        b(x, np.full((3, 10), 2))


def test_source_padding_content_is_ignored():
    m = tiny().eval()
    src = np.array([[5, 6, 0, 7, 0, 0], [8, 9, 10, 11, 12, 13]])  # pads inside and at the end
    tgt = ids((2, 4), 1)
    a = m(src, tgt).numpy()
    w = m.src_embed.weight.numpy()
    w[0] = 5.0
    m.src_embed.weight.copy_(w)
    np.testing.assert_allclose(m(src, tgt).numpy(), a, rtol=1e-5, atol=1e-5)
