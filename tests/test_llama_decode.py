"""Llama decoding in the native engine (rotary positions, grouped-query attention, SwiGLU)
against the model's own full forward: the logits after every step equal those of the whole
sequence re-run (float32 on both sides, 1e-4 relative to the largest magnitude) for
multi-head, grouped-query and multi-query attention, odd widths and rotary scaling; a row
decodes to the same bits alone or in a batch; bad weights are refused with a TfmError. Greedy
tokens against ``transformers`` are in test_llama.py."""

import numpy as np
import pytest

import tfm_rs
from tfm_rs._core import Decoder, DecoderWeights
from tfm_rs.models import Llama

RTOL = 1e-4


def close(got, ref, rtol=RTOL):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < rtol, f"relative error {err:.2e}"


def llama(nhead, kv, seed=0, **kw):
    tfm_rs.manual_seed(seed)
    model = Llama(vocab_size=37, d_model=30, nhead=nhead, num_layers=2, dim_feedforward=17, num_kv_heads=kv,
                  head_dim=6, max_len=40, rope_theta=100.0, tie_weights=False, **kw).eval()
    # Larger than the 0.02 initialisation, so that attention and rotation matter to the logits.
    rng = np.random.default_rng(seed)
    with tfm_rs.no_grad():
        for p in model.parameters():
            p.copy_(tfm_rs.tensor(rng.normal(0, 0.3, p.shape).astype(np.float32) + p.numpy()))
    return model


@pytest.mark.parametrize("nhead, kv, scaling", [
    (4, 2, None), (3, 3, None), (4, 1, None), (4, 2, {"rope_type": "linear", "factor": 3.0}),
    (2, 1, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8}),
])
def test_every_step_equals_the_full_forward(nhead, kv, scaling):
    model = llama(nhead, kv, rope_scaling=scaling)
    ids = np.random.default_rng(1).integers(0, 37, (1, 23))
    full = model(ids).numpy()[0]
    decoder = Decoder(model.decoder_weights(), 1)
    close(decoder.feed([ids[0, :5].tolist()])[0], full[4])
    for t in range(5, 23):
        close(decoder.feed([[int(ids[0, t])]])[0], full[t])


def test_greedy_equals_the_argmax_of_the_full_forward():
    model = llama(4, 2)
    out = model.generate([3, 1, 4], max_new_tokens=12)
    seq = out.sequences[0]
    assert len(seq) == 15
    for t in range(3, 15):
        assert seq[t] == int(np.argmax(model(np.array([seq[:t]])).numpy()[0, -1]))


def test_a_row_decodes_to_the_same_bits_alone_or_in_a_batch():
    weights = llama(4, 2).decoder_weights()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8]]
    both = Decoder(weights, 2)
    got = [both.feed(prompts)]
    got.append(both.feed([[10], [11]]))
    for r, prompt in enumerate(prompts):
        one = Decoder(weights, 1)
        np.testing.assert_array_equal(one.feed([prompt])[0], got[0][r])
        np.testing.assert_array_equal(one.feed([[10 + r]])[0], got[1][r])


def test_sampling_and_max_len():
    model = llama(4, 2)
    a = model.generate([[3, 4], [5]], max_new_tokens=8, do_sample=True, top_k=10, seed=3)
    b = model.generate([[3, 4], [5]], max_new_tokens=8, do_sample=True, top_k=10, seed=3)
    assert a.sequences == b.sequences
    assert len(model.generate(list(range(36)), max_new_tokens=5).sequences[0]) == 41  # the last is never fed
    with pytest.raises(tfm_rs.InvalidArgumentError, match="needs 45 positions, but the model has max_len=40"):
        model.generate(list(range(36)), max_new_tokens=10)


def log_prob_of(model, seq, start):
    """Σ log P(seq[t] | seq[:t]) over t ≥ start, from the full forward in float64."""
    z = model(np.array([seq[:-1]])).numpy()[0].astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return sum(logp[t - 1, seq[t]] for t in range(start, len(seq)))


def test_beam_search_and_batched_prompts():
    """Prompts of different lengths decode together as each alone; beam hypotheses are distinct,
    ranked, and their log-probabilities are the full forward's."""
    model = llama(4, 2)
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    both = model.generate(prompts, max_new_tokens=6)
    assert both.sequences == [model.generate(p, max_new_tokens=6).sequences[0] for p in prompts]
    assert list(model.stream(prompts[0], max_new_tokens=6)) == both.sequences[0][5:]
    out = model.generate(prompts, max_new_tokens=6, num_beams=3, num_return_sequences=3, length_penalty=0.0)
    for i, p in enumerate(prompts):
        hyps, lps = out.sequences[3 * i:3 * i + 3], out.log_probs[3 * i:3 * i + 3]
        assert len({tuple(h) for h in hyps}) == 3 and all(h[:len(p)] == p for h in hyps)
        assert out.scores[3 * i:3 * i + 3] == sorted(out.scores[3 * i:3 * i + 3], reverse=True)
        for h, lp in zip(hyps, lps):
            assert abs(lp - log_prob_of(model, h, len(p))) < 1e-3 * max(1.0, abs(lp))


def test_bad_weights_and_inputs_are_refused():
    model = llama(4, 2)
    decoder = Decoder(model.decoder_weights(), 1)
    with pytest.raises(tfm_rs.TfmError, match="outside the vocabulary"):
        decoder.feed([[37]])
    with pytest.raises(tfm_rs.TfmError, match="max_len"):
        decoder.feed([list(range(30)) + list(range(11))])

    for bad, msg in [(dict(kv_heads=3), "multiple of kv_heads"), (dict(inv_freq=[1.0]), "head_dim/2"),
                     (dict(kv_heads=0), "kv_heads must be positive"), (dict(max_len=0), "max_len")]:
        spec = model._native_spec()
        spec["llama"] = {**spec["llama"], **bad}
        with pytest.raises(tfm_rs.TfmError, match=msg):
            DecoderWeights(spec)
    spec = model._native_spec()
    spec["positions"] = tfm_rs.tensor(np.zeros((40, 30), np.float32))
    with pytest.raises(tfm_rs.TfmError, match="not both"):
        DecoderWeights(spec)


def test_int8_model_decodes_with_its_int8_weights():
    """quantize_dynamic(llama): every step of the engine equals the quantized model's own full
    forward (both multiply int8 weights by per-row int8 activations), and greedy decoding runs."""
    from tfm_rs.quantization import quantize_dynamic

    model = quantize_dynamic(llama(4, 2))
    ids = np.random.default_rng(2).integers(0, 37, (1, 12))
    full = model(ids).numpy()[0]
    decoder = Decoder(model.decoder_weights(), 1)
    close(decoder.feed([ids[0, :4].tolist()])[0], full[3], rtol=1e-5)
    for t in range(4, 12):
        close(decoder.feed([[int(ids[0, t])]])[0], full[t], rtol=1e-5)
    float_logits = llama(4, 2)(ids).numpy()[0]
    assert np.abs(full - float_logits).max() > 1e-3 * np.abs(float_logits).max()  # int8 really ran
    assert len(model.generate([3, 1, 4], max_new_tokens=5).sequences[0]) == 8
