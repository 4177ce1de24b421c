"""models.ConvEncoder (ConvS2S-style GLU + residual blocks): the GLU against NumPy, padding does
not change an encoding, the receptive field is exactly 1 + layers·(k − 1), gradients reach every
parameter, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
from tfm_rs.models.conv_encoder import ConvEncoder, glu
from helpers import assert_close, randn


def test_glu_matches_numpy():
    x = randn((2, 6, 3), seed=1)
    want = x[:, :3] / (1 + np.exp(-x[:, 3:].astype(np.float64)))
    assert_close(glu(tfm_rs.tensor(x), 1), want, 1e-6, 1e-6)


def encoder(**kw):
    tfm_rs.manual_seed(0)
    return ConvEncoder(20, embed_dim=8, channels=6, dropout=0.0, max_len=40, **kw).eval()


def test_padding_does_not_change_an_encoding():
    m = encoder(num_layers=3)
    ids = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    both = m(ids).numpy()
    alone = m(ids[1:, :3]).numpy()
    assert_close(both[1, :3], alone[0], 1e-6, 1e-6)
    assert not both[1, 3:].any()


@pytest.mark.parametrize("layers,k", [(1, 3), (2, 3), (3, 5)])
def test_receptive_field(layers, k):
    m = encoder(num_layers=layers, kernel_size=k)
    ids = np.arange(1, 31)[None] % 19 + 1
    base = m(ids).numpy()[0]
    changed = ids.copy()
    changed[0, 15] = 3 if ids[0, 15] != 3 else 4
    diff = np.abs(m(changed).numpy()[0] - base).max(axis=1)
    reach = layers * (k - 1) // 2
    assert m.receptive_field == 1 + 2 * reach
    assert not diff[: 15 - reach].any() and not diff[15 + reach + 1:].any(), "nothing outside the field"
    assert diff[15 - reach] > 0 and diff[15 + reach] > 0, "the field's edges see the change"


def test_gradients_reach_every_parameter_and_pooling():
    m = encoder(num_layers=2)
    m.train()
    pooled, keep = m.pooled(np.array([[3, 4, 5], [6, 7, 0]]))
    assert pooled.shape == (2, 8)
    pooled.sum().backward()
    assert all(p.grad is not None for name, p in m.named_parameters())


def test_bad_input():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="odd"):
        ConvEncoder(10, kernel_size=2)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="num_layers"):
        ConvEncoder(10, num_layers=0)


def blocks_reference(blocks, x, pad):
    """ConvBlocks in float64 loops: x (B, S, C), pad (B, S) True = pad."""
    keep = (~pad).astype(np.float64)[:, :, None]
    h = x.astype(np.float64)
    k = blocks.kernel_size
    for conv in blocks.convs:
        w = conv.weight.numpy().astype(np.float64)  # (2C, C, k)
        b = conv.bias.numpy().astype(np.float64)
        h = h * keep
        padded = np.pad(h, ((0, 0), (k // 2, k // 2), (0, 0)))
        y = np.stack([np.einsum("bkc,ock->bo", padded[:, t:t + k], w) for t in range(h.shape[1])], 1) + b
        c = h.shape[2]
        h = (h + y[..., :c] / (1 + np.exp(-y[..., c:]))) * np.sqrt(0.5)
    return h * keep


@pytest.mark.parametrize("layers,k,c", [(1, 1, 3), (2, 3, 5), (3, 5, 17)])
def test_conv_blocks_match_a_float64_loop(layers, k, c):
    from tfm_rs.models import ConvBlocks
    tfm_rs.manual_seed(layers)
    blocks = ConvBlocks(c, layers, k, dropout=0.0).eval()
    x = randn((3, 7, c), seed=k)
    pad = np.zeros((3, 7), bool)
    pad[1, 4:] = True
    pad[2, 1:] = True
    assert_close(blocks(tfm_rs.tensor(x), norm_padding_mask=pad), blocks_reference(blocks, x, pad), 2e-5, 2e-5)
    assert blocks.receptive_field == 1 + layers * (k - 1)


def conv_seq2seq(**kw):
    from tfm_rs.models import Seq2SeqTransformer
    tfm_rs.manual_seed(3)
    args = dict(d_model=16, nhead=2, num_encoder_layers=3, num_decoder_layers=2, dim_feedforward=32, dropout=0.0,
                share_embeddings=True, encoder="conv", encoder_kernel_size=3, max_len=64)
    return Seq2SeqTransformer(30, 30, **{**args, **kw})


def test_conv_seq2seq_trains_decodes_and_round_trips(tmp_path):
    from tfm_rs.checkpoint import save_checkpoint
    from tfm_rs.models import model_from_checkpoint
    m = conv_seq2seq()
    assert m.config["encoder"] == "conv" and m.config["encoder_kernel_size"] == 3
    assert not any(name.startswith("transformer.encoder.layers") for name, _ in m.named_parameters())
    src = np.array([[5, 6, 7, 8, 2, 0, 0], [9, 10, 11, 12, 13, 14, 2]])
    tgt = np.array([[1, 5, 6, 7], [1, 8, 9, 10]])
    m.loss(src, tgt, tgt).backward()
    assert all(p.grad is not None for _, p in m.named_parameters()), "every weight, convolutions included, learns"
    m.eval()
    # A sentence encodes and decodes the same alone and padded in a batch.
    both = m(src, tgt).numpy()
    alone = m(src[:1, :5], tgt[:1]).numpy()
    assert_close(both[0], alone[0], 2e-5, 2e-5)
    # The native decoder on the conv memory equals greedy decoding by full forward passes.
    out = m.generate(src, max_new_tokens=6, num_beams=1).sequences
    for row, seq in zip(src, out):
        ys = [1]
        for _ in range(len(seq)):
            ys.append(int(m(row[None][:, :int((row != 0).sum())], np.array([ys])).numpy()[0, -1].argmax()))
            if ys[-1] == 2:
                break
        assert [t for t in ys[1:] if t != 2] == [t for t in seq if t != 2]
    save_checkpoint(tmp_path / "ckpt", m.state_dict(), m.config)
    back = model_from_checkpoint(tmp_path / "ckpt")
    assert back.config == m.config
    assert_close(back.eval()(src, tgt), both, 0, 0)


def test_conv_seq2seq_bad_options(tmp_path):
    from tfm_rs import config
    from tfm_rs.models import Seq2SeqTransformer
    with pytest.raises(tfm_rs.InvalidArgumentError, match="encoder must be"):
        conv_seq2seq(encoder="rnn")
    with pytest.raises(tfm_rs.InvalidArgumentError, match="attention kinds"):
        conv_seq2seq(attention="linear")
    with pytest.raises(tfm_rs.InvalidArgumentError, match="odd"):
        conv_seq2seq(encoder_kernel_size=4)
    with pytest.raises(tfm_rs.TfmError, match="encoder='conv'"):
        conv_seq2seq().save_pretrained(tmp_path / "hf")
    with pytest.raises(config.ConfigError, match="needs model.encoder = conv"):
        config.resolve({"model": {"encoder_kernel_size": 5}})
    cfg = config.resolve({"model": {"encoder": "conv", "encoder_kernel_size": 5, "encoder_layers": 4}})
    kw = config.model_kwargs(cfg)
    assert (kw["encoder"], kw["encoder_kernel_size"], kw["num_encoder_layers"]) == ("conv", 5, 4)
    assert isinstance(Seq2SeqTransformer(40, 40, **kw).transformer.encoder, tfm_rs.models.ConvBlocks)
