"""Decoding (tfm_rs.decode, Seq2SeqTransformer/GPT.generate): the cached incremental decoder
against the models' own full forward, the searches against references that re-run the prefix,
and bad input. The Rust unit tests (rust/decode/tests.rs) check the engine against a float64
decoder and beam search against brute force."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
from tfm_rs import _core
from tfm_rs.data import pad_batch
from tfm_rs.decode import decoder_weights
from tfm_rs.models import GPT, Seq2SeqTransformer, transformer_tiny

V = 29


def seq2seq(seed=0, **kw):
    tfm_rs.manual_seed(seed)
    tfm_rs.nn.init.manual_seed(seed)
    cfg = dict(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=48, max_len=24,
               dropout=0.1)
    cfg.update(kw)
    return Seq2SeqTransformer(V, V + 3, **cfg)


def gpt(seed=0, scale=20.0, **kw):
    tfm_rs.manual_seed(seed)
    tfm_rs.nn.init.manual_seed(seed)
    cfg = dict(d_model=32, nhead=4, num_layers=2, max_len=20)
    cfg.update(kw)
    m = GPT(V, **cfg)
    # GPT-2's 0.02 init makes every logit nearly equal; larger weights make near-ties (where
    # float rounding could flip an argmax) unlikely, at the price of sharper, worse-conditioned
    # attention — so the logit comparisons use the unscaled model.
    for p in m.parameters():
        if len(p.shape) == 2:
            p.copy_(p.numpy() * scale)
    return m


def log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


SRC = pad_batch([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]])


# ---------------------------------------------------------------- the cache


def with_batch_statistics(m, *inputs):
    """Gives a batch-norm model's norms running statistics and affine parameters far from their
    (0, 1) and (1, 0) starts, so that decoding with them folded in is a real check."""
    rng = np.random.default_rng(5)
    for name, p in m.named_parameters():
        if "norm" in name:
            p.copy_(rng.uniform(0.5, 1.5, p.shape).astype(np.float32) * (1 if name.endswith("weight") else 0.3))
    m.train()
    with tfm_rs.no_grad():
        for _ in range(4):
            m(*inputs)
    return m.eval()


@pytest.mark.parametrize("kw", [{}, {"norm_first": True}, {"share_embeddings": True, "activation": "gelu"},
                                {"norm": "rms"}, {"norm": "rms", "norm_first": True},
                                {"norm": "batch"}, {"norm": "batch", "norm_first": True}])
def test_incremental_logits_equal_full_forward_seq2seq(kw):
    """The engine's step-by-step logits equal the full forward's for every norm (batch norm
    decodes with its running statistics, folded into a per-channel affine map)."""
    tfm_rs.manual_seed(0)
    m = Seq2SeqTransformer(V, V, d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2,
                           dim_feedforward=48, max_len=24, dropout=0.0, **kw).eval()
    tgt = np.array([[1, 4, 9, 2, 7, 7, 3, 11]] * 3) + np.arange(3)[:, None]
    if kw.get("norm") == "batch":
        with_batch_statistics(m, SRC, tgt)
        assert np.abs(m.transformer.decoder.layers[0].norm1.running_mean.numpy()).max() > 0.01
    mask = SRC == m.pad_id
    with tfm_rs.no_grad():
        memory = m.encode(SRC)
        full = m.decode(tgt, memory, mask).numpy()
    dec = _core.Decoder(decoder_weights(m), 3, memory, mask)
    for t in range(tgt.shape[1]):
        step = dec.feed([[int(tgt[r, t])] for r in range(3)])
        np.testing.assert_allclose(step, full[:, t], rtol=1e-5, atol=1e-5 * np.abs(full[:, t]).max())
    # A prefill of several tokens gives the same logits as feeding them one by one.
    dec2 = _core.Decoder(decoder_weights(m), 3, memory, mask)
    pre = dec2.feed([tgt[r, :5].tolist() for r in range(3)])
    np.testing.assert_allclose(pre, full[:, 4], rtol=1e-5, atol=1e-5 * np.abs(full[:, 4]).max())


def gpt_steps_equal_full_forward(m, ids):
    """Feeds ``ids (2, T)`` one token at a time and checks each step's logits against the full
    forward's; returns the full forward's logits."""
    with tfm_rs.no_grad():
        full = m(ids).numpy()
    dec = _core.Decoder(decoder_weights(m), 2)
    for t in range(ids.shape[1]):
        step = dec.feed([[int(ids[r, t])] for r in range(2)])
        np.testing.assert_allclose(step, full[:, t], rtol=1e-5, atol=1e-5 * np.abs(full[:, t]).max())
    return full


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_incremental_logits_equal_full_forward_gpt(norm):
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])
    m = gpt(scale=1.0, norm=norm, dropout=0.0)
    if norm == "batch":
        with_batch_statistics(m, ids)
    gpt_steps_equal_full_forward(m.eval(), ids)


@pytest.mark.parametrize("attention", ["window(left=3, global=2)", "window(left=1); dense",
                                       "window(left=5, right=4, global=0)", "linear", "linear; window(left=2)"])
def test_window_and_linear_gpts_decode_with_bounded_state(attention):
    """Windowed layers keep only the global and the last ``left`` positions (a rolling cache),
    linear layers a recurrent state; yet every step's logits equal the full forward's, one token
    at a time and after prefills (which read positions a later step no longer keeps)."""
    m = gpt(scale=1.0, max_len=24, attention=attention).eval()
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0]])
    full = gpt_steps_equal_full_forward(m, ids)
    dec2 = _core.Decoder(decoder_weights(m), 2)
    dec2.feed([ids[r, :9].tolist() for r in range(2)])
    pre = dec2.feed([ids[r, 9:12].tolist() for r in range(2)])
    np.testing.assert_allclose(pre, full[:, 11], rtol=1e-5, atol=1e-5 * np.abs(full[:, 11]).max())
    # Beams duplicate rows with their rolling caches.
    out = m.generate(ids[:, :4], max_new_tokens=6, num_beams=3)
    assert np.asarray(out.sequences).shape[0] == 2


# ---------------------------------------------------------------- searches vs references


def reference_greedy(m, src_row, limit):
    """Greedy decoding the slow, obvious way: re-run the decoder over the whole prefix."""
    ys = [m.bos_id]
    with tfm_rs.no_grad():
        mem = m.encode(np.array([src_row]))
        for _ in range(limit):
            logits = m.decode(np.array([ys]), mem).numpy()[0, -1]
            logits[m.pad_id] = -np.inf  # padding is never generated
            nxt = int(logits.argmax())
            ys.append(nxt)
            if nxt == m.eos_id:
                break
    return ys[1:]


def sequence_log_prob(m, src_row, tokens):
    with tfm_rs.no_grad():
        logits = m(np.array([src_row]), np.array([[m.bos_id] + list(tokens[:-1])])).numpy()[0]
    logits[:, m.pad_id] = -np.inf
    return float(log_softmax(logits)[np.arange(len(tokens)), tokens].sum())


def test_greedy_equals_the_prefix_recompute_reference_in_any_batch():
    m = seq2seq().eval()
    out = m.generate(SRC, max_new_tokens=12)
    rows = [[t for t in r if t != m.pad_id] for r in SRC.tolist()]
    for row, seq, lp in zip(rows, out.sequences, out.log_probs):
        assert seq == reference_greedy(m, row, 12)
        assert seq.count(m.eos_id) <= 1 and (m.eos_id not in seq or seq[-1] == m.eos_id)
        assert abs(lp - sequence_log_prob(m, row, seq)) < 1e-4
    # Alone, or with other sentences around it, a sentence decodes the same.
    for i, row in enumerate(rows):
        alone = m.generate([row], max_new_tokens=12)
        assert alone.sequences[0] == out.sequences[i]
    # Dropout is off while decoding, whatever the mode.
    m.train()
    assert m.generate(SRC, max_new_tokens=12).sequences == out.sequences
    assert m.training


def test_beam_of_one_is_greedy_and_beam_scores_are_penalized_log_probs():
    m = seq2seq(3).eval()
    greedy = m.generate(SRC, max_new_tokens=10)
    beam1 = m.generate(SRC, max_new_tokens=10, num_beams=1, length_penalty=0.0)
    assert beam1.sequences == greedy.sequences
    beam = m.generate(SRC, max_new_tokens=10, num_beams=4, num_return_sequences=3, length_penalty=0.6)
    assert len(beam.sequences) == 9
    rows = [[t for t in r if t != m.pad_id] for r in SRC.tolist()]
    for i, row in enumerate(rows):
        hyps = beam.sequences[3 * i: 3 * i + 3]
        scores = beam.scores[3 * i: 3 * i + 3]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h) for h in hyps}) == 3
        for h, s, lp in zip(hyps, scores, beam.log_probs[3 * i: 3 * i + 3]):
            want = sequence_log_prob(m, row, h)
            assert abs(lp - want) < 1e-4
            assert abs(s - want / ((5 + len(h)) / 6) ** 0.6) < 1e-4
            assert h.count(m.eos_id) <= 1 and (m.eos_id not in h or h[-1] == m.eos_id)
        # The best beam is at least as good as greedy under the same score.
        g = greedy.sequences[i]
        assert scores[0] >= sequence_log_prob(m, row, g) / ((5 + len(g)) / 6) ** 0.6 - 1e-6
        alone = m.generate([row], max_new_tokens=10, num_beams=4, num_return_sequences=3)
        assert alone.sequences == hyps


def test_eos_first_zero_tokens_and_limits():
    m = seq2seq(tie_output=False).eval()
    bias = np.zeros(V + 3, np.float32)
    bias[m.eos_id] = 1e4
    m.generator.bias.copy_(bias)
    for beams in (1, 3):
        assert m.generate(SRC, num_beams=beams).sequences == [[m.eos_id]] * 3
    assert m.generate(SRC, max_new_tokens=0).sequences == [[]] * 3
    bias[:] = 0
    bias[7] = 1e4
    m.generator.bias.copy_(bias)
    out = m.generate(pad_batch([[5, 6, 7], [5, 6, 7, 8]]), max_len_a=1.0, max_len_b=2)
    assert out.sequences == [[7] * 5, [7] * 6]  # 1.0 · S_i + 2 tokens each, members finish apart
    out = m.generate(SRC, max_len_a=100.0)
    assert all(len(s) == m.max_len for s in out.sequences)  # capped by the position table


def test_sampling_is_seeded_and_independent_of_the_batch():
    m = seq2seq(5).eval()
    kw = dict(do_sample=True, top_k=8, top_p=0.9, temperature=1.3, num_return_sequences=2, max_new_tokens=10)
    a = m.generate(SRC, seed=7, **kw)
    assert a.sequences == m.generate(SRC, seed=7, **kw).sequences
    assert a.sequences != m.generate(SRC, seed=8, **kw).sequences
    alone = m.generate(SRC[1:2], seed=7, **kw)
    # Input 1 alone is input 0 of its batch: same seed, but a different sequence index.
    assert len(alone.sequences) == 2
    tfm_rs.manual_seed(3)
    b = m.generate(SRC, **kw)
    tfm_rs.manual_seed(3)
    assert m.generate(SRC, **kw).sequences == b.sequences


def test_gpt_generate_stream_and_ragged_prompts():
    m = gpt()
    prompts = [[3, 1, 4], [1], [5, 9, 2, 6, 5]]
    out = m.generate(prompts, max_new_tokens=6)
    for p, seq in zip(prompts, out.sequences):
        assert seq[: len(p)] == p and len(seq) == len(p) + 6
        # Reference: re-run the model over the prefix each step.
        ids = list(p)
        with tfm_rs.no_grad():
            for _ in range(6):
                ids.append(int(m.eval()(np.array([ids])).numpy()[0, -1].argmax()))
        assert seq == ids
        assert list(m.stream(p, 6)) == seq[len(p):]
    assert m.generate(np.array(prompts[0]), 6).sequences[0] == out.sequences[0]
    eos = out.sequences[0][4]
    stopped = m.generate([prompts[0]], 6, eos_token_id=eos).sequences[0]
    assert stopped == out.sequences[0][:5]
    nb = m.generate(prompts, 6, num_beams=3, no_repeat_ngram_size=2, repetition_penalty=1.5)
    for p, s in zip(prompts, nb.sequences):
        grams = [tuple(s[i:i + 2]) for i in range(len(s) - 1)]
        assert len(grams) == len(set(grams))


def test_translate_returns_text_in_input_order():
    from tfm_rs.tasks.numbers import NumbersTask

    task = NumbersTask("en", num_train=50, num_heldout=10, seed=0)
    tfm_rs.manual_seed(0)
    m = transformer_tiny(len(task.src_vocab), len(task.tgt_vocab))
    sents = ["12", "345", "7", "60"]
    out = m.translate(sents, task.tokenizer, batch_size=2)
    assert len(out) == 4 and all(isinstance(s, str) for s in out)
    for s, o in zip(sents, out):
        assert m.translate([s], task.tokenizer)[0] == o


# ---------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors():
    m = seq2seq()
    g = gpt()
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="vocabulary"):
        m.generate([[5, V + 1]])
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="vocabulary"):
        g.generate([[1, -3]])
    with pytest.raises(tfm_rs.InvalidArgumentError, match="num_beams"):
        m.generate(SRC, num_beams=0)
    for top_p in (0.0, 1.5, -0.1):
        with pytest.raises(tfm_rs.InvalidArgumentError, match="top_p"):
            g.generate([1, 2], do_sample=True, top_p=top_p)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="temperature"):
        g.generate([1, 2], do_sample=True, temperature=-1.0)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="num_beams"):
        g.generate([1, 2], num_beams=-2)
    with pytest.raises(tfm_rs.ShapeError, match="max_len"):
        g.generate([1] * 21)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="max_len=20"):
        g.generate([1] * 15, max_new_tokens=10)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="num_return_sequences"):
        m.generate(SRC, num_beams=2, num_return_sequences=3)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="stream"):
        next(g.stream([1, 2], num_beams=2))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="empty"):
        m.generate([[0, 0]])
    with pytest.raises(tfm_rs.InvalidArgumentError, match="batch_size"):
        m.translate(["1"], None, batch_size=0)


def test_translate_with_a_subword_tokenizer_keeps_empty_sentences():
    from tfm_rs.data import train_tokenizer

    sents = ["ein hund läuft", "ein mann sitzt auf dem gras", "rot und blau"] * 5
    tok = train_tokenizer([], 40, texts=sents, min_frequency=1)
    tfm_rs.manual_seed(0)
    m = transformer_tiny(tok.vocab_size, share_embeddings=True)
    out = m.translate(["ein hund", "", "rot"], tok, num_beams=2)
    assert out[1] == "" and len(out) == 3
    assert out[0] == m.translate(["ein hund"], tok, num_beams=2)[0]


# ---------------------------------------------------------------- the contract


def test_decode_imports_nothing_from_models():
    """tfm_rs.decode works through its protocols: no module of it imports tfm_rs.models (or a
    submodule), at the top or inside a function, absolutely or relatively."""
    import ast
    import pathlib

    import tfm_rs.decode

    root = pathlib.Path(tfm_rs.decode.__file__).parent
    files = sorted(root.glob("*.py"))
    assert len(files) >= 4, files
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = "tfm_rs" if node.level == 2 else ("tfm_rs.decode" if node.level == 1 else node.module or "")
                mod = f"{base}.{node.module}" if node.level and node.module else base
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names
                          if n == "tfm_rs.models" or n.startswith("tfm_rs.models.")]
    assert not offenders, offenders


def test_decode_calls_nothing_private_on_the_model():
    """No ``model._x`` in tfm_rs.decode: the model's side of the contract is public."""
    import ast
    import pathlib

    import tfm_rs.decode

    found = []
    for path in sorted(pathlib.Path(tfm_rs.decode.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "model"
                    and node.attr.startswith("_")):
                found.append(f"{path.name}:{node.lineno} model.{node.attr}")
    assert not found, found


def test_models_implement_the_decoding_protocols():
    from tfm_rs.decode import CausalLanguageModel, DecodableModel, EncoderDecoderModel

    s, g = seq2seq(), gpt()
    assert isinstance(s, EncoderDecoderModel) and not isinstance(s, CausalLanguageModel)
    assert isinstance(g, CausalLanguageModel) and not isinstance(g, EncoderDecoderModel)
    assert isinstance(s, DecodableModel) and isinstance(g, DecodableModel)
    # The spec holds the model's own tensors (no copies): decoding sees the current weights.
    spec = s.decoder_spec()
    assert spec.embed is s.tgt_embed.weight and spec.head is s.generator
    assert len(spec.layers) == 2 and spec.layers[0].cross_attn is s.transformer.decoder.layers[0].multihead_attn


def test_decoding_rejects_a_model_without_the_protocol():
    from tfm_rs.decode import generate_lm, generate_seq2seq

    with pytest.raises(tfm_rs.InvalidArgumentError, match="EncoderDecoderModel"):
        generate_seq2seq(gpt(), SRC)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="CausalLanguageModel"):
        generate_lm(seq2seq(), [[1, 2]])
    with pytest.raises(tfm_rs.InvalidArgumentError, match="decoder_spec"):
        decoder_weights(object())
