"""Fine-tuning a pretrained BERT checkpoint on labelled text (``tfm-rs finetune``).

Data: JSON Lines or CSV (with a header) with the columns ``text``, optionally ``text_pair`` (a
second segment, as in sentence-pair tasks) and ``label``. For token classification ``text`` is a
list of words (or a string split on whitespace) and ``label`` one tag per word (a list, or a
whitespace-separated string); each word's first piece carries its tag and the other pieces
``-100``, as Hugging Face's ``run_ner`` does. Labels are names (strings or integers); their ids
follow the checkpoint's ``id2label`` when it names the same labels, else their sorted order.

Sequence tasks follow Hugging Face's ``problem_type``: ``single_label_classification`` (one name
per example, cross-entropy; the default), ``regression`` (one number per example, mean squared
error, ``num_labels`` 1) or ``multi_label_classification`` (a list of names per example — or a
whitespace-separated string; possibly empty — as a 0/1 vector, binary cross-entropy on the
logits; a label is predicted where its logit is positive).

Training: AdamW (weight decay on matrices only), the learning rate warmed up linearly over the
first 10% of the budget and then decayed linearly to 0 at its end — the budget being ``epochs``
passes over the shuffled data, or ``minutes`` when that runs out first. The output directory is a
Hugging Face checkpoint of the classifier (``transformers`` loads it) plus ``results.json``.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

import tfm_rs
from tfm_rs._core import InvalidArgumentError
from tfm_rs.autograd import no_grad
from tfm_rs.models.bert import IGNORE_INDEX
from tfm_rs.models.bert_heads import BertForSequenceClassification, BertForTokenClassification
from tfm_rs.optim import AdamW
from tfm_rs.optim.lr_scheduler import LambdaLR
from tfm_rs.pretrained.bert_heads import PROBLEM_TYPES
from tfm_rs.pretrained.hf import read_config

__all__ = ["TASKS", "Example", "accuracy", "batches", "budget_progress", "encode", "evaluate", "finetune",
           "read_examples", "warmup_linear"]

TASKS = {"sequence-classification": BertForSequenceClassification,
         "token-classification": BertForTokenClassification}
WARMUP = 0.1
SINGLE, REGRESSION, MULTI = PROBLEM_TYPES[1], PROBLEM_TYPES[0], PROBLEM_TYPES[2]


@dataclass
class Example:
    text: Any                    # a string, or (token classification) a list of words
    text_pair: Optional[str]
    label: Any                   # a label name, a number (regression), or a list of tags / of names (multi-label)


def read_examples(path: Any, task: str, problem_type: str = SINGLE) -> List[Example]:
    """The examples of a ``.jsonl`` / ``.json`` (one object a line) or ``.csv`` file, checked: a
    missing column, an empty text, a word/tag count mismatch or a label that is not of
    ``problem_type``'s kind names the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such data file")
    if p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8") as f:
            rows = [(i + 2, row) for i, row in enumerate(csv.DictReader(f))]  # line 1 is the header
    elif p.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except ValueError as e:
                    raise InvalidArgumentError(f"{p}:{i}: not a JSON object ({e})") from None
    else:
        raise InvalidArgumentError(f"{p}: the data must be .jsonl or .csv, got {p.suffix or 'no suffix'!r}")
    examples = [_example(row, task, problem_type, f"{p}:{line}") for line, row in rows]
    if not examples:
        raise InvalidArgumentError(f"{p}: no examples")
    return examples


def _example(row: Any, task: str, problem_type: str, where: str) -> Example:
    if not isinstance(row, dict):
        raise InvalidArgumentError(f"{where}: each example must be an object with text and label")
    missing = [k for k in ("text", "label") if row.get(k) in (None, "")]
    if missing:
        raise InvalidArgumentError(f"{where}: no {' or '.join(missing)}")
    text, label, pair = row["text"], row["label"], row.get("text_pair") or None
    if task == "token-classification":
        words = text.split() if isinstance(text, str) else [str(w) for w in text]
        tags = label.split() if isinstance(label, str) else [str(t) for t in label]
        if not words or len(words) != len(tags):
            raise InvalidArgumentError(f"{where}: {len(words)} words and {len(tags)} tags; give one tag per word")
        return Example(words, None, tags)
    if not isinstance(text, str):
        raise InvalidArgumentError(f"{where}: sequence classification needs a text string")
    pair = None if pair is None else str(pair)
    if problem_type == MULTI:
        if not isinstance(label, (str, list)):
            raise InvalidArgumentError(f"{where}: multi-label classification needs a list of label names (or a "
                                       f"whitespace-separated string), got {label!r}")
        return Example(text, pair, sorted({str(n) for n in (label.split() if isinstance(label, str) else label)}))
    if isinstance(label, (list, dict, bool)):
        raise InvalidArgumentError(f"{where}: {problem_type} needs one label, got {label!r}")
    if problem_type == REGRESSION:
        try:
            value = float(label)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise InvalidArgumentError(f"{where}: regression needs a finite number as label, got {label!r}")
        return Example(text, pair, value)
    return Example(text, pair, str(label))


def _label_names(examples: Sequence[Example], task: str, problem_type: str, checkpoint: Path) -> List[str]:
    if problem_type == REGRESSION:
        return []
    names = {t for e in examples for t in e.label} if task == "token-classification" or problem_type == MULTI \
        else {e.label for e in examples}
    saved = read_config(checkpoint).get("id2label") or {}
    if set(saved.values()) == names:  # keep the ids of a classifier trained on these labels
        return [saved[k] for k in sorted(saved, key=int)]
    numeric = all(n.lstrip("-").isdigit() for n in names)
    return sorted(names, key=int if numeric else None)


def encode(tokenizer: Any, examples: Sequence[Example], task: str, label_ids: Dict[str, int], where: str,
           problem_type: str = SINGLE) -> List[Tuple[List[int], List[int], Any]]:
    """``(ids, type_ids, label)`` per example: the label's id, one id per piece (``-100`` on
    special tokens and on the pieces after a word's first), the number (regression), or a 0/1
    float32 vector over ``label_ids`` (multi-label)."""
    listed = task == "token-classification" or problem_type == MULTI
    unknown = sorted({t for e in examples for t in (e.label if listed else [e.label])} - set(label_ids)) \
        if problem_type != REGRESSION else []
    if unknown:
        raise InvalidArgumentError(f"{where}: labels {unknown[:5]} do not occur in the training data")
    if task == "token-classification":
        out = []
        for e, enc in zip(examples, tokenizer.encode_batch([e.text for e in examples], is_pretokenized=True)):
            previous, tags = None, []
            for w in enc.word_ids:
                tags.append(IGNORE_INDEX if w is None or w == previous else label_ids[e.label[w]])
                previous = w
            out.append((enc.ids, enc.type_ids, tags))
        return out
    inputs = [e.text if e.text_pair is None else (e.text, e.text_pair) for e in examples]

    def target(label: Any) -> Any:
        if problem_type == REGRESSION:
            return label
        if problem_type == MULTI:
            hot = np.zeros(len(label_ids), np.float32)
            hot[[label_ids[n] for n in label]] = 1.0
            return hot
        return label_ids[label]
    return [(enc.ids, enc.type_ids, target(e.label)) for e, enc in zip(examples, tokenizer.encode_batch(inputs))]


def batches(data: Sequence[Tuple[List[int], List[int], Any]], batch_size: int, pad_id: int,
            order: Optional[np.ndarray] = None) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(ids, type_ids, labels)`` batches padded to their longest row (token labels with
    ``-100``); sequence labels ``(B,)`` int64 ids or float32 numbers, or ``(B, C)`` float32."""
    order = np.arange(len(data)) if order is None else order
    for start in range(0, len(order), batch_size):
        rows = [data[i] for i in order[start:start + batch_size]]
        width = max(len(r[0]) for r in rows)
        ids = np.full((len(rows), width), pad_id, np.int64)
        types = np.zeros_like(ids)
        token_level = isinstance(rows[0][2], list)
        if token_level:
            labels = np.full((len(rows), width), IGNORE_INDEX, np.int64)
        else:
            labels = np.array([r[2] for r in rows])
            labels = labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64)
        for r, (row_ids, row_types, y) in enumerate(rows):
            ids[r, :len(row_ids)], types[r, :len(row_ids)] = row_ids, row_types
            if token_level:
                labels[r, :len(y)] = y
        yield ids, types, labels


def evaluate(model: Any, data: Sequence[Tuple[List[int], List[int], Any]], problem_type: str = SINGLE,
             batch_size: int = 64) -> Dict[str, float]:
    """The figures of ``problem_type``, the first being the headline: ``accuracy`` (of examples,
    or of labelled tokens); ``mse`` and ``pearson`` (regression); ``f1_micro`` and
    ``exact_match`` (multi-label: the share of examples whose whole label set is right)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    with no_grad():
        for ids, types, y in batches(data, batch_size, model.pad_id):
            out = model(ids, types).numpy()
            logits.append(out.reshape(-1, out.shape[-1]))
            labels.append(y.reshape(len(logits[-1]), -1) if y.dtype.kind == "f" else y.reshape(-1))
    model.train(was_training)
    x, y = np.concatenate(logits), np.concatenate(labels)
    if problem_type == REGRESSION:
        pred, y = x[:, 0].astype(np.float64), y[:, 0].astype(np.float64)
        pearson = float(np.corrcoef(pred, y)[0, 1]) if len(y) > 1 and pred.std() > 0 and y.std() > 0 else 0.0
        return {"mse": float(np.mean((pred - y) ** 2)), "pearson": pearson}
    if problem_type == MULTI:
        pred, truth = x > 0, y > 0.5
        hits = int((pred & truth).sum())
        return {"f1_micro": 2 * hits / max(int(pred.sum() + truth.sum()), 1),
                "exact_match": float(np.mean(np.all(pred == truth, axis=1)))}
    counted = y != IGNORE_INDEX
    return {"accuracy": float((x.argmax(-1) == y)[counted].sum() / max(int(counted.sum()), 1))}


def accuracy(model: Any, data: Sequence[Tuple[List[int], List[int], Any]], batch_size: int = 64) -> float:
    """The share of examples (of labelled tokens, for token classification) predicted right."""
    return evaluate(model, data, SINGLE, batch_size)["accuracy"]


def budget_progress(total_steps: int, minutes: Optional[float]) -> Callable[[int], float]:
    """``progress(step)``: the share of the budget spent — ``total_steps``, or ``minutes`` from
    now when those run out first — from 0 to 1."""
    start, budget = time.perf_counter(), None if minutes is None else 60.0 * minutes

    def progress(step: int) -> float:
        p = step / total_steps
        return max(p, (time.perf_counter() - start) / budget) if budget else p
    return progress


def warmup_linear(opt: Any, progress: Callable[[int], float], warmup: float = WARMUP) -> LambdaLR:
    """The learning rate warmed up linearly over the first ``warmup`` of the budget, then decayed
    linearly to 0 at its end (``transformers``' default schedule, on a budget of steps or time)."""
    return LambdaLR(opt, lambda step: min(progress(step) / warmup, max(0.0, (1 - progress(step)) / (1 - warmup))))


def _problem_type(task: str, problem_type: Optional[str], checkpoint: Any) -> str:
    """``problem_type`` checked; by default the checkpoint's (a classifier fine-tuned before),
    else single-label classification."""
    if task == "token-classification":
        if problem_type not in (None, SINGLE):
            raise InvalidArgumentError(f"finetune: token classification is single-label; problem_type="
                                       f"{problem_type!r} applies to sequence classification")
        return SINGLE
    if problem_type is None:
        saved = read_config(checkpoint).get("problem_type")
        problem_type = saved if saved in PROBLEM_TYPES else SINGLE
    if problem_type not in PROBLEM_TYPES:
        raise InvalidArgumentError(f"finetune: problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
    return problem_type


def finetune(checkpoint: Any, train_path: Any, task: str, out: Any, valid_path: Any = None,
             epochs: Optional[int] = None, minutes: Optional[float] = None, lr: float = 5e-5,
             batch_size: int = 32, weight_decay: float = 0.01, seed: int = 0, problem_type: Optional[str] = None,
             log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Fine-tunes the checkpoint directory ``checkpoint`` (a bare BERT encoder or a classifier of
    ``task``) and writes ``out``; returns the figures written to ``out/results.json``.
    ``problem_type`` (sequence classification): see the module docstring."""
    if task not in TASKS:
        raise InvalidArgumentError(f"finetune: task must be one of {sorted(TASKS)}, got {task!r}")
    problem_type = _problem_type(task, problem_type, checkpoint)
    epochs = (3 if minutes is None else 10 ** 6) if epochs is None else int(epochs)
    tfm_rs.manual_seed(seed)
    train_examples = read_examples(train_path, task, problem_type)
    valid_examples = read_examples(valid_path, task, problem_type) if valid_path is not None else None
    labels = _label_names(train_examples, task, problem_type, Path(checkpoint))
    head = {} if task == "token-classification" else {"problem_type": problem_type}
    model = TASKS[task].from_pretrained(checkpoint, num_labels=max(len(labels), 1), id2label=labels or None, **head)
    if model.tokenizer is None:
        raise InvalidArgumentError(f"{checkpoint}: no tokenizer.json; fine-tuning reads text")
    label_ids = {name: i for i, name in enumerate(labels)}
    train = encode(model.tokenizer, train_examples, task, label_ids, str(train_path), problem_type)
    valid = encode(model.tokenizer, valid_examples, task, label_ids, str(valid_path), problem_type) \
        if valid_examples else None

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = -(-len(train) // batch_size)
    start = time.perf_counter()
    progress = budget_progress(epochs * steps_per_epoch, minutes)
    sched = warmup_linear(opt, progress)
    rng = np.random.default_rng(seed)
    model.train()
    history: List[Dict[str, Any]] = []
    step, stop = 0, False
    for epoch in range(1, epochs + 1):
        losses = []
        for ids, types, y in batches(train, batch_size, model.pad_id, rng.permutation(len(train))):
            opt.zero_grad()
            loss = model.loss(ids, y, types)
            loss.backward()
            opt.step()
            step += 1
            sched.step()
            losses.append(loss.item())
            if progress(step) >= 1.0:
                stop = True
                break
        row = {"epoch": epoch, "steps": step, "seconds": round(time.perf_counter() - start, 1),
               "train_loss": float(np.mean(losses))}
        if valid:
            row.update({f"valid_{k}": v for k, v in evaluate(model, valid, problem_type).items()})
        history.append(row)
        log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) and k != "seconds" else f"{k} {v}"
                      for k, v in row.items()))
        if stop:
            break
    trained = evaluate(model, train, problem_type)
    results = {"task": task, "problem_type": problem_type, "checkpoint": str(checkpoint), "labels": labels,
               "train_examples": len(train), "valid_examples": len(valid) if valid else 0,
               "epochs": history[-1]["epoch"], "steps": step, "seconds": round(time.perf_counter() - start, 1),
               "lr": lr, "batch_size": batch_size, **{f"train_{k}": v for k, v in trained.items()},
               **{f"valid_{k}": history[-1].get(f"valid_{k}") for k in trained}, "history": history}
    model.eval()
    model.save_pretrained(out)
    (Path(out) / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
