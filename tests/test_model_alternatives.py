"""The models' normalization switch (norm="layer"|"rms"|"batch") and parameter reduction
(factorized and hashed embeddings, shared layers, low-rank FFNs): forward/backward, padding
independence of batch norm, equalities with the unreduced computation, config and checkpoint
round trips, decoding limits."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import tfm_rs
from tfm_rs import nn
from tfm_rs.checkpoint import save_checkpoint
from tfm_rs.models import GPT, BertEncoder, factorize_ffn, model_from_checkpoint, transformer_tiny
from helpers import assert_close

SRC = np.array([[5, 6, 7, 2, 0], [8, 9, 2, 0, 0], [10, 11, 12, 13, 2]])
TGT = np.array([[1, 5, 6, 2], [1, 7, 2, 0], [1, 8, 9, 10]])


def build(arch: str, **kw):
    if arch == "seq2seq":
        return transformer_tiny(32, **kw)
    if arch == "gpt":
        return GPT(32, d_model=16, nhead=2, num_layers=2, dropout=0.0, max_len=16, pad_id=0, **kw)
    return BertEncoder(32, d_model=16, nhead=2, num_layers=2, dim_feedforward=32, max_len=16, dropout=0.0, **kw)


def loss(model, arch: str):
    if arch == "seq2seq":
        return model.loss(SRC, TGT, TGT)
    if arch == "gpt":
        return model.loss(SRC)
    labels = np.where(SRC > 4, SRC, -100)
    return model.loss(SRC, labels)


def outputs(model, arch: str) -> np.ndarray:
    return (model(SRC, TGT) if arch == "seq2seq" else model(SRC)).numpy()


ARCHS = ["seq2seq", "gpt", "bert"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["layer", "rms", "batch"])
def test_norm_switch_trains_and_round_trips(arch: str, norm: str, tmp_path) -> None:
    model = build(arch, norm=norm)
    kinds = {type(m).__name__ for m in model.modules()}
    want = {"layer": "LayerNorm", "rms": "RMSNorm", "batch": "MaskedBatchNorm1d"}[norm]
    assert want in kinds
    if norm != "layer":
        assert not any(type(m) is nn.LayerNorm for name, m in model.named_modules() if "mlm" not in name)
    loss(model, arch).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    save_checkpoint(tmp_path / "ck", model.state_dict(), model.config)
    again = model_from_checkpoint(tmp_path / "ck")
    again.eval()
    assert again.config["norm"] == norm
    assert np.array_equal(outputs(model, arch), outputs(again, arch))


def test_batch_norm_statistics_ignore_padding() -> None:
    """In training mode, extra padding columns change neither the outputs at real positions nor
    the running statistics: the statistics are over the real tokens only."""
    model = transformer_tiny(32, norm="batch")
    model.train()
    wide_src = np.concatenate([SRC, np.zeros((3, 3), np.int64)], axis=1)
    wide_tgt = np.concatenate([TGT, np.zeros((3, 2), np.int64)], axis=1)
    twin = copy.deepcopy(model)
    a = model(SRC, TGT).numpy()
    b = twin(wide_src, wide_tgt).numpy()[:, :TGT.shape[1]]
    real = TGT != 0
    assert_close(b[real], a[real], rtol=1e-4, atol=1e-5)
    for (name, x), (_, y) in zip(model.named_buffers(), twin.named_buffers()):
        if "running" in name:
            assert_close(y, x.numpy(), rtol=1e-5, atol=1e-6, what=name)


def test_native_decoding_runs_every_norm() -> None:
    """RMSNorm models decode natively (the incremental logits are checked against the full
    forward in tests/test_decode.py, as are batch-norm models'); greedy GPT decoding equals the
    argmax of the full forward step by step; batch norm without running statistics is refused
    with a clear error."""
    model = GPT(32, d_model=16, nhead=2, num_layers=2, dropout=0.0, max_len=16, norm="rms").eval()
    out = model.generate(np.array([3, 5, 7]), max_new_tokens=5).sequences[0]
    ids = [3, 5, 7]
    for _ in range(5):
        ids.append(int(model(np.array([ids])).numpy()[0, -1].argmax()))
    assert out == ids
    untracked = transformer_tiny(32, norm="batch")
    untracked.transformer.decoder.layers[0].norm1.track_running_stats = False
    with pytest.raises(tfm_rs.InvalidArgumentError, match="track_running_stats=False"):
        untracked.generate(SRC[:1], max_new_tokens=3)
    plain = transformer_tiny(32, norm="batch")
    plain.transformer.decoder.layers[0].norm1 = nn.BatchNorm1d(plain.d_model)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="not BatchNorm1d"):
        plain.generate(SRC[:1], max_new_tokens=3)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="norm"):
        transformer_tiny(32, norm="power")


def test_factorized_embedding_equals_the_product_table() -> None:
    emb = nn.FactorizedEmbedding(17, 3, 8, padding_idx=0)
    ids = np.array([[0, 5, 16], [3, 3, 1]])
    table = emb.table.numpy().astype(np.float64)
    assert_close(emb(ids), table[ids], rtol=1e-5, atol=1e-6)
    plain = nn.Embedding.from_pretrained(emb.table.numpy(), freeze=False)
    assert_close(emb(ids), plain(ids).numpy(), rtol=1e-5, atol=1e-6)
    model = transformer_tiny(32, embedding_dim=8)
    assert isinstance(model.src_embed, nn.FactorizedEmbedding)
    assert model.num_parameters() < transformer_tiny(32).num_parameters()
    # The decoder reads the product table; greedy decoding runs.
    assert model.generate(SRC[:1], max_new_tokens=3).sequences is not None


def test_shared_layers_equal_one_layer_applied_n_times() -> None:
    """A GPT with 3 shared layers equals an unshared GPT whose 3 layers hold copies of the one
    set of weights (forward), and the shared gradient is the sum of the three layers' gradients."""
    shared = GPT(32, d_model=16, nhead=2, num_layers=3, dropout=0.0, max_len=16, pad_id=0, share_layers=True)
    assert len({id(layer) for layer in shared.layers}) == 1
    plain = GPT(32, d_model=16, nhead=2, num_layers=3, dropout=0.0, max_len=16, pad_id=0)
    plain.load_state_dict(shared.state_dict())
    assert_close(plain(SRC), shared(SRC).numpy(), rtol=1e-6, atol=1e-6)
    shared.loss(SRC).backward()
    plain.loss(SRC).backward()
    for name, p in shared.layers[0].named_parameters():
        total = sum(dict(layer.named_parameters())[name].grad.numpy().astype(np.float64) for layer in plain.layers)
        assert_close(p.grad, total, rtol=1e-4, atol=1e-6, what=name)
    assert shared.num_parameters() < plain.num_parameters()


def test_hashed_embeddings_in_models(tmp_path) -> None:
    model = transformer_tiny(32, hash_buckets=8, num_hashes=2)
    assert isinstance(model.tgt_embed, nn.HashEmbedding)
    model.loss(SRC, TGT, TGT).backward()
    model.eval()
    save_checkpoint(tmp_path / "ck", model.state_dict(), model.config)
    assert np.array_equal(model_from_checkpoint(tmp_path / "ck")(SRC, TGT).numpy(), model(SRC, TGT).numpy())
    with pytest.raises(tfm_rs.InvalidArgumentError, match="tied"):
        transformer_tiny(32, hash_buckets=8, share_embeddings=True)
    with pytest.raises(tfm_rs.InvalidArgumentError):
        transformer_tiny(32, hash_buckets=8, embedding_dim=4)


@pytest.mark.parametrize("arch", ARCHS)
def test_factorize_ffn_full_rank_keeps_outputs_and_round_trips(arch: str, tmp_path) -> None:
    model = build(arch)
    model.eval()
    before = outputs(model, arch)
    ranks = factorize_ffn(model, rank=None, energy=1.0)
    assert all(isinstance(layer.linear1, nn.LowRankLinear) for layer in model._ffn_layers().values())
    assert_close(outputs(model, arch), before, rtol=1e-4, atol=1e-4)
    assert model.config["ffn_rank"] == ranks
    save_checkpoint(tmp_path / "ck", model.state_dict(), model.config)
    again = model_from_checkpoint(tmp_path / "ck")
    again.eval()
    assert np.array_equal(outputs(again, arch), outputs(model, arch))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="already"):
        factorize_ffn(model, rank=2)


def test_low_rank_ffn_halves_ffn_parameters_and_decodes() -> None:
    model = transformer_tiny(32)
    dense = sum(p.numpy().size for layer in model._ffn_layers().values()
                for p in list(layer.linear1.parameters()) + list(layer.linear2.parameters()))
    factorize_ffn(model, rank=8)  # d_model 32, ff 64: 8·(32+64) of 32·64 weights per linear
    low = sum(p.numpy().size for layer in model._ffn_layers().values()
              for p in list(layer.linear1.parameters()) + list(layer.linear2.parameters()))
    assert low < dense / 2
    assert model.generate(SRC[:1], max_new_tokens=3).sequences is not None


def test_albert_bert_ties_the_factorized_table() -> None:
    model = build("bert", embedding_dim=8, share_layers=True)
    assert model.mlm_decoder.weight is model.tok_embed.embed.weight
    assert model.mlm_dense.out_features == 8
    loss(model, "bert").backward()


@pytest.mark.parametrize("kind", ["seq2seq", "lm"])
def test_cli_config_builds_the_configured_model(kind: str, tmp_path) -> None:
    from tfm_rs import config as cfg_lib
    from tfm_rs.runs import Data, build_model

    text = """
[model]
preset = "tiny"
norm = "batch"
embedding_dim = 8
share_layers = true
ffn_rank = 4
"""
    cfg = cfg_lib.resolve(cfg_lib.loads(text))
    assert 'norm = "batch"' in cfg_lib.dumps(cfg)
    data = Data(kind=kind, tokenizer=None, train=None, src_vocab_size=40, tgt_vocab_size=40)
    model = build_model(cfg, data)
    c = model.config
    assert (c["norm"], c["embedding_dim"], c["share_layers"], c["ffn_rank"]) == ("batch", 8, True, 4)
    for bad in ('[model]\nnorm = "group"\n', '[model]\nhash_buckets = 10\nshare_embeddings = true\n'):
        with pytest.raises(cfg_lib.ConfigError):
            cfg_lib.resolve(cfg_lib.loads(bad))
