"""BERT and GPT-2 against Hugging Face ``transformers`` (float32 models; tolerance 1e-4 relative
to the largest magnitude, what float32 reassociation leaves): checkpoints written by
``transformers`` load and give the same hidden states and logits on padded batches, the same
greedy tokens, the same sentence embeddings; models trained here and saved with
``save_pretrained`` load in ``transformers`` with the same logits."""

import json

import numpy as np
import pytest

from hf_ref import require

transformers = require("transformers", "the Hugging Face parity tests")
torch = require("torch", "the Hugging Face parity tests")

import tfm_rs  # noqa: E402
from tfm_rs.models import GPT, BertEncoder  # noqa: E402
from tfm_rs.optim import Adam  # noqa: E402

RTOL = 1e-4


def close(got, ref, rtol=RTOL):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < rtol, f"relative error {err:.2e}"


def bert_config(**kw):
    base = dict(vocab_size=61, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37,
                max_position_embeddings=40, type_vocab_size=2, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    base.update(kw)
    return transformers.BertConfig(**base)


def padded_ids(rng, vocab, lengths, width, pad=0):
    ids = np.full((len(lengths), width), pad, np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, vocab, n)
    return ids


@pytest.mark.parametrize("cls_name", ["BertModel", "BertForMaskedLM"])
def test_bert_matches_transformers_on_padded_batches(tmp_path, cls_name):
    torch.manual_seed(0)
    hf = getattr(transformers, cls_name)(bert_config()).eval()
    hf.save_pretrained(tmp_path)
    model = BertEncoder.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    ids = padded_ids(rng, 61, [17, 5, 1, 11], 17)
    types = np.where(np.arange(17) >= 6, 1, 0)[None].repeat(4, 0) * (ids != 0)
    mask = ids != 0
    with torch.no_grad():
        out = hf(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                 token_type_ids=torch.tensor(types))
    if cls_name == "BertModel":
        hidden = model.encode(ids, types)
        close(hidden.numpy()[mask], out.last_hidden_state.numpy()[mask])
        close(model.pooler_output(hidden).numpy(), out.pooler_output.numpy())
    else:
        close(model(ids, types).numpy()[mask], out.logits.numpy()[mask])


def _wordpiece_tokenizer(path, pad_to=None):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "under", "sun"]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    if pad_to:  # what many published tokenizer.json files carry
        tok.enable_padding(pad_id=0, pad_token="[PAD]", length=pad_to)
        tok.enable_truncation(max_length=pad_to)
    tok.save(str(path / "tokenizer.json"))
    return len(vocab)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sentence_embeddings_match_sentence_transformers_semantics(tmp_path, pooling):
    vocab = _wordpiece_tokenizer(tmp_path, pad_to=128)
    torch.manual_seed(1)
    hf = transformers.BertModel(bert_config(vocab_size=vocab)).eval()
    hf.save_pretrained(tmp_path)
    model = BertEncoder.from_pretrained(tmp_path)
    sentences = ["the cat sat on the mat", "a dog", "the sun ran far far away under a mat", "cat"]
    got = model.encode(sentences, pooling=pooling, batch_size=3)
    assert model.tokenizer.padding is None  # the baked-in padding to 128 is off
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest, as sentence-transformers does
    enc = tok.encode_batch(sentences)
    ids = torch.tensor([e.ids for e in enc])
    att = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        h = hf(ids, attention_mask=att).last_hidden_state.double()
    if pooling == "mean":
        ref = (h * att[..., None]).sum(1) / att.sum(1, keepdim=True)
    else:
        ref = h[:, 0]
    ref = torch.nn.functional.normalize(ref, dim=1).numpy()
    assert got.shape == (4, 24)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    one = model.encode("a dog", pooling=pooling)
    np.testing.assert_allclose(one, got[1], atol=1e-6)  # alone or batched with longer sentences


def gpt2_config(**kw):
    base = dict(vocab_size=67, n_embd=24, n_layer=2, n_head=3, n_positions=48, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0, bos_token_id=66, eos_token_id=66)
    base.update(kw)
    return transformers.GPT2Config(**base)


@pytest.mark.parametrize("tied, act", [(True, "gelu_new"), (False, "gelu")])
def test_gpt2_matches_transformers_logits_and_greedy_tokens(tmp_path, tied, act):
    torch.manual_seed(2)
    hf = transformers.GPT2LMHeadModel(gpt2_config(tie_word_embeddings=tied, activation_function=act)).eval()
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    rng = np.random.default_rng(2)
    ids = padded_ids(rng, 67, [13, 7, 2], 13)
    mask = ids != 0
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
    close(model(ids).numpy()[mask], ref[mask])  # right padding: causal rows never see it
    prompt = ids[0, :6]
    got = model.generate(prompt, max_new_tokens=12, eos_token_id=66).sequences[0]
    with torch.no_grad():
        want = hf.generate(torch.tensor(prompt[None]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0].tolist()
    assert got == want


def test_models_trained_here_load_in_transformers(tmp_path):
    tfm_rs.manual_seed(3)
    rng = np.random.default_rng(3)
    gpt = GPT(53, 16, 2, 2, dim_feedforward=40, max_len=24, dropout=0.0, activation="gelu_tanh")
    bert = BertEncoder(53, 16, 2, 2, 40, max_len=24, dropout=0.0, pooler=True)
    for model, batch in ((gpt, lambda: rng.integers(0, 53, (4, 12))),
                         (bert, lambda: bert.mask_tokens(padded_ids(rng, 53, [12, 9, 5, 12], 12), rng))):
        opt = Adam(model.parameters(), lr=1e-2)
        for _ in range(5):
            opt.zero_grad()
            b = batch()
            loss = model.loss(b) if model is gpt else model.loss(*b)
            loss.backward()
            opt.step()
    ids = padded_ids(rng, 53, [12, 6], 12)
    mask = ids != 0
    gpt.save_pretrained(tmp_path / "gpt")
    bert.save_pretrained(tmp_path / "bert")
    assert json.loads((tmp_path / "gpt" / "config.json").read_text())["activation_function"] == "gelu_new"
    hf_gpt = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt").eval()
    hf_bert = transformers.BertForMaskedLM.from_pretrained(tmp_path / "bert").eval()
    att = torch.tensor(mask.astype(np.int64))
    with torch.no_grad():
        close(gpt.eval()(ids).numpy()[mask], hf_gpt(torch.tensor(ids), attention_mask=att).logits.numpy()[mask])
        close(bert.eval()(ids).numpy()[mask], hf_bert(torch.tensor(ids), attention_mask=att).logits.numpy()[mask])
    # and back: the saved directories load here to the same weights
    np.testing.assert_array_equal(BertEncoder.from_pretrained(tmp_path / "bert")(ids).numpy(), bert(ids).numpy())
    np.testing.assert_array_equal(GPT.from_pretrained(tmp_path / "gpt")(ids).numpy(), gpt(ids).numpy())


def test_cli_generate_from_pretrained(tmp_path):
    import subprocess
    import sys

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the cat sat on the mat"] * 5, trainers.BpeTrainer(
        vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    vocab = tok.get_vocab_size()
    torch.manual_seed(6)
    hf = transformers.GPT2LMHeadModel(gpt2_config(vocab_size=vocab, bos_token_id=None, eos_token_id=None)).eval()
    hf.save_pretrained(tmp_path)
    tok.save(str(tmp_path / "tokenizer.json"))
    prompt = "the cat"
    ids = tok.encode(prompt).ids
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)[0, len(ids):]
    r = subprocess.run([sys.executable, "-m", "tfm_rs", "generate", "--from-pretrained", str(tmp_path), "--prompt",
                        prompt, "--greedy", "--max-new-tokens", "8"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == prompt + tok.decode(want.tolist())
