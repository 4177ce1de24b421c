"""The shared Trainer's schedules and callback, and LMTrainer (GPT on a token stream)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tfm_rs
from tfm_rs.models import GPT, transformer_tiny
from tfm_rs.train import LMTrainer, Seq2SeqTrainer, TrainConfig
from tfm_rs.train.lm import BlockSampler, windows

V = 24


def stream(n=2000, seed=0):
    """A stream with structure: each token predicts the next one most of the time."""
    rng = np.random.default_rng(seed)
    out = [4]
    for _ in range(n - 1):
        out.append(4 + (out[-1] - 4 + 1) % (V - 4) if rng.random() < 0.9 else int(rng.integers(4, V)))
    return out


def gpt(seed=0, dropout=0.1):
    tfm_rs.manual_seed(seed)
    return GPT(V, d_model=32, nhead=2, num_layers=1, dim_feedforward=64, dropout=dropout, max_len=32)


def lm_trainer(out_dir=None, seed=0, dropout=0.1, **cfg):
    defaults = dict(max_tokens=128, warmup_steps=3, lr=3e-3, seed=5, print_every=0)
    defaults.update(cfg)
    ids = stream()
    return LMTrainer(gpt(seed, dropout), ids[:1600], TrainConfig(**defaults), block_size=16, out_dir=out_dir,
                     valid_ids=ids[1600:])


def test_windows_and_block_sampler():
    w = windows(list(range(35)), 4)
    assert w.shape == (7, 5) and w[1].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(tfm_rs.InvalidArgumentError, match="do not fill one window"):
        windows([1, 2, 3], 4)
    s = BlockSampler(10, 4, seed=1)
    first = list(s)
    assert sorted(i for b in first for i in b) == list(range(10)) and [len(b) for b in first] == [4, 4, 2]
    assert s.epoch == 1 and list(s) != first  # a new permutation each epoch
    s2 = BlockSampler(10, 4, seed=1)
    s2.load_state_dict({**s.state_dict(), "position": 1})
    assert next(iter(s2)) == s.batches_for_epoch(s.epoch)[1]
    with pytest.raises(tfm_rs.InvalidArgumentError, match="batch_size"):
        BlockSampler(10, 3).load_state_dict(s.state_dict())


def test_lm_trainer_learns_and_resumes_exactly(tmp_path):
    full = lm_trainer()
    before = full.validation_loss()
    ref = [r["loss"] for r in full.train(max_steps=30, verbose=False)]
    after = full.validation_loss()
    assert after["loss"] < 0.85 * before["loss"] and after["accuracy"] > before["accuracy"]
    assert len(full.sampler) < 30  # crosses epochs

    first = lm_trainer(tmp_path / "a")
    part1 = [r["loss"] for r in first.train(max_steps=17, verbose=False)]
    first.save()
    first.close()
    second = lm_trainer(tmp_path / "b", seed=99)
    second.resume(tmp_path / "a" / "checkpoint")
    part2 = [r["loss"] for r in second.train(max_steps=30, verbose=False)]
    assert part1 + part2 == ref
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["type"] == "train"] == list(range(1, 18))


def test_lm_trainer_rejects_other_data(tmp_path):
    t = lm_trainer(tmp_path)
    t.train(max_steps=1, verbose=False)
    t.save()
    ids = stream(seed=1)
    other = LMTrainer(gpt(), ids[:1600], TrainConfig(max_tokens=128, print_every=0), block_size=16)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="other data"):
        other.resume(tmp_path / "checkpoint")


def test_lm_loss_matches_the_models_own():
    t = lm_trainer(dropout=0.0)
    batch = t.next_batch()
    total = float(t.loss_sum(batch).item())
    n, _ = t.count_tokens(batch)
    assert n == batch.shape[0] * 16
    assert abs(total / n - float(t.model.loss(batch).item())) < 1e-5


@pytest.mark.parametrize("schedule", ["noam", "inverse_sqrt"])
def test_noam_is_inverse_sqrt_with_peak_lr(schedule):
    t = lm_trainer(schedule=schedule, warmup_steps=4, lr=1e-3)
    lrs = [r["lr"] for r in t.train(max_steps=8, verbose=False)]
    expected = [1e-3 * min(s / 4, math.sqrt(4 / s)) for s in range(1, 9)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_cosine_decays_to_the_floor_at_the_end_of_the_budget():
    t = lm_trainer(schedule="cosine", warmup_steps=2, lr=1e-3, min_lr_ratio=0.1, max_steps=10)
    lrs = [r["lr"] for r in t.train(verbose=False)]
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[1] == 1e-3  # warmup 1/2, then the peak
    # Then cosine_decay over the rest of the budget: progress (s - 2) / (10 - 2) at step s.
    floor = 1e-4
    want = [floor + (1e-3 - floor) * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(3, 11)]
    np.testing.assert_allclose(lrs[2:], want, rtol=1e-12)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] == pytest.approx(floor, rel=1e-12)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="cosine schedule needs max_steps or max_minutes"):
        lm_trainer(schedule="cosine")
    with pytest.raises(tfm_rs.InvalidArgumentError, match="schedule must be one of"):
        TrainConfig(schedule="linear")


def test_callback_sees_train_and_valid_records():
    seen = []
    tfm_rs.manual_seed(0)
    src = [[5, 6, 7], [8, 9], [10, 11, 12, 13]] * 5
    t = Seq2SeqTrainer(transformer_tiny(V), (src, src), TrainConfig(max_tokens=100, valid_every=2, print_every=0),
                       valid_data=(src[:3], src[:3]))
    t.train(max_steps=4, verbose=False, callback=seen.append)
    assert [(r["type"], r["step"]) for r in seen] == [("train", 1), ("train", 2), ("valid", 2), ("train", 3),
                                                      ("train", 4), ("valid", 4)]
    assert {"loss", "ppl", "accuracy", "elapsed"} <= set(seen[2])


def test_run_tokenizer_prefers_given_then_the_runs_own(tmp_path):
    from tfm_rs.data import run_tokenizer, train_tokenizer

    texts = ["a b c", "b c d", "c d e"] * 5
    calls = []

    def train():
        calls.append(1)
        return train_tokenizer([], 30, texts=iter(texts), min_frequency=1)

    own = tmp_path / "run" / "tokenizer.json"
    own.parent.mkdir()
    first = run_tokenizer(own, None, train)
    assert calls == [1] and own.is_file()
    again = run_tokenizer(own, None, train)  # a resumed run reads its own
    assert calls == [1] and again.get_vocab() == first.get_vocab()
    other = train_tokenizer([], 20, texts=iter(["x y z"] * 5), min_frequency=1)
    other.save(tmp_path / "given.json")
    used = run_tokenizer(own, tmp_path / "given.json", train)  # a given file wins, and the run keeps it
    assert calls == [1] and used.get_vocab() == other.get_vocab()
    assert run_tokenizer(own, None, train).get_vocab() == other.get_vocab()
