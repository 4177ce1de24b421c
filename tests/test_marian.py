"""Seq2SeqTransformer ↔ Hugging Face ``MarianMTModel`` (float32; tolerance 1e-4 relative to the
largest magnitude, what float32 reassociation leaves): a model made here and saved with
``save_pretrained`` gives transformers' logits on a padded batch and its greedy tokens; a
MarianMTModel made by transformers loads with ``from_pretrained`` and saves back to the same
tensors; what either side lacks is refused by name. Every weight is random (LayerNorm gains and
biases too), so a feature permutation applied to the wrong axis cannot hide behind ones and zeros."""

import json

import numpy as np
import pytest

from hf_ref import require

transformers = require("transformers", "the Marian parity tests")
torch = require("torch", "the Marian parity tests")

from tfm_rs import TfmError  # noqa: E402
from tfm_rs.models import Seq2SeqTransformer  # noqa: E402
from tfm_rs.pretrained import (  # noqa: E402
    PretrainedFormatError,
    UnsupportedConfigError,
    WeightsMismatchError,
    read_safetensors,
    write_safetensors,
)
from tfm_rs.pretrained.marian import marian_order  # noqa: E402

RTOL = 1e-4
PAD, BOS, EOS = 0, 1, 2


def close(got, ref, rtol=RTOL):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < rtol, f"relative error {err:.2e}"


def randomize(model, seed):
    """Every distinct parameter of ``model`` drawn anew (tied ones stay tied)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if ".norm" in name and name.endswith(".weight"):
            value = 1.0 + 0.3 * rng.standard_normal(shape)
        elif len(shape) == 2:
            value = rng.standard_normal(shape) * shape[1] ** -0.5
        else:
            value = 0.2 * rng.standard_normal(shape)
        state[name] = value.astype(np.float32)
    model.load_state_dict(state, strict=False)
    return model


def batch(rng, src_vocab, tgt_vocab, start=BOS):
    """A padded batch: sources of lengths 9, 4, 1 and decoder inputs of lengths 7, 3, 5, the
    first token ``start``."""
    src, tgt = np.full((3, 9), PAD, np.int64), np.full((3, 7), PAD, np.int64)
    for i, (s, t) in enumerate([(9, 7), (4, 3), (1, 5)]):
        src[i, :s] = rng.integers(3, src_vocab, s)
        tgt[i, :t] = rng.integers(3, tgt_vocab, t)
    tgt[:, 0] = start
    return src, tgt


def hf_forward(hf, src, tgt):
    keep = tgt != PAD
    keep[:, 0] = True  # the start token, which is PAD in opus-mt's convention
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(src), attention_mask=torch.tensor((src != PAD).astype(np.int64)),
                 decoder_input_ids=torch.tensor(tgt),
                 decoder_attention_mask=torch.tensor(keep.astype(np.int64)), output_hidden_states=True)
    return out


def hf_greedy(hf, src, n, pad=PAD, eos=EOS):
    """transformers' greedy tokens after the start token, cut after the first EOS."""
    with torch.no_grad():
        out = hf.generate(torch.tensor(src), attention_mask=torch.tensor((src != pad).astype(np.int64)),
                          max_new_tokens=n, do_sample=False, num_beams=1, suppress_tokens=[pad])
    rows = []
    for row in out[:, 1:].tolist():
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    return rows


LAYOUTS = {"shared": dict(share_embeddings=True), "tied": dict(tie_output=True), "untied": dict()}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_saved_model_runs_in_transformers(tmp_path, layout):
    vocab = (29, 29) if layout == "shared" else (29, 31)
    model = randomize(Seq2SeqTransformer(*vocab, d_model=12, nhead=3, num_encoder_layers=2, num_decoder_layers=3,
                                         dim_feedforward=17, max_len=40, dropout=0.0, activation="gelu",
                                         **LAYOUTS[layout]), seed=1).eval()
    model.save_pretrained(tmp_path)
    hf, info = transformers.MarianMTModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.eval()
    src, tgt = batch(np.random.default_rng(1), *vocab)
    ref = hf_forward(hf, src, tgt)
    keep = tgt != PAD
    close(model(src, tgt).numpy()[keep], ref.logits.numpy()[keep])
    # The hidden states are Marian's with the features in tfm_rs's (interleaved sin/cos) order.
    memory = model.encode(src).numpy()
    close(memory[src != PAD][:, marian_order(12)], ref.encoder_last_hidden_state.numpy()[src != PAD])
    got = [list(s) for s in model.generate(src, max_new_tokens=10).sequences]
    assert max(map(len, got)) > 1 and got == hf_greedy(hf, src, 10)


def test_model_trained_here_loads_in_transformers(tmp_path):
    """Five Adam steps with dropout (so LayerNorm gains and biases move off 1 and 0), then save."""
    from tfm_rs.optim import Adam

    model = Seq2SeqTransformer(23, 23, d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                               dim_feedforward=24, max_len=30, dropout=0.1, share_embeddings=True)
    rng = np.random.default_rng(5)
    opt = Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        src, tgt = batch(rng, 23, 23)
        out = np.concatenate([tgt[:, 1:], np.full((3, 1), PAD)], axis=1)
        opt.zero_grad()
        loss = model.loss(src, tgt, out)
        loss.backward()
        opt.step()
    model.eval().save_pretrained(tmp_path)
    hf = transformers.MarianMTModel.from_pretrained(tmp_path).eval()
    src, tgt = batch(rng, 23, 23)
    keep = tgt != PAD
    close(model(src, tgt).numpy()[keep], hf_forward(hf, src, tgt).logits.numpy()[keep])


def marian_config(**kw):
    base = dict(vocab_size=37, d_model=15, encoder_layers=2, decoder_layers=2, encoder_attention_heads=3,
                decoder_attention_heads=3, encoder_ffn_dim=19, decoder_ffn_dim=19, max_position_embeddings=32,
                scale_embedding=True, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=BOS,
                forced_eos_token_id=None, activation_function="relu", dropout=0.0)
    base.update(kw)
    return transformers.MarianConfig(**base)


def tiny_marian(path, seed=0, **kw):
    """A MarianMTModel with random weights (and a random final_logits_bias when untied), saved."""
    torch.manual_seed(seed)
    hf = transformers.MarianMTModel(marian_config(**kw)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "embed_positions" not in name:
                p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim == 2 else 0.3)
                        + (1.0 if "layer_norm.weight" in name else 0.0))
        if not hf.config.tie_word_embeddings:
            hf.final_logits_bias.copy_(torch.randn_like(hf.final_logits_bias))
    hf.save_pretrained(path)
    return hf


@pytest.mark.parametrize("kw", [dict(), dict(share_encoder_decoder_embeddings=False, decoder_vocab_size=41),
                                dict(share_encoder_decoder_embeddings=False, decoder_vocab_size=41,
                                     tie_word_embeddings=False, activation_function="gelu_new"),
                                dict(activation_function="swish", decoder_start_token_id=PAD)],
                         ids=["shared", "tied", "untied", "opus-mt"])
def test_transformers_model_round_trips(tmp_path, kw):
    """The opus-mt case: SiLU ("swish") feed-forward layers, and the decoder starts with PAD,
    which is then a token, not padding."""
    hf = tiny_marian(tmp_path / "hf", **kw)  # d_model 15: odd, so the sin half is one longer
    model = Seq2SeqTransformer.from_pretrained(tmp_path / "hf")
    vocab = (37, kw.get("decoder_vocab_size", 37))
    src, tgt = batch(np.random.default_rng(2), *vocab, start=kw.get("decoder_start_token_id", BOS))
    keep = tgt != PAD
    keep[:, 0] = True
    close(model(src, tgt).numpy()[keep], hf_forward(hf, src, tgt).logits.numpy()[keep])
    got = [list(s) for s in model.generate(src, max_new_tokens=8).sequences]
    assert max(map(len, got)) > 1 and got == hf_greedy(hf, src, 8)
    model.save_pretrained(tmp_path / "back")
    before, after = read_safetensors(tmp_path / "hf" / "model.safetensors"), read_safetensors(
        tmp_path / "back" / "model.safetensors")
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_position_tables_stored_by_older_checkpoints(tmp_path):
    hf = tiny_marian(tmp_path)
    st = read_safetensors(tmp_path / "model.safetensors")
    table = hf.model.encoder.embed_positions.weight.detach().numpy()
    st["model.encoder.embed_positions.weight"] = st["model.decoder.embed_positions.weight"] = table
    st["model.encoder.embed_tokens.weight"] = st["lm_head.weight"] = st["model.shared.weight"]  # tied copies
    write_safetensors(tmp_path / "model.safetensors", st)
    Seq2SeqTransformer.from_pretrained(tmp_path)
    st["model.decoder.embed_positions.weight"] = table + 0.1
    write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(WeightsMismatchError, match="model.decoder.embed_positions.weight is not Marian's sinusoidal"):
        Seq2SeqTransformer.from_pretrained(tmp_path)


def test_missing_unexpected_and_misshapen_tensors_are_named(tmp_path):
    tiny_marian(tmp_path)
    st = read_safetensors(tmp_path / "model.safetensors")
    del st["model.decoder.layers.1.encoder_attn.k_proj.bias"]
    st["model.encoder.layers.0.fc2.bias"] = np.zeros(16, np.float32)
    st["model.encoder.layers.5.fc1.weight"] = np.zeros((19, 15), np.float32)
    write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(WeightsMismatchError) as e:
        Seq2SeqTransformer.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing: model.decoder.layers.1.encoder_attn.k_proj.bias" in msg
    assert "unexpected: model.encoder.layers.5.fc1.weight" in msg
    assert "model.encoder.layers.0.fc2.bias: shape (16,) in the checkpoint, (15,) expected" in msg


def test_truncated_checkpoint_is_a_format_error(tmp_path):
    tiny_marian(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(PretrainedFormatError):
        Seq2SeqTransformer.from_pretrained(tmp_path)


def test_tied_head_with_a_bias_is_refused(tmp_path):
    tiny_marian(tmp_path)
    st = read_safetensors(tmp_path / "model.safetensors")
    st["final_logits_bias"] = np.ones_like(st["final_logits_bias"])
    write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(UnsupportedConfigError, match="final_logits_bias is not zero"):
        Seq2SeqTransformer.from_pretrained(tmp_path)
    st["final_logits_bias"] = np.zeros((1, 36), np.float32)
    write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(WeightsMismatchError, match=r"final_logits_bias: shape \(1, 36\) in the checkpoint, \(1, 37\)"):
        Seq2SeqTransformer.from_pretrained(tmp_path)


@pytest.mark.parametrize("change, match", [
    (dict(activation_function="tanh"), "activation_function='tanh' is not supported"),
    (dict(scale_embedding=False), "scale_embedding=false"),
    (dict(decoder_attention_heads=5), "encoder_attention_heads=3 differs from decoder_attention_heads=5"),
    (dict(decoder_ffn_dim=20), "encoder_ffn_dim=19 differs from decoder_ffn_dim=20"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings=false is not supported"),
    (dict(normalize_before=True), "normalize_before=True is not supported"),
    (dict(model_type="bart"), "model_type 'bart' is not 'marian'"),
    (dict(pad_token_id=99), "pad_token_id=99 is not supported"),
    (dict(d_model="15"), "d_model='15' should be of type int"),
])
def test_unsupported_configs_are_named(tmp_path, change, match):
    tiny_marian(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfigError, match=match):
        Seq2SeqTransformer.from_pretrained(tmp_path)


@pytest.mark.parametrize("key, value", [("d_model", 15 * 10 ** 6), ("encoder_layers", 10 ** 7),
                                        ("decoder_layers", 10 ** 7), ("vocab_size", 10 ** 10),
                                        ("max_position_embeddings", 10 ** 9), ("encoder_ffn_dim", 7)])
def test_configs_that_disagree_with_the_weights_allocate_nothing(tmp_path, key, value):
    tiny_marian(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    if key == "encoder_ffn_dim":
        config["decoder_ffn_dim"] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfigError if key == "max_position_embeddings" else WeightsMismatchError,
                       match="max_position_embeddings=1000000000 is not supported" if key == "max_position_embeddings"
                       else "config.json does not describe these weights"):
        Seq2SeqTransformer.from_pretrained(tmp_path)


def test_fuzzed_configs_give_tfm_errors(tmp_path):
    tiny_marian(tmp_path)
    base = json.loads((tmp_path / "config.json").read_text())
    rng = np.random.default_rng(2)
    keys = sorted(k for k in base if not isinstance(base[k], (dict, list)))
    values = [None, -1, 0, 1.5, "x", [], {}, True, 2 ** 70, 10 ** 6]
    for _ in range(60):
        config = dict(base)
        for key in rng.choice(keys, size=2, replace=False):
            config[key] = values[rng.integers(len(values))]
        (tmp_path / "config.json").write_text(json.dumps(config))
        try:
            Seq2SeqTransformer.from_pretrained(tmp_path)
        except TfmError:
            pass


@pytest.mark.parametrize("kw, match", [
    (dict(norm_first=True), "norm_first=True"),
    (dict(norm="rms"), "norm='rms'"),
    (dict(layer_norm_eps=1e-6), "layer_norm_eps=1e-06"),
    (dict(share_layers=True), "share_layers=True"),
    (dict(embedding_dim=4), "embedding_dim=4"),
])
def test_save_refuses_what_marian_lacks(tmp_path, kw, match):
    model = Seq2SeqTransformer(20, 20, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=12, max_len=16, **kw)
    with pytest.raises(UnsupportedConfigError, match=match):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_cli_translates_a_saved_model(tmp_path):
    """``tfm-rs translate --from-pretrained DIR``: the model's own greedy translations; the saved
    tokenizer loads in transformers' AutoTokenizer and encodes as ours."""
    import subprocess
    import sys

    from tfm_rs.data import train_tokenizer

    texts = ["ein hund läuft", "eine frau liest ein buch", "zwei kinder spielen", "ein mann fährt rad"]
    tok = train_tokenizer([], 40, texts=texts * 4)
    model = randomize(Seq2SeqTransformer(len(tok), len(tok), d_model=16, nhead=2, num_encoder_layers=1,
                                         num_decoder_layers=1, dim_feedforward=24, max_len=32, dropout=0.0,
                                         share_embeddings=True), seed=4).eval()
    model.tokenizer = tok
    model.save_pretrained(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)  # tokenizer_config.json points it at tokenizer.json
    assert auto(texts[1]).input_ids == tok.encode(texts[1])
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id) == (tok.pad_id, tok.bos_id, tok.eos_id)
    want = model.translate(texts[:2], tok, num_beams=1)
    r = subprocess.run([sys.executable, "-m", "tfm_rs", "translate", "--from-pretrained", str(tmp_path), *texts[:2]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == want
    r = subprocess.run([sys.executable, "-m", "tfm_rs", "translate"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "translate needs RUN_DIR or --from-pretrained DIR" in r.stderr


@pytest.mark.parametrize("value", ["x", -0.1, 1.0, True, [0.1]])
def test_dropout_must_be_a_probability(tmp_path, value):
    tiny_marian(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["dropout"] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfigError, match="config dropout=.* is not a probability in"):
        Seq2SeqTransformer.from_pretrained(tmp_path)
