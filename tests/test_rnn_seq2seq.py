"""RNNSeq2Seq (RNNsearch): shapes and loss, teacher-forced steps equal the decoding steps, beam
search of width 1 equals greedy, checkpoints, bad input, and (slow) learning the NumbersTask
with the Seq2SeqTrainer."""

from __future__ import annotations

import numpy as np
import pytest

import tfm_rs
from tfm_rs.models import RNNSeq2Seq, model_from_checkpoint
from tfm_rs.checkpoint import save_checkpoint


def tiny(**kw):
    tfm_rs.manual_seed(0)
    return RNNSeq2Seq(11, 13, embed_dim=6, hidden_size=8, attention_dim=5, dropout=0.0, max_len=20, **kw)


SRC = np.array([[3, 4, 5, 6], [7, 8, 0, 0]])
TGT = np.array([[1, 3, 4, 5, 6], [1, 9, 10, 0, 0]])


@pytest.mark.parametrize("input_feeding", [True, False])
def test_forward_loss_and_gradients(input_feeding):
    m = tiny(input_feeding=input_feeding, num_encoder_layers=2)
    logits = m(SRC, TGT)
    assert logits.shape == (2, 5, 13)
    loss = m.loss(SRC, TGT[:, :-1], TGT[:, 1:])
    assert np.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("input_feeding", [True, False])
def test_decoding_steps_equal_the_teacher_forced_forward(input_feeding):
    m = tiny(input_feeding=input_feeding).eval()
    want = tfm_rs.functional.log_softmax(m(SRC, TGT), -1).numpy()
    with tfm_rs.no_grad():
        memory, h0 = m._encode(SRC)
        state = m._initial_state(h0)
        for t in range(TGT.shape[1]):
            lp, state = m._log_probs(TGT[:, t], state, memory)
            lp[:, m.pad_id] = want[:, t, m.pad_id]
            np.testing.assert_allclose(lp, want[:, t], rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_a_translation():
    m = tiny().eval()
    alone = m(SRC[1:, :2], TGT[1:]).numpy()
    padded = m(SRC, TGT).numpy()[1:]
    np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-6)


def test_beam_one_equals_greedy_and_beams_are_ranked():
    m = tiny()
    greedy = m.generate(SRC, max_new_tokens=6)
    beam1 = m.generate(SRC, max_new_tokens=6, num_beams=1)
    assert greedy.sequences == beam1.sequences
    beam = m.generate(SRC, max_new_tokens=6, num_beams=3, num_return_sequences=3)
    assert len(beam.sequences) == 6
    for i in range(2):
        s = beam.scores[3 * i: 3 * i + 3]
        assert s == sorted(s, reverse=True)
        assert all(0 < len(q) <= 6 for q in beam.sequences[3 * i: 3 * i + 3])
    assert all(m.pad_id not in q for q in beam.sequences + greedy.sequences)


def test_checkpoint_round_trip(tmp_path):
    m = tiny(input_feeding=False)
    save_checkpoint(tmp_path / "ck", m.state_dict(), m.config)
    again = model_from_checkpoint(tmp_path / "ck")
    assert isinstance(again, RNNSeq2Seq) and again.config == m.config
    np.testing.assert_array_equal(again.eval()(SRC, TGT).numpy(), m.eval()(SRC, TGT).numpy())


def test_bad_input():
    with pytest.raises(tfm_rs.InvalidArgumentError):
        RNNSeq2Seq(0, 5)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="hidden_size"):
        RNNSeq2Seq(5, 5, hidden_size=0)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="num_layers"):
        RNNSeq2Seq(5, 5, num_encoder_layers=0)
    m = tiny()
    with pytest.raises(tfm_rs.InvalidArgumentError, match="empty"):
        m(np.array([[0, 0]]), np.array([[1]]))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="num_return_sequences"):
        m.generate(SRC, num_beams=2, num_return_sequences=3)


@pytest.mark.slow
def test_learns_the_numbers_task():
    from tfm_rs.tasks.numbers import BOS, EOS, PAD, NumbersTask
    from tfm_rs.train import Seq2SeqTrainer, TrainConfig

    task = NumbersTask("en", num_train=3000, num_heldout=100, seed=3)
    src, tgt = task.train_pairs()
    m = RNNSeq2Seq(len(task.src_vocab), len(task.tgt_vocab), embed_dim=32, hidden_size=64, dropout=0.0,
                   max_len=64, pad_id=PAD, bos_id=BOS, eos_id=EOS)
    cfg = TrainConfig(max_tokens=1500, lr=3e-3, warmup_steps=30, label_smoothing=0.0, max_steps=400,
                      print_every=0, clip_norm=1.0, seed=1)
    Seq2SeqTrainer(m, (src, tgt), cfg).train(verbose=False)
    hs, ht = task.heldout_pairs()
    out = m.generate(tfm_rs.data.batching.pad_batch(hs[:100], PAD), num_beams=1)
    exact = np.mean([o[:-1] == t for o, t in zip(out.sequences, ht[:100])])
    beam = m.generate(tfm_rs.data.batching.pad_batch(hs[:20], PAD), num_beams=1)
    assert beam.sequences == out.sequences[:20]
    assert exact >= 0.5, f"exact-match accuracy {exact:.2f} after 400 steps"
