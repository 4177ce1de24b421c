"""``tfm-rs finetune`` on a tiny generated dataset: a small BERT saved here in Hugging Face's
layout learns to tell sentences with an animal from those without, and to tag the animals; the
output directory is a classifier checkpoint (``from_pretrained`` reads it back) with
results.json; bad data files are named."""

import json
import subprocess
import sys

import numpy as np
import pytest

import tfm_rs
from tfm_rs.models import BertEncoder, BertForSequenceClassification, BertForTokenClassification
from tfm_rs.train.finetune import read_examples

WORDS = ["the", "a", "sat", "on", "mat", "ran", "far", "away", "under", "sun", "big", "red", "old", "house"]
ANIMALS = ["cat", "dog", "horse", "bird"]


def _checkpoint(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *ANIMALS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tfm_rs.manual_seed(0)
    bert = BertEncoder(len(vocab), 32, 2, 2, 64, max_len=32, dropout=0.0, pooler=True)
    bert.tokenizer = tok
    bert.save_pretrained(path)


def _sentences(rng, n):
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, rng.integers(3, 9)))
        if rng.random() < 0.5:
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(ANIMALS)))
        out.append(words)
    return out


def _write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        lines = ["text,label"] + [f"{' '.join(r['text']) if isinstance(r['text'], list) else r['text']},"
                                  f"{' '.join(r['label']) if isinstance(r['label'], list) else r['label']}"
                                  for r in rows]
        path.write_text("\n".join(lines) + "\n")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tfm_rs", "finetune", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("task, fmt", [("sequence-classification", "jsonl"), ("token-classification", "csv")])
def test_finetune_cli_learns_and_writes_a_checkpoint(tmp_path, task, fmt):
    _checkpoint(tmp_path / "bert")
    rng = np.random.default_rng(0)
    rows = []
    for words in _sentences(rng, 300):
        if task == "sequence-classification":
            rows.append({"text": " ".join(words), "label": "animal" if set(words) & set(ANIMALS) else "none"})
        else:
            rows.append({"text": words, "label": ["ANIMAL" if w in ANIMALS else "O" for w in words]})
    _write(tmp_path / f"train.{fmt}", rows[:240], fmt)
    _write(tmp_path / f"valid.{fmt}", rows[240:], fmt)
    r = _run("--from-pretrained", tmp_path / "bert", "--data", tmp_path / f"train.{fmt}", "--valid",
             tmp_path / f"valid.{fmt}", "--task", task, "--epochs", 6, "--lr", 3e-3, "--batch-size", 16,
             "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "newly initialized" in r.stderr  # a bare encoder: the classifier is new, and the user is told
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["epochs"] == 6 and results["train_examples"] == 240 and results["valid_examples"] == 60
    assert results["valid_accuracy"] > 0.9, results
    assert f"held-out accuracy {results['valid_accuracy']:.1%}" in r.stdout
    cls = BertForSequenceClassification if task == "sequence-classification" else BertForTokenClassification
    model = cls.from_pretrained(tmp_path / "out")
    assert model.label_names() == results["labels"] == (["animal", "none"] if task == "sequence-classification"
                                                        else ["ANIMAL", "O"])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [cls.arch] and (tmp_path / "out" / "tokenizer.json").is_file()


@pytest.mark.parametrize("problem_type, fmt", [("regression", "csv"), ("multi_label_classification", "jsonl")])
def test_finetune_regression_and_multi_label(tmp_path, problem_type, fmt):
    """Regression: the number of animals in a sentence (MSE). Multi-label: which animals occur
    (BCE; a sentence without any has the empty set)."""
    _checkpoint(tmp_path / "bert")
    rng = np.random.default_rng(3)
    rows = []
    for words in _sentences(rng, 300):
        if rng.random() < 0.4:
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(ANIMALS)))
        found = sorted(set(words) & set(ANIMALS))
        label = float(sum(w in ANIMALS for w in words)) if problem_type == "regression" else found
        rows.append({"text": " ".join(words), "label": label})
    _write(tmp_path / f"train.{fmt}", rows[:240], fmt)
    _write(tmp_path / f"valid.{fmt}", rows[240:], fmt)
    r = _run("--from-pretrained", tmp_path / "bert", "--data", tmp_path / f"train.{fmt}", "--valid",
             tmp_path / f"valid.{fmt}", "--task", "sequence-classification", "--problem-type", problem_type,
             "--epochs", 8, "--lr", 3e-3, "--batch-size", 16, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    model = BertForSequenceClassification.from_pretrained(tmp_path / "out")
    assert results["problem_type"] == config["problem_type"] == model.config["problem_type"] == problem_type
    if problem_type == "regression":
        variance = float(np.var([row["label"] for row in rows[240:]]))
        assert results["labels"] == [] and model.num_labels == 1
        assert results["valid_mse"] < 0.3 * variance and results["valid_pearson"] > 0.85, (results, variance)
        assert f"held-out mse {results['valid_mse']:.4f}" in r.stdout
    else:
        assert results["labels"] == model.label_names() == sorted(ANIMALS)
        assert results["valid_f1_micro"] > 0.9 and results["valid_exact_match"] > 0.8, results
        assert f"held-out f1_micro {results['valid_f1_micro']:.1%}" in r.stdout


def test_finetune_sentence_pairs_and_a_time_budget(tmp_path):
    """text_pair is the second segment (token types 1); --minutes bounds the run."""
    _checkpoint(tmp_path / "bert")
    rng = np.random.default_rng(1)
    rows = []
    for a, b in zip(_sentences(rng, 40), _sentences(rng, 40)):
        rows.append({"text": " ".join(a), "text_pair": " ".join(b), "label": int(len(a) > len(b))})
    _write(tmp_path / "pairs.jsonl", rows, "jsonl")
    r = _run("--from-pretrained", tmp_path / "bert", "--data", tmp_path / "pairs.jsonl", "--task",
             "sequence-classification", "--minutes", 0.02, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["labels"] == ["0", "1"] and results["seconds"] < 30 and results["valid_accuracy"] is None


@pytest.mark.parametrize("content, task, match", [
    ('{"text": "a cat"}\n', "sequence-classification", "data.jsonl:1: no label"),
    ('{"text": "a cat", "label": "x"}\nnot json\n', "sequence-classification", "data.jsonl:2: not a JSON object"),
    ('{"text": ["a", "cat"], "label": ["O"]}\n', "token-classification", "2 words and 1 tags"),
    ("", "sequence-classification", "no examples"),
    ('{"text": "a cat", "label": "many"}\n', "regression", "data.jsonl:1: regression needs a finite number as "
                                                            "label, got 'many'"),
    ('{"text": "a cat", "label": [1.5]}\n', "regression", "regression needs one label"),
    ('{"text": "a cat", "label": 3}\n', "multi_label_classification", "needs a list of label names"),
])
def test_bad_data_files_are_named(tmp_path, content, task, match):
    (tmp_path / "data.jsonl").write_text(content)
    kind = "sequence-classification" if task in ("regression", "multi_label_classification") else task
    with pytest.raises(tfm_rs.InvalidArgumentError, match=match):
        read_examples(tmp_path / "data.jsonl", kind, *([task] if kind != task else []))


def test_finetune_cli_usage_errors(tmp_path):
    _checkpoint(tmp_path / "bert")
    (tmp_path / "train.jsonl").write_text('{"text": "a cat", "label": "x"}\n')
    (tmp_path / "valid.jsonl").write_text('{"text": "a dog", "label": "y"}\n')
    r = _run("--from-pretrained", tmp_path / "bert", "--data", tmp_path / "train.jsonl", "--valid",
             tmp_path / "valid.jsonl", "--task", "sequence-classification", "--out", tmp_path / "out")
    assert r.returncode == 2 and "labels ['y'] do not occur in the training data" in r.stderr
    r = _run("--from-pretrained", tmp_path / "nowhere", "--data", tmp_path / "train.jsonl", "--task",
             "sequence-classification", "--out", tmp_path / "out")
    assert r.returncode == 2 and "not a directory" in r.stderr
    r = _run("--from-pretrained", tmp_path / "bert", "--data", tmp_path / "train.jsonl", "--task",
             "token-classification", "--problem-type", "regression", "--out", tmp_path / "out")
    assert r.returncode == 2 and "token classification is single-label" in r.stderr


def test_caption_pairs_are_balanced_and_negatives_are_other_pairs():
    from tfm_rs.examples.caption_match import make_pairs

    de, en = [f"de{i}" for i in range(50)], [f"en{i}" for i in range(50)]
    rows = make_pairs(de, en, np.random.default_rng(0))
    assert len(rows) == 100 and sum(r["label"] == "yes" for r in rows) == 50
    for r in rows:
        same = r["text"][2:] == r["text_pair"][2:]
        assert same == (r["label"] == "yes")
    assert sorted(r["text"] for r in rows if r["label"] == "no") == sorted(de)  # each German caption once each way


def test_caption_match_example_runs_end_to_end(tmp_path):
    """A few seconds of the Multi30k example (tiny model, 300 pairs): the files it promises."""
    from tfm_rs.data.corpus import find_multi30k

    try:
        find_multi30k()
    except FileNotFoundError as e:
        pytest.skip(f"Multi30k is absent, the example's data: {e}")
    from tfm_rs.examples.caption_match import run

    res = run(tmp_path, minutes=0.05, pretrain_minutes=0.02, train_pairs=300, d_model=32, num_layers=1,
              vocab_size=600, log=lambda s: None)
    assert res["test_examples"] == 2000 and res["train_examples"] == 600 and 0.0 <= res["test_accuracy"] <= 1.0
    for f in ("data/train.jsonl", "data/test.jsonl", "bert-tlm/config.json", "classifier/model.safetensors",
              "classifier/results.json", "results.json"):
        assert (tmp_path / f).is_file(), f
    assert json.loads((tmp_path / "results.json").read_text())["init"] == "tlm"
