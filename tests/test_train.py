"""Training loop: exact resume, logs, accumulation, the recipe end to end."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import tfm_rs
from tfm_rs.data import collate
from tfm_rs.checkpoint import IncompatibleCheckpointError, load_checkpoint
from tfm_rs.models import transformer_tiny
from tfm_rs.optim import InverseSqrtLR
from tfm_rs.train import Seq2SeqTrainer, TrainConfig
from torch_ref import require_torch

V = 24


def synthetic(n=60, seed=0):
    """Reverse-copy pairs of varying length (ids 4..V-1)."""
    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for _ in range(n):
        s = rng.integers(4, V, rng.integers(2, 9)).tolist()
        src.append(s)
        tgt.append(s[::-1])
    return src, tgt


def make_trainer(tmp_path=None, seed=0, **cfg):
    tfm_rs.manual_seed(seed)
    model = transformer_tiny(V, dropout=0.1, share_embeddings=True)
    defaults = dict(max_tokens=120, warmup_steps=4, lr=3e-3, accum_steps=2, clip_norm=1.0, seed=3, print_every=0)
    defaults.update(cfg)
    return Seq2SeqTrainer(model, synthetic(), TrainConfig(**defaults), out_dir=tmp_path)


def test_exact_resume(tmp_path):
    k, m = 5, 4
    full = make_trainer()
    assert len(full.sampler) < 2 * (k + m)  # the run crosses an epoch boundary
    ref = [r["loss"] for r in full.train(max_steps=k + m, verbose=False)]

    first = make_trainer(tmp_path / "a")
    part1 = [r["loss"] for r in first.train(max_steps=k, verbose=False)]
    first.save(tmp_path / "ck")
    first.close()
    # A different seed: every generator starts elsewhere and must be restored from the checkpoint.
    second = make_trainer(tmp_path / "b", seed=123)
    tfm_rs.manual_seed(999)
    second.resume(tmp_path / "ck")
    assert second.step == k
    part2 = [r["loss"] for r in second.train(max_steps=k + m, verbose=False)]
    assert part1 + part2 == ref  # bit-identical, not approximately equal
    np.testing.assert_array_equal(second.model.state_dict()["src_embed.weight"],
                                  full.model.state_dict()["src_embed.weight"])


def test_checkpoint_contents(tmp_path):
    t = make_trainer(tmp_path)
    t.train(max_steps=2, verbose=False)
    t.save()
    ck = load_checkpoint(tmp_path / "checkpoint")
    assert ck.config["arch"] == "Seq2SeqTransformer"
    assert ck.extra["step"] == 2
    for key in ("sampler", "numpy_rng", "tfm_rng", "init_rng", "train_config", "warmup_end"):
        assert key in ck.extra
    # The schedule is a closed form of the step, training time and warmup end: no scheduler state.
    assert ck.optimizer_state["state"] and ck.scheduler_state is None and ck.extra["warmup_end"] is None


def test_resume_into_other_architecture_raises(tmp_path):
    t = make_trainer()
    t.train(max_steps=1, verbose=False)
    t.save(tmp_path / "ck")
    tfm_rs.manual_seed(0)
    other = Seq2SeqTrainer(transformer_tiny(V, d_model=16, nhead=2, share_embeddings=True), synthetic(),
                           TrainConfig(max_tokens=120, print_every=0))
    with pytest.raises(IncompatibleCheckpointError, match="d_model"):
        other.resume(tmp_path / "ck")


def test_jsonl_log_and_schedule(tmp_path):
    t = make_trainer(tmp_path, accum_steps=1, clip_norm=None, warmup_steps=3, lr=1e-3)
    recs = t.train(max_steps=5, verbose=False)
    t.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["step"]) for r in lines] == [("train", 1), ("train", 2), ("warmup", 3), ("train", 3),
                                                      ("train", 4), ("train", 5)]
    assert lines[2]["ended_by"] == "warmup_steps" and t.warmup_end == (3, 3 / 5)
    for r in (r for r in lines if r["type"] == "train"):
        for key in ("loss", "lr", "grad_norm", "tokens", "tokens_per_s", "train_time", "elapsed"):
            assert np.isfinite(r[key])
    lrs = [r["lr"] for r in recs]
    np.testing.assert_allclose(lrs, [1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3 * np.sqrt(3 / 4), 1e-3 * np.sqrt(3 / 5)])
    assert t.optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    assert t.optimizer.param_groups[0]["eps"] == 1e-9


def _rates(t, steps, seconds_per_step=0.0):
    """The rates the trainer's schedule gives over ``steps`` updates, with training time advanced
    by ``seconds_per_step`` per update (no training: the schedule is a function of the counters)."""
    out = []
    for _ in range(steps):
        out.append(t.scheduled_lr())
        t.step += 1
        t.train_time += seconds_per_step
    return out


@pytest.mark.parametrize("schedule", ["noam", "constant"])
def test_schedule_equals_the_closed_form_schedulers_bit_for_bit(schedule):
    from tfm_rs.optim import Adam, LambdaLR

    w, peak, n = 7, 7e-4, 40
    t = make_trainer(warmup_steps=w, lr=peak, schedule=schedule, max_steps=n)
    opt = Adam([tfm_rs.nn.Parameter(np.zeros(1, np.float32))], lr=peak)
    ref = (InverseSqrtLR(opt, w, peak_lr=peak) if schedule == "noam"
           else LambdaLR(opt, lambda e: min(1.0, (e + 1) / w)))
    want = []
    for _ in range(n):
        want.append(ref.get_last_lr()[0])
        ref.step()
    assert _rates(t, n) == want  # exactly: the Multi30k recipe's losses depend on it


def test_cosine_schedule_is_warmup_cosine_lr_under_a_step_budget():
    from tfm_rs.optim import Adam, WarmupCosineLR

    w, peak, n, ratio = 5, 1e-3, 30, 0.1
    t = make_trainer(warmup_steps=w, lr=peak, schedule="cosine", max_steps=n, min_lr_ratio=ratio)
    ref = WarmupCosineLR(Adam([tfm_rs.nn.Parameter(np.zeros(1, np.float32))], lr=peak), w, n, min_lr=peak * ratio)
    want = []
    for _ in range(n):
        want.append(ref.get_last_lr()[0])
        ref.step()
    np.testing.assert_allclose(_rates(t, n), want, rtol=1e-12, atol=0)


def test_a_short_budget_ends_the_warmup_early():
    # 800 warmup steps but a 40-step budget: with warmup_fraction 0.25 the ramp reaches the peak at
    # step 10, then the inverse square root decays from there.
    t = make_trainer(warmup_steps=800, lr=1e-3, max_steps=40, warmup_fraction=0.25)
    got = _rates(t, 40)
    assert t.warmup_end == (10, 0.25)
    np.testing.assert_allclose(got[:10], [1e-3 * s / 10 for s in range(1, 11)], rtol=1e-12)
    np.testing.assert_allclose(got[10:], [1e-3 * np.sqrt(10 / s) for s in range(11, 41)], rtol=1e-12)
    # Without it, all 40 steps stay in the warmup.
    t = make_trainer(warmup_steps=800, lr=1e-3, max_steps=40)
    assert max(_rates(t, 40)) == pytest.approx(1e-3 * 40 / 800) and t.warmup_end is None


def test_a_time_budget_scales_the_warmup():
    # A 1-minute budget at 1.5 s per update (a simulated clock, so the test does not depend on this
    # machine's speed): 25% of the budget is used after update 10 (15 s), where the warmup ends.
    t = make_trainer(warmup_steps=800, lr=1e-3, max_minutes=1.0, warmup_fraction=0.25)
    got = _rates(t, 40, seconds_per_step=1.5)
    end, frac = t.warmup_end
    assert end == 11 and frac == pytest.approx(0.25)
    assert got[end - 1] == 1e-3 and got[end - 2] < 1e-3
    np.testing.assert_allclose(got[end:], [1e-3 * np.sqrt(end / s) for s in range(end + 1, 41)], rtol=1e-12)
    rec = [r for r in t.history if r["type"] == "warmup"]
    assert rec == [{"type": "warmup", "step": 11, "warmup_steps": 11, "budget_fraction": frac,
                    "ended_by": "warmup_fraction"}]


def test_accumulation_is_token_mean_over_the_step():
    # Two micro-batches accumulated = the same examples in one batch (no dropout, same order).
    tfm_rs.manual_seed(0)
    a = transformer_tiny(V, share_embeddings=True)
    tfm_rs.manual_seed(0)
    b = transformer_tiny(V, share_embeddings=True)
    src, tgt = synthetic(8)
    cfg = dict(max_tokens=10_000, print_every=0, label_smoothing=0.1)
    ta = Seq2SeqTrainer(a, (src, tgt), TrainConfig(accum_steps=1, **cfg))
    tb = Seq2SeqTrainer(b, (src, tgt), TrainConfig(accum_steps=2, **cfg))
    batch = ta.next_batch()
    halves = [batch.indices[:4], batch.indices[4:]]
    parts = iter(halves)

    def next_half():
        idx = next(parts)
        return collate([src[i] for i in idx], [tgt[i] for i in idx], 0, 1, 2, idx)

    tb.next_batch = next_half
    ta.next_batch = lambda: batch
    ra, rb = ta.train_step(), tb.train_step()
    assert abs(ra["loss"] - rb["loss"]) < 1e-5
    assert abs(ra["grad_norm"] - rb["grad_norm"]) < 1e-4 * ra["grad_norm"]


def test_trainer_learns_and_reports_bleu(tmp_path):
    from tfm_rs.data import train_tokenizer

    words = ["ein", "hund", "mann", "rot", "blau", "läuft", "sitzt", "auf", "dem", "gras"]
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(words, rng.integers(2, 6))) for _ in range(200)]
    tok = train_tokenizer([], 40, texts=sents, min_frequency=1)
    ids = tok.encode_batch(sents)
    tfm_rs.manual_seed(0)
    model = transformer_tiny(tok.vocab_size, share_embeddings=True)
    cfg = TrainConfig(max_tokens=400, lr=3e-3, warmup_steps=10, print_every=0, bleu_subset=20)
    t = Seq2SeqTrainer(model, (ids, ids), cfg, out_dir=tmp_path, valid_data=(ids[:20], ids[:20]),
                       valid_texts=(sents[:20], sents[:20]), tokenizer=tok)
    before = t.validation_loss()["loss"]
    t.train(max_steps=40, verbose=False)
    v = t.validate()
    assert v["loss"] < 0.5 * before
    assert 0.0 <= v["bleu"] <= 100.0
    assert model.translate(["", sents[0]], tok, num_beams=1)[0] == ""
    kinds = [json.loads(x)["type"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("valid") == 1 and kinds.count("train") == 40


def test_recipe_end_to_end(tmp_path):
    from tfm_rs.train.seq2seq import main

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    words = ["a", "b", "c", "d", "e", "f"]
    for split, n in (("train", 120), ("val", 10), ("test", 10)):
        src = [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(n)]
        (data / f"{split}.xx").write_text("\n".join(src) + "\n")
        with gzip.open(data / f"{split}.yy.gz", "wt") as f:
            f.write("\n".join(s.upper() for s in src) + "\n")
    assert main(["--data", str(data), "--src", "xx", "--tgt", "yy", "--test-split", "test", "--out",
                str(tmp_path / "run"), "--preset", "tiny", "--vocab-size", "40", "--minutes", "0", "--max-steps",
                "3", "--max-tokens", "200", "--warmup", "2", "--valid-every", "2", "--bleu-every", "2",
                "--save-every", "2", "--print-every", "0", "--average", "2", "--average-every", "1"]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["steps"] == 3 and 0.0 <= res["bleu"] <= 100.0
    for name in ("tokenizer.json", "metrics.jsonl", "results.json", "test.hyp.txt", "checkpoint", "averaged"):
        assert (tmp_path / "run" / name).exists()
    # Two snapshots: step 2 (also the previous checkpoint, saved every 2 steps) and the last, step 3.
    assert res["averaged_snapshots"] == 2 and 0.0 <= res["bleu_greedy_last"] <= 100.0
    from tfm_rs.checkpoint import load_checkpoint
    s2, s3 = (load_checkpoint(tmp_path / "run" / d).model_state for d in ("checkpoint.prev", "checkpoint"))
    avg = load_checkpoint(tmp_path / "run" / "averaged").model_state
    assert any(not np.array_equal(s2[k], s3[k]) for k in s3)
    for k in s3:
        np.testing.assert_allclose(avg[k], (s2[k].astype(np.float64) + s3[k]) / 2, rtol=1e-6, atol=1e-7)
    assert main(["--data", str(data), "--src", "xx", "--tgt", "yy", "--test-split", "test", "--out",
                 str(tmp_path / "run"), "--minutes", "0", "--max-steps", "4", "--max-tokens",
                 "200", "--warmup", "2", "--valid-every", "0", "--bleu-every", "0", "--save-every", "0",
                 "--print-every", "0", "--resume"]) == 0
    res2 = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res2["steps"] == 4  # the saved config (preset tiny) was the base, not the shipped one
    # Snapshots taken before the resume are not kept: the average is this session's.
    assert load_checkpoint(tmp_path / "run" / "averaged").extra["step"] == 4
    # The recipe's run directory is a tfm-rs run directory: config.toml, and the commands work on it.
    from tfm_rs import runs
    run = runs.load_run(tmp_path / "run")
    assert run.kind == "seq2seq" and run.config["train"]["max_steps"] == 4
    assert runs.evaluate_run(run, limit=3)["sentences"] == 3
    # A directory of the former recipe script had no config.toml, only the command in results.json:
    # it is read as the configuration that command stands for, and resumes.
    (tmp_path / "run" / "config.toml").unlink()
    legacy = {"command": f"python -m tfm_rs.train.seq2seq --data {data} --src xx --tgt yy --test-split test "
                         f"--out elsewhere --preset tiny --vocab-size 40 --max-steps 3 --max-tokens 200 --warmup 2",
              "steps": 4}
    (tmp_path / "run" / "results.json").write_text(json.dumps(legacy))
    cfg = runs.load_config(tmp_path / "run")
    assert cfg["model"]["preset"] == "tiny" and cfg["data"]["corpus"] is None
    assert cfg["train"]["out"] == str((tmp_path / "run").absolute()) and cfg["data"]["test_src"].endswith("test.xx")
    assert runs.evaluate_run(runs.load_run(tmp_path / "run"), limit=2)["sentences"] == 2
    from tfm_rs.cli import main as cli_main
    assert cli_main(["train", "--resume", "--out", str(tmp_path / "run"), "--max-steps", "5", "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 5


def test_torch_twin_is_the_same_function():
    """The benchmark's PyTorch model, given our weights and run in float64, computes the same
    logits (torch is the reference: skipped without it, failed under CI; see torch_ref.py)."""
    torch = require_torch()
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benches" / "train_multi30k_torch.py"
    spec = importlib.util.spec_from_file_location("train_multi30k_torch", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for kw in ({"share_embeddings": True}, {"norm_first": True, "tie_output": True}):
        tfm_rs.manual_seed(0)
        m = transformer_tiny(V, **kw).eval()
        tm = bench.build_torch_model(m.config)
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
        tm.double().eval()
        src = np.array([[5, 6, 7, 8], [9, 10, 0, 0]])
        tgt = np.array([[1, 11, 12], [1, 13, 0]])
        with torch.no_grad():
            ref = tm(torch.from_numpy(src), torch.from_numpy(tgt)).numpy()
        # logits up to ~5; observed within 5.7e-7 of the float64 reference
        np.testing.assert_allclose(m(src, tgt).numpy()[0], ref[0], rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(m(src, tgt).numpy()[1, :2], ref[1, :2], rtol=1e-5, atol=2e-6)


def test_weight_averager_and_snapshot_points():
    from tfm_rs.train.averaging import WeightAverager, snapshot_points

    rng = np.random.default_rng(1)
    states = [{"a": rng.standard_normal((3, 17)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
              for _ in range(4)]
    avg = WeightAverager()
    for st in states:
        avg.add(st)
    out = avg.average()
    assert avg.count == 4 and list(out) == ["a", "b"]
    for k in ("a", "b"):
        assert out[k].dtype == np.float32
        np.testing.assert_allclose(out[k], np.mean([st[k].astype(np.float64) for st in states], axis=0),
                                   rtol=1e-6, atol=1e-7)
    with pytest.raises(KeyError, match="keys differ"):
        avg.add({"a": states[0]["a"]})
    with pytest.raises(ValueError, match="shape"):
        avg.add({"a": states[0]["a"].T, "b": states[0]["b"]})
    with pytest.raises(ValueError, match="nothing was added"):
        WeightAverager().average()
    assert snapshot_points(20.0, 5, 1.0) == [16.0, 17.0, 18.0, 19.0]
    assert snapshot_points(3, 5, 1) == [1, 2]  # points before the start are dropped
    assert snapshot_points(10, 1, 1) == []
    with pytest.raises(ValueError):
        snapshot_points(10, 0, 1)


def test_recipe_alias_translates_the_old_flags():
    from tfm_rs.train.seq2seq import translate_argv

    assert translate_argv(["--data", "multi30k", "--src", "de", "--tgt", "en", "--max-steps", "200", "--out", "x"]) == [
        "train", "--config", "multi30k", "--pair", "de-en", "--max-steps", "200", "--out", "x"]
    assert translate_argv(["--src=fr", "--no-share", "--accum", "2", "--print-every", "10", "--beam", "1"]) == [
        "train", "--config", "multi30k", "--pair", "fr-en", "--no-share-embeddings", "--accum-steps", "2",
        "--beam", "1"]
    assert translate_argv(["--out", "x", "--resume"]) == ["train", "--pair", "de-en", "--out", "x", "--resume"]
