"""tfm_rs.train.distill: the word-level distillation loss against float64 references (value and
analytic gradient), its reduction to cross-entropy, the trainers on a tiny model, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import tfm_rs
import tfm_rs.functional as F
from tfm_rs.models import Seq2SeqTransformer
from tfm_rs.train import TrainConfig
from tfm_rs.train.distill import WordDistillationTrainer, distillation_loss, teacher_translations
from tfm_rs.train.trainer import Seq2SeqTrainer
from helpers import assert_close, randn


def softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("N,V", [(1, 3), (17, 5), (6, 127)])
def test_one_hot_teacher_at_t1_is_cross_entropy(N, V):
    logits = randn((N, V), 1, 3.0)
    targets = np.random.default_rng(2).integers(0, V, N)
    targets[0] = -100 if N > 1 else targets[0]
    one_hot = np.zeros((N, V))
    one_hot[np.arange(N), np.maximum(targets, 0)] = 1.0
    a, b = tfm_rs.Tensor(logits, requires_grad=True), tfm_rs.Tensor(logits, requires_grad=True)
    kd = distillation_loss(a, targets, teacher_probs=one_hot, temperature=1.0, alpha=1.0)
    ce = F.cross_entropy(b, targets, ignore_index=-100)
    assert_close(kd.numpy(), ce.numpy(), 1e-6, 1e-6, "value")
    kd.backward()
    ce.backward()
    assert_close(a.grad.numpy(), b.grad.numpy(), 1e-6, 1e-7, "gradient")


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_kd_term_value_and_gradient_against_float64(T):
    N, V = 17, 11
    s, t = randn((N, V), 3, 2.0), randn((N, V), 4, 2.0)
    targets = np.random.default_rng(5).integers(0, V, N)
    targets[[2, 9]] = 0  # ignored (pad)
    keep = targets != 0
    x = tfm_rs.Tensor(s, requires_grad=True)
    loss = distillation_loss(x, targets, t, temperature=T, alpha=1.0, ignore_index=0)
    p, q = softmax64(t / T), softmax64(s / T)
    kl = np.sum(p * (np.log(p) - np.log(q)), axis=1)
    assert_close(loss.numpy(), T * T * kl[keep].mean(), 1e-5, 1e-6, "T²·KL")
    loss.backward()
    grad = np.where(keep[:, None], T * (q - p), 0.0) / keep.sum()  # d(T²·KL)/ds = T·(q − p)
    assert_close(x.grad.numpy(), grad, 1e-5, 1e-7, "gradient")


def test_mixture_with_label_smoothed_cross_entropy():
    N, V, T, alpha, eps = 9, 7, 3.0, 0.3, 0.1
    s, t = randn((N, V), 6), randn((N, V), 7)
    targets = np.random.default_rng(8).integers(0, V, N)
    loss = distillation_loss(tfm_rs.Tensor(s), targets, t, temperature=T, alpha=alpha, label_smoothing=eps,
                             reduction="sum")
    p, q = softmax64(t / T), softmax64(s / T)
    log_q1 = np.log(softmax64(s))
    ce = -(1 - eps) * log_q1[np.arange(N), targets] - eps * log_q1.mean(1)
    expected = alpha * T * T * np.sum(p * (np.log(p) - np.log(q))) + (1 - alpha) * ce.sum()
    assert_close(loss.numpy(), expected, 1e-5, 1e-5, "mixture")


def test_bad_input():
    x = tfm_rs.Tensor(randn((3, 4), 0))
    with pytest.raises(tfm_rs.ShapeError, match="same vocabulary"):
        distillation_loss(x, [0, 1, 2], randn((3, 5), 1))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="temperature"):
        distillation_loss(x, [0, 1, 2], randn((3, 4), 1), temperature=0.0)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="alpha"):
        distillation_loss(x, [0, 1, 2], randn((3, 4), 1), alpha=1.5)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="exactly one"):
        distillation_loss(x, [0, 1, 2])


def model(d_model=16, vocab=19, **kw):
    tfm_rs.manual_seed(kw.pop("seed", 0))
    return Seq2SeqTransformer(vocab, vocab, d_model=d_model, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                              dim_feedforward=32, dropout=0.0, max_len=24, **kw)


def toy_data(n=24, vocab=19, seed=0):
    rng = np.random.default_rng(seed)
    src = [list(rng.integers(3, vocab, rng.integers(2, 7))) for _ in range(n)]
    return src, [list(reversed(s)) for s in src]


def test_word_level_trainer_runs_teacher_frozen():
    teacher, student = model(32, seed=1), model(16, seed=2)
    before = {k: v.copy() for k, v in teacher.state_dict().items()}
    cfg = TrainConfig(max_tokens=200, max_steps=3, warmup_steps=1, lr=1e-3, log_every=0)
    trainer = WordDistillationTrainer(student, teacher, toy_data(), temperature=2.0, alpha=0.7, config=cfg)
    recs = [trainer.train_step() for _ in range(3)]
    assert all(np.isfinite(r["loss"]) for r in recs)
    for k, v in teacher.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert all(p.grad is None for p in teacher.parameters())


def test_identical_teacher_has_zero_kd_loss():
    student = model()
    teacher = copy.deepcopy(student)
    cfg = TrainConfig(max_tokens=200, label_smoothing=0.0, log_every=0)
    trainer = WordDistillationTrainer(student, teacher, toy_data(), temperature=3.0, alpha=1.0, config=cfg)
    batch = trainer.next_batch()
    assert abs(float(trainer.loss_sum(batch).numpy())) < 1e-4


def test_teacher_with_another_vocabulary_is_refused():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="same vocabulary"):
        WordDistillationTrainer(model(vocab=19), model(vocab=23), toy_data())


def test_sequence_level_data_is_the_teachers_beam_output_in_order():
    teacher = model(32, seed=3)
    src, _ = toy_data(10, seed=4)
    seen = []
    hyps, seconds = teacher_translations(teacher, src, num_beams=3, batch_size=4, max_new_tokens=8,
                                         progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (10, 10) and len(seen) == 3 and seconds >= 0
    for s, h in zip(src, hyps):
        one = list(teacher.generate(np.array([s]), num_beams=3, max_new_tokens=8).sequences[0])
        assert h == (one[:-1] if one and one[-1] == teacher.eos_id else one)
    nonempty = [(s, h) for s, h in zip(src, hyps) if h]
    if nonempty:  # the student trains on the teacher's outputs with the ordinary trainer
        cfg = TrainConfig(max_tokens=200, max_steps=1, warmup_steps=1, log_every=0)
        rec = Seq2SeqTrainer(model(), ([s for s, _ in nonempty], [h for _, h in nonempty]), cfg).train_step()
        assert np.isfinite(rec["loss"])



def test_sources_longer_than_the_teachers_max_len_get_empty_targets():
    teacher = model(32, seed=3)
    src = [[5, 6, 7], [4] * (teacher.max_len + 1), [8, 9]]
    seen = []
    hyps, _ = teacher_translations(teacher, src, num_beams=2, batch_size=4, max_new_tokens=4,
                                   progress=lambda done, total: seen.append((done, total)))
    assert hyps[1] == [] and seen == [(2, 2)]
    one = list(teacher.generate(np.array([src[2]]), num_beams=2, max_new_tokens=4).sequences[0])
    assert hyps[2] == (one[:-1] if one and one[-1] == teacher.eos_id else one)

TINY = ["--preset", "tiny", "--num-train", "200", "--num-heldout", "20", "--max-tokens", "600", "--warmup", "5",
        "--lr", "3e-3", "--quiet"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from tfm_rs.cli import main

    run = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", *TINY, "--d-model", "48", "--layers", "2", "--max-steps", "6", "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("level", ["word", "sequence"])
def test_distill_command_writes_a_student_run(teacher_run, tmp_path, capsys, level):
    import json

    from tfm_rs import runs
    from tfm_rs.cli import main

    out = tmp_path / level
    status = main(["distill", "--teacher", str(teacher_run), "--preset", "tiny", "--level", level, "--max-steps",
                   "3", "--beams", "2", "--out", str(out), "--quiet", "--no-bar"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3 and results["distill"]["level"] == level
    assert results["command"].startswith("tfm-rs distill --teacher")
    if level == "sequence":
        assert "sequence-level data: the teacher translated 200 sources" in printed
        assert results["distill"]["teacher_seconds"] >= 0
    else:
        assert results["distill"]["temperature"] == 2.0
    student, teacher = runs.load_run(out, need_valid=False).model, runs.load_run(teacher_run, need_valid=False).model
    assert (student.config["d_model"], student.config["num_encoder_layers"]) == (32, 1)  # the preset, not the teacher
    assert (teacher.config["d_model"], teacher.config["num_encoder_layers"]) == (48, 2)
    assert student.num_parameters() < teacher.num_parameters()


def test_distill_from_a_missing_teacher_is_a_clear_error(tmp_path, capsys):
    from tfm_rs.cli import main

    status = main(["distill", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "s"), "--max-steps", "1"])
    assert status == 2 and "no such run directory" in capsys.readouterr().err
