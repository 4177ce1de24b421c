"""tfm-rs train / translate / eval / plot end to end, on tiny configurations.

Most calls run ``tfm_rs.cli.main`` in process (fast); ``test_console_round_trip`` runs the real
``python -m tfm_rs`` in a subprocess once.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfm_rs import runs
from tfm_rs.cli import main

TINY = ["--preset", "tiny", "--num-train", "400", "--num-heldout", "40", "--max-tokens", "600", "--warmup", "5",
        "--lr", "3e-3", "--quiet"]


def cli(capsys, *args):
    """Run tfm-rs in process; returns (status, stdout, stderr)."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def records(run_dir, kind="train"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.fixture(scope="module")
def numbers_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("numbers") / "run"
    assert main(["train", *TINY, "--max-steps", "12", "--out", str(run)]) == 0
    return run


def test_train_writes_a_run_directory(numbers_run):
    for name in ("config.toml", "metrics.jsonl", "checkpoint"):
        assert (numbers_run / name).exists(), name
    train = records(numbers_run)
    assert [r["step"] for r in train] == list(range(1, 13))
    for r in train:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "elapsed"):
            assert np.isfinite(r[key]) and r[key] >= 0, key
    elapsed = [r["elapsed"] for r in train]
    assert elapsed == sorted(elapsed)
    (valid,) = records(numbers_run, "valid")  # the final validation
    assert valid["step"] == 12 and 0.0 <= valid["accuracy"] <= 1.0 and valid["ppl"] > 1.0
    # The saved configuration resolves to itself: it can repeat the run.
    from tfm_rs import config as cfg_lib

    saved = runs.load_config(numbers_run)
    assert saved["model"]["preset"] == "tiny" and saved["train"]["max_steps"] == 12
    assert cfg_lib.resolve(cfg_lib.load_toml(numbers_run / "config.toml")) == saved


def test_schedule_flag_reaches_the_trainer(tmp_path, capsys):
    status, out, _ = cli(capsys, "train", *TINY, "--max-steps", "6", "--warmup", "3", "--schedule", "constant",
                         "--warmup-fraction", "0", "--out", tmp_path / "r")
    assert status == 0 and "constant schedule" in out
    lrs = [r["lr"] for r in records(tmp_path / "r")]
    np.testing.assert_allclose(lrs, [1e-3, 2e-3, 3e-3, 3e-3, 3e-3, 3e-3])


def test_a_short_budget_gets_a_short_warmup(tmp_path, capsys):
    # 800 warmup steps asked for, a 12-step budget: the default warmup_fraction (25%) ends the warmup
    # at step 3; the run says so at the start and the end, and records it.
    status, out, _ = cli(capsys, "train", *TINY, "--max-steps", "12", "--warmup", "800", "--lr", "3e-3",
                         "--schedule", "noam", "--out", tmp_path / "r")
    assert status == 0
    assert "warmup 800 steps or 25% of the budget, whichever ends first" in out and "warmup: 3 steps (25%" in out
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in lines if r["type"] == "warmup"] == [
        {"type": "warmup", "step": 3, "warmup_steps": 3, "budget_fraction": 0.25, "ended_by": "warmup_fraction"}]
    lrs = [r["lr"] for r in lines if r["type"] == "train"]
    np.testing.assert_allclose(lrs, [1e-3, 2e-3, 3e-3] + [3e-3 * np.sqrt(3 / s) for s in range(4, 13)], rtol=1e-12)
    assert json.loads((tmp_path / "r" / "results.json").read_text())["warmup_steps"] == 3


def test_resume_continues_bit_identically(tmp_path, capsys):
    # The budget changes at the resume (5 → 8 steps), so the schedule must not depend on it: no
    # budget-scaled warmup here (a run resumed with its own budget gets it back exactly).
    common = [*TINY, "--schedule", "noam", "--dropout", "0.1", "--warmup-fraction", "0"]
    assert cli(capsys, "train", *common, "--max-steps", "8", "--out", tmp_path / "straight")[0] == 0
    assert cli(capsys, "train", *common, "--max-steps", "5", "--out", tmp_path / "split")[0] == 0
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:  # logged after the last save, then interrupted
        f.write(json.dumps({"type": "train", "step": 6, "loss": 9.0}) + "\n")
    status, out, _ = cli(capsys, "train", "--resume", "--out", tmp_path / "split", "--max-steps", "8")
    assert status == 0 and "resumed at step 5" in out
    straight = [r["loss"] for r in records(tmp_path / "straight")]
    split = [r["loss"] for r in records(tmp_path / "split")]
    assert [r["step"] for r in records(tmp_path / "split")] == list(range(1, 9))
    assert split == straight  # exact: data position, RNGs and optimizer state all restored
    assert runs.load_config(tmp_path / "split")["model"]["dropout"] == 0.1  # the saved config was the base


def test_train_refuses_to_overwrite_a_run(numbers_run, capsys):
    status, out, err = cli(capsys, "train", *TINY, "--max-steps", "1", "--out", numbers_run)
    assert status == 2 and "already holds a trained run; add --resume" in err


def test_translate_arguments_file_and_stdin(numbers_run, tmp_path, capsys, monkeypatch):
    run = runs.load_run(numbers_run, need_valid=False)
    expected = runs.translate_sentences(run.model, run.tokenizer, ["3 452", "17", "999 999"], task=run.data.task)
    status, out, _ = cli(capsys, "translate", numbers_run, "3 452", "17", "999 999")
    assert status == 0 and out.splitlines() == expected
    status, out, _ = cli(capsys, "translate", numbers_run, "3 452", "--batch-size", "2", "17", "999 999")
    assert status == 0 and out.splitlines() == expected  # sentences on both sides of an option
    beam = run.model.translate(["3 452", "17"], run.tokenizer, num_beams=3, max_new_tokens=13)  # en: 11 + 2
    status, out, _ = cli(capsys, "translate", numbers_run, "--beam", "3", "3 452", "17")
    assert status == 0 and out.splitlines() == beam
    (tmp_path / "in.txt").write_text("3 452\n17\n999 999\n")
    status, out, _ = cli(capsys, "translate", numbers_run, "--input", tmp_path / "in.txt")
    assert status == 0 and out.splitlines() == expected
    monkeypatch.setattr(sys, "stdin", io.StringIO("3 452\n17\n999 999\n"))
    status, out, _ = cli(capsys, "translate", numbers_run)
    assert status == 0 and out.splitlines() == expected


def test_eval_scores_the_heldout_set(numbers_run, capsys):
    status, out, _ = cli(capsys, "eval", numbers_run)
    assert status == 0 and "BLEU" in out and "exact match" in out
    res = json.loads((numbers_run / "eval.json").read_text())
    assert res["sentences"] == 40 and 0.0 <= res["bleu"] <= 100.0 and 0.0 <= res["exact_match"] <= 1.0
    # Teacher-forced perplexity on the held-out set = the trainer's final validation (same model, same data).
    (valid,) = records(numbers_run, "valid")
    assert abs(res["ppl"] - valid["ppl"]) < 1e-3 * valid["ppl"]
    assert abs(res["accuracy"] - valid["accuracy"]) < 1e-9
    assert records(numbers_run, "eval")[-1]["bleu"] == res["bleu"]
    hyps = (numbers_run / "eval.hyp.txt").read_text().splitlines()
    assert len(hyps) == 40


def test_plot_writes_pngs(numbers_run, tmp_path, capsys):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("SKIP reason: matplotlib is not installed (pip install 'tfm_rs[plot]')")
        pytest.skip("matplotlib is not installed (pip install 'tfm_rs[plot]')")
    status, out, _ = cli(capsys, "plot", numbers_run, "--sentence", "12 345", "--out", tmp_path / "p")
    assert status == 0 and '"12 345" ->' in out
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == sorted(["loss.png", "lr.png", "positional_encoding.png", "attention_encoder_self_L0.png",
                            "attention_decoder_self_L0.png", "attention_cross_L0.png"])
    for name in names:
        data = (tmp_path / "p" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name


def write_parallel(root, n=160, seed=0):
    """A toy German → English word-for-word corpus; the target side gzipped."""
    lex = {"ein": "a", "hund": "dog", "mann": "man", "rot": "red", "blau": "blue", "läuft": "runs",
           "sitzt": "sits", "auf": "on", "gras": "grass", "katze": "cat"}
    rng = np.random.default_rng(seed)
    src = [" ".join(rng.choice(list(lex), rng.integers(2, 6))) for _ in range(n)]
    (root / "train.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    with gzip.open(root / "train.en.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(" ".join(lex[w] for w in s.split()) for s in src) + "\n")
    return src


def test_parallel_text_run_from_a_config_file(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    src = write_parallel(data)
    (data / "test.de").write_text("ein hund\nrot katze läuft\n", encoding="utf-8")
    (data / "test.en").write_text("a dog\nred cat runs\n", encoding="utf-8")
    # Paths in a config file are relative to the file; flags override the file.
    (data / "run.toml").write_text(
        '[data]\ntask = "parallel"\nsrc = "train.de"\ntgt = "train.en.gz"\nvocab_size = 50\n'
        '[model]\npreset = "tiny"\nd_model = 16\n[optim]\nwarmup = 3\nmax_tokens = 300\n'
        '[train]\nmax_steps = 50\nvalid_every = 3\n', encoding="utf-8")
    run = tmp_path / "run"
    status, out, _ = cli(capsys, "train", "--config", data / "run.toml", "--max-steps", "4", "--d-model", "32",
                         "--out", run, "--quiet")
    assert status == 0, out
    cfg = runs.load_config(run)
    assert cfg["model"]["d_model"] == 32 and cfg["train"]["max_steps"] == 4
    assert cfg["data"]["src"] == str(data / "train.de")
    assert (run / "tokenizer.json").is_file()
    assert len(records(run, "valid")) == 2  # step 3 and the final one
    status, out, _ = cli(capsys, "translate", run, "ein hund läuft", "")
    lines = out.split("\n")
    assert status == 0 and len(lines) == 3 and lines[1] == "" and lines[2] == ""
    status, out, _ = cli(capsys, "eval", run, "--src", data / "test.de", "--ref", data / "test.en")
    assert status == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["sentences"] == 2 and res["set"].endswith("test.de")
    status, out, _ = cli(capsys, "eval", run, "--limit", "5")
    assert status == 0 and json.loads((run / "eval.json").read_text())["sentences"] == 5  # validation set
    assert len(src) == 160


def test_language_model_run(tmp_path, capsys):
    text = tmp_path / "story.txt"
    rng = np.random.default_rng(0)
    words = ["the", "dog", "cat", "runs", "sits", "on", "grass", "red", "a"]
    text.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)) + "\n")
    run = tmp_path / "lm"
    status, out, _ = cli(capsys, "train", "--task", "lm", "--text", text, "--preset", "tiny", "--block-size", "16",
                         "--vocab-size", "40", "--max-steps", "6", "--warmup", "3", "--lr", "3e-3", "--out", run,
                         "--quiet")
    assert status == 0 and "GPT" in out
    assert [r["step"] for r in records(run)] == list(range(1, 7))
    status, out, _ = cli(capsys, "eval", run)
    res = json.loads((run / "eval.json").read_text())
    assert status == 0 and res["ppl"] > 1.0 and 0.0 <= res["accuracy"] <= 1.0
    status, _, err = cli(capsys, "translate", run, "the dog")
    assert status == 2 and "is a language model; use 'tfm-rs generate'" in err
    status, out, err = cli(capsys, "generate", run, "--prompt", "the dog", "--max-new-tokens", "5", "--seed", "1")
    assert status == 0, err
    assert out.startswith("the dog")
    status, again, _ = cli(capsys, "generate", run, "--prompt", "the dog", "--max-new-tokens", "5", "--seed", "1")
    assert again == out  # seeded sampling is reproducible
    # Greedy: the command prints what GPT.generate gives, and streaming prints the same text.
    loaded = runs.load_run(run, need_valid=False)
    ids = loaded.tokenizer.encode("the dog")
    gen = loaded.model.generate([ids], max_new_tokens=8, eos_token_id=loaded.tokenizer.eos_id)
    expected = loaded.tokenizer.decode_until_eos(gen.sequences[0][len(ids):])
    status, out, _ = cli(capsys, "generate", run, "--prompt", "the dog", "--max-new-tokens", "8", "--greedy")
    assert status == 0 and out.rstrip("\n") in (f"the dog {expected}", f"the dog{expected}")
    status, streamed, _ = cli(capsys, "generate", run, "--prompt", "the dog", "--max-new-tokens", "8", "--greedy",
                              "--stream")
    assert status == 0 and streamed == out


def test_console_round_trip(tmp_path):
    """The installed entry point, as a user runs it: train, then translate from stdin."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "tfm_rs", "train", *TINY, "--max-steps", "3", "--out", str(run)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "trained 3 steps" in r.stdout and "next: tfm-rs translate" in r.stdout
    r = subprocess.run([sys.executable, "-m", "tfm_rs", "translate", str(run)], input="42\n7\n",
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2


def test_a_new_run_replaces_the_log_of_an_unsaved_one(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": 1, "loss": 9.0}) + "\n")
    assert cli(capsys, "train", *TINY, "--max-steps", "2", "--out", run)[0] == 0
    assert [r["loss"] != 9.0 for r in records(run)] == [True, True]


def test_train_on_the_gpu_without_one_is_one_line_and_status_2(tmp_path):
    """TFM_RS_GPU=0 hides any adapter (and a build without the backend has none): the run stops
    before it creates its directory, with a DeviceError on one line."""
    env = {**os.environ, "TFM_RS_GPU": "0"}
    r = subprocess.run([sys.executable, "-m", "tfm_rs", "train", *TINY, "--max-steps", "1", "--device", "gpu",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120)
    err = [line for line in r.stderr.splitlines() if line.startswith("tfm-rs:")]
    assert r.returncode == 2, r.stderr
    assert len(err) == 1 and "device 'gpu': no GPU is available" in err[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()
